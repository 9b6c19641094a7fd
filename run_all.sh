#!/usr/bin/env bash
# Set up .venv, run every problem and write the report OUTPUTS/report.md (default outputs/).
#   bash run_all.sh           shipped weights: nothing is retrained
#   bash run_all.sh --train   retrain the P1 model (the GPU recipe on a GPU, the CPU recipe otherwise) and
#                             the SVHN judge from hw2_data/digits in a run folder, then sample, score and
#                             report with that run's training curves
#   --train-sd                also train the Stable Diffusion concepts (textual inversion, Custom
#                             Diffusion) on a machine without a GPU, where they take days; with a GPU
#                             they are trained whenever the SD model is present
# It first says what it will run and skip, on which device, and about how long each step takes here.
# P1 is the main job; the others run when their inputs are present (see hw2_data/README.md) and
# otherwise say what is missing and go on. Environment variables (docs/report.md): HW2_SKIP_SETUP=1,
# PYTHON, HW2_DATA, HW2_OUT, HW2_RUN, HW2_TRAIN_STEPS, HW2_KEEP_EVERY, HW2_P1_TRAIN_FLAGS,
# HW2_JUDGE_FLAGS, HW2_PLAN_FORWARDS, HW2_PER_DIGIT, HW2_CURVE_PER_DIGIT, HW2_MNISTM_CLASSIFIER, HW2_TI_STEPS, HW2_CD_RUN.
set -euo pipefail
cd "$(dirname "$0")"
TRAIN=0 TRAIN_SD=0
for arg in "$@"; do
    case "$arg" in
        --train) TRAIN=1 ;;
        --train-sd) TRAIN_SD=1 ;;
        *) echo "usage: bash run_all.sh [--train] [--train-sd]" >&2; exit 2 ;;
    esac
done
[ "${HW2_SKIP_SETUP:-0}" = 1 ] || bash setup.sh
PY=${PYTHON:-.venv/bin/python}
DATA=${HW2_DATA:-hw2_data}
# what runs, what is skipped and why, the device, and the time each step takes here
PLAN=(--data "$DATA" --unit-forwards "${HW2_PLAN_FORWARDS:-250}")
[ "$TRAIN" = 1 ] && PLAN+=(--train)
[ "$TRAIN_SD" = 1 ] && PLAN+=(--train-sd)
$PY run_plan.py "${PLAN[@]}"
OUT=${HW2_OUT:-outputs}
RUN=${HW2_RUN:-runs/train}
MNISTM_JUDGE=${HW2_MNISTM_CLASSIFIER:-Classifier.pth}
PER_DIGIT=${HW2_PER_DIGIT:-50}

# sampling settings: passed to the programs below and recorded in OUT/run_info.json for the report; P1
# samples with the checkpoint's own defaults, as hw2_1.sh does, and records them in OUT/p1/sampling.json
P1_CKPT=checkpoints/p1_ddpm.pt SVHN_JUDGE=checkpoints/svhn_classifier.pt P1_SEED=0
P2_STEPS=50 P2_SEED=0
TI_EMBEDS=checkpoints/p3_textual_inversion TI_RUN=runs/p3_textual_inversion
TI_SAMPLER=dpm++ TI_STEPS=30 TI_GUIDANCE=7.5 TI_SEED=0
if [ "$TRAIN" = 1 ]; then
    P1_CKPT=$RUN/p1/model.pt SVHN_JUDGE=$RUN/svhn_classifier.pt
    TI_EMBEDS=$RUN/p3_textual_inversion/embeds TI_RUN=$RUN/p3_textual_inversion
    # P1 model (continues RUN/p1 if it holds a run), its kept checkpoints scored for the accuracy curve,
    # and the SVHN judge
    # shellcheck disable=SC2086  # the *_FLAGS variables are lists of extra flags
    # --recipe auto: the GPU recipe where CUDA is available, the CPU recipe otherwise (HW2_TRAIN_STEPS: fewer steps)
    $PY p1_ddpm_train.py --data-root "$DATA/digits" --out-dir "$RUN/p1" --recipe auto \
        ${HW2_TRAIN_STEPS:+--steps "$HW2_TRAIN_STEPS"} --keep-every "${HW2_KEEP_EVERY:-2500}" --resume ${HW2_P1_TRAIN_FLAGS:-}
    # shellcheck disable=SC2086
    $PY p1_svhn_classifier_train.py --data-root "$DATA/digits" --out "$SVHN_JUDGE" ${HW2_JUDGE_FLAGS:-}
    if [ -f "$MNISTM_JUDGE" ]; then  # the accuracy curve needs the course's MNIST-M classifier
        $PY benchmarks/bench_p1_quality.py --ckpt "$RUN"/p1/model_*.pt --per-digit "${HW2_CURVE_PER_DIGIT:-20}" \
            --mnistm-classifier "$MNISTM_JUDGE" --svhn-classifier "$SVHN_JUDGE" --out "$RUN/p1/accuracy.json"
    else
        echo "run_all.sh: no accuracy curve: $MNISTM_JUDGE (the course's MNIST-M classifier) is missing"
    fi
fi
mkdir -p "$OUT"
cat > "$OUT/run_info.json" <<EOF
{
  "trained": $([ "$TRAIN" = 1 ] && echo true || echo false),
  "p1": {"ckpt": "$P1_CKPT", "seed": $P1_SEED, "per_digit": $PER_DIGIT, "mnistm_classifier": "$MNISTM_JUDGE",
         "svhn_classifier": "$SVHN_JUDGE"},
  "p2": {"unet": "$DATA/face/UNet.pt", "steps": $P2_STEPS, "seed": $P2_SEED, "dtype": "fp32"},
  "p3_clip": {"val_dir": "$DATA/clip_zeroshot/val"},
  "p3_ti": {"model": "$DATA/sd-v1-4.ckpt", "embeds_dir": "$TI_EMBEDS", "input_json": "$DATA/textual_inversion/input.json",
            "sampler": "$TI_SAMPLER", "steps": $TI_STEPS, "guidance": $TI_GUIDANCE, "seed": $TI_SEED}
}
EOF

# P1: the 1,000 graded images, both grids and the reverse-process figure, then their scores
$PY p1_ddpm_sample.py "$OUT/p1" --ckpt "$P1_CKPT" --seed "$P1_SEED" --per-digit "$PER_DIGIT" --grid --reverse-process
$PY p1_ddpm_eval.py "$OUT/p1" --mnistm-classifier "$MNISTM_JUDGE" --svhn-classifier "$SVHN_JUDGE" --skip-missing

# P2: DDIM faces from the course's noise files, MSE against ground truth, eta sweep, slerp/lerp
$PY p2_ddim.py "$DATA/face/noise" "$OUT/p2" "$DATA/face/UNet.pt" --gt-dir "$DATA/face/GT" \
    --steps "$P2_STEPS" --seed "$P2_SEED" --dtype fp32 --eta-sweep --interpolation --skip-missing

# P3: CLIP zero-shot classification (needs the val images and the ViT-B-32 OpenAI weights; without the
# images it is skipped here, since importing open_clip only to say so takes about 9 s)
if [ ! -d "$DATA/clip_zeroshot/val" ]; then
    echo "run_all.sh: P3 CLIP zero-shot skipped: $DATA/clip_zeroshot/val is missing (see hw2_data/README.md)"
else
    $PY p3_clip_zeroshot.py "$DATA/clip_zeroshot/val" "$DATA/clip_zeroshot/id2label.json" "$OUT/p3_clip" \
        --model ViT-B-32 --pretrained openai --skip-missing
fi

# P3 on Stable Diffusion v1: only when the model is there (each program would say so, but loading
# diffusers eleven times to say it takes over a minute)
if [ ! -e "$DATA/sd-v1-4.ckpt" ]; then
    echo "run_all.sh: P3 textual inversion and Custom Diffusion skipped: $DATA/sd-v1-4.ckpt is missing" \
         "(Stable Diffusion v1; see hw2_data/README.md)"
else
    # P3: textual inversion on SD v1 (needs hw2_data/sd-v1-4.ckpt): learn <new1>, <new2>, <new3> (resumable:
    # a token trained to its steps is not trained again), the graded images, their CLIP scores and the
    # two-concept figure
    TI_TRAIN=(--embeds-dir "$TI_EMBEDS" --run-dir "$TI_RUN" --steps "${HW2_TI_STEPS:-3000}" --resume --skip-missing)
    GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
    SD_TRAIN=$([ "$GPU" = 1 ] || [ "$TRAIN_SD" = 1 ] && echo 1 || echo 0)  # days on a CPU: only when asked
    TI_SAMPLE=(--embeds-dir "$TI_EMBEDS" --sampler "$TI_SAMPLER" --steps "$TI_STEPS" --guidance "$TI_GUIDANCE"
               --seed "$TI_SEED" --skip-missing)
    if [ "$SD_TRAIN" = 1 ]; then
        $PY p3_textual_inversion.py train "$DATA/textual_inversion/0" "$DATA/sd-v1-4.ckpt" --token '<new1>' \
            --initializer dog "${TI_TRAIN[@]}"
        $PY p3_textual_inversion.py train "$DATA/textual_inversion/1" "$DATA/sd-v1-4.ckpt" --token '<new2>' \
            --initializer illustration --style "${TI_TRAIN[@]}"
        $PY p3_textual_inversion.py train "$DATA/textual_inversion/2" "$DATA/sd-v1-4.ckpt" --token '<new3>' \
            --initializer cat "${TI_TRAIN[@]}"
    fi
    $PY p3_textual_inversion.py generate "$DATA/textual_inversion/input.json" "$OUT/p3_ti" "$DATA/sd-v1-4.ckpt" \
        "${TI_SAMPLE[@]}"
    $PY p3_textual_inversion.py evaluate "$DATA/textual_inversion/input.json" "$OUT/p3_ti" \
        --concept-root "$DATA/textual_inversion" --clip "$DATA/clip-vit-base-patch32" \
        --json "$OUT/p3_ti_scores.json" --skip-missing
    $PY p3_textual_inversion.py figure "$DATA/sd-v1-4.ckpt" "$OUT/p3_multi_concept.png" \
        --tokens '<new1>' '<new3>' "${TI_SAMPLE[@]}"


    # P3: Custom Diffusion on SD v1 (needs hw2_data/sd-v1-4.ckpt): <new1> and <new3> jointly (resumable), the
    # same two apart and merged, the two-concept comparison with textual inversion
    CD_RUN=${HW2_CD_RUN:-runs/p3_custom_diffusion}
    if [ "$SD_TRAIN" = 1 ]; then
        $PY p3_custom_diffusion.py train "$DATA/textual_inversion/0" "$DATA/textual_inversion/2" \
            "$DATA/sd-v1-4.ckpt" --tokens '<new1>' '<new3>' --class-words dog cat --out-dir "$CD_RUN/joint" \
            --resume --skip-missing
        $PY p3_custom_diffusion.py train "$DATA/textual_inversion/0" "$DATA/sd-v1-4.ckpt" --tokens '<new1>' \
            --class-words dog --out-dir "$CD_RUN/new1" --resume --skip-missing
        $PY p3_custom_diffusion.py train "$DATA/textual_inversion/2" "$DATA/sd-v1-4.ckpt" --tokens '<new3>' \
            --class-words cat --out-dir "$CD_RUN/new3" --resume --skip-missing
        $PY p3_custom_diffusion.py merge "$CD_RUN/new1" "$CD_RUN/new3" "$DATA/sd-v1-4.ckpt" \
            --out-dir "$CD_RUN/merged" --skip-missing
    fi
    # the two-concept comparison and its CLIP measures (image similarity to each concept's photos, text similarity)
    $PY p3_custom_diffusion.py figure "$DATA/sd-v1-4.ckpt" "$OUT/p3_cd_comparison.png" --tokens '<new1>' '<new3>' \
        --ti-embeds "$TI_EMBEDS" --joint "$CD_RUN/joint" --merged "$CD_RUN/merged" \
        --concept-dirs "$DATA/textual_inversion/0" "$DATA/textual_inversion/2" --clip "$DATA/clip-vit-base-patch32" \
        --skip-missing
fi

# The report: every figure and number above in OUT/report.md and OUT/report.pdf (with --train, the run's
# training curves)
if [ "$TRAIN" = 1 ]; then
    $PY report.py "$OUT" --run-dir "$RUN/p1" --ti-run-dir "$TI_RUN"
else
    $PY report.py "$OUT"
fi
