"""Write the homework report OUTPUTS_DIR/report.md from the figures and JSON the programs wrote.

One section per problem (P1, P2, P3 CLIP, P3 textual inversion, P3 Custom Diffusion); every number
is read from a JSON file, every figure linked relatively with a caption saying how it was made.
A section whose inputs are missing says what to put where and the command that makes it.
Training curves (loss and learning rate against step, accuracy against step) when a run folder
is given. Curves and thumbnails go to OUTPUTS_DIR/report_files/ (replaced whole). See docs/report.md.
"""
import argparse
from pathlib import Path

from utils.cli import check_writable_dir, staged_dir, staged_file
from utils.errors import UserError, cli
from utils.report import FILES, build


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", type=Path, help="the outputs folder run_all.sh writes (p1/, p2/, p3_clip/, ...)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="P1 training run folder: plot its train_log.jsonl and accuracy.json (kept checkpoints "
                        "scored by benchmarks/bench_p1_quality.py)")
    p.add_argument("--ti-run-dir", type=Path, default=None,
                   help="textual-inversion run folder: plot every TOKEN/train_log.jsonl in it (absent: no curves)")
    return p.parse_args(argv)


@cli("report.py")
def main(argv=None):
    args = parse_args(argv)
    if not args.out_dir.is_dir():
        raise UserError(f"{args.out_dir}: outputs folder not found (bash run_all.sh writes outputs/)")
    check_writable_dir(args.out_dir)
    if args.run_dir is not None and not args.run_dir.is_dir():
        raise UserError(f"--run-dir {args.run_dir}: folder not found")
    with staged_dir(args.out_dir / FILES) as files:
        text = build(args.out_dir, files, run_dir=args.run_dir, ti_run_dir=args.ti_run_dir)
    report = args.out_dir / "report.md"
    with staged_file(report) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    main()
