"""The names of the files the programs write and the report reads, each defined once here and imported
by both sides (run_all.sh, shell, spells the ones it passes on the command line)."""

# P1: p1_ddpm_sample.py (models/p1_sampling.py), p1_ddpm_eval.py, the trainers
SAMPLING_JSON = "sampling.json"  # the settings p1_ddpm_sample.py sampled with
EVAL_JSON = "eval.json"  # p1_ddpm_eval.py's accuracies
ACCURACY_JSON = "accuracy.json"  # benchmarks/bench_p1_quality.py --out RUN_DIR/accuracy.json (run_all.sh)
TRAIN_LOG_JSONL = "train_log.jsonl"  # one {"step", "loss", "lr"} line per logged step, in a training run folder


def grid_png(dataset: str) -> str:
    """P1's grid of the first samples of each digit."""
    return f"grid_{dataset}.png"


def reverse_process_png(dataset: str) -> str:
    """P1's reverse process of a '0'."""
    return f"reverse_process_{dataset}.png"


# P2: p2_ddim.py
MSE_JSON = "mse.json"
ETA_SWEEP_PNG = "eta_sweep.png"
ETA_SWEEP_JSON = "eta_sweep.json"  # mean absolute pixel differences between the eta sweep's rows
INTERPOLATION_PNG = "interpolation.png"
INTERPOLATION_JSON = "interpolation.json"  # noise RMS, contrast and saturation per alpha, slerp and linear
INTERPOLATION_STATS_PNG = "interpolation_stats.png"  # those numbers plotted against alpha
CONVENTIONS_PNG = "conventions.png"
CONVENTIONS_JSON = "conventions.json"

# P3: p3_clip_zeroshot.py
RESULTS_JSON = "results.json"
PREDICTIONS_CSV = "predictions.csv"
CASES_PNG = "cases.png"

# written where run_all.sh says (OUTPUTS_DIR/...), read by the report
RUN_INFO_JSON = "run_info.json"  # the flags run_all.sh used
TI_SCORES_JSON = "p3_ti_scores.json"  # p3_textual_inversion.py evaluate --json
MULTI_CONCEPT_PNG = "p3_multi_concept.png"  # p3_textual_inversion.py figure
CD_COMPARISON_PNG = "p3_cd_comparison.png"  # p3_custom_diffusion.py figure
CD_COMPARISON_JSON = "p3_cd_comparison.json"  # its CLIP measures, written beside it: OUT_PNG with .json for .png

# report.py: the report, in OUTPUTS_DIR
REPORT_MD = "report.md"
REPORT_PDF = "report.pdf"
