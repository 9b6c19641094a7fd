#!/usr/bin/env bash
# Grading entry point of P1: bash hw2_1.sh OUT_DIR [extra p1_ddpm_sample.py flags]
# Writes OUT_DIR/{mnistm,svhn}/{digit}_{k:03d}.png (500 images each) with the shipped checkpoint and
# p1_ddpm_sample.py's defaults. Extra flags (e.g. --per-digit 1 in a test) are passed through.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash hw2_1.sh OUT_DIR [p1_ddpm_sample.py flags]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
. "$here/utils/pick_python.sh"
"$python" "$here/p1_ddpm_sample.py" "$1" --ckpt "$here/checkpoints/p1_ddpm.pt" "${@:2}"
