#!/usr/bin/env bash
# Grading entry point of P1: bash hw2_1.sh OUT_DIR
# Writes OUT_DIR/{mnistm,svhn}/{digit}_{k:03d}.png (500 images each) with the shipped checkpoint.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: bash hw2_1.sh OUT_DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
. "$here/utils/pick_python.sh"
"$python" "$here/p1_ddpm_sample.py" "$1" --ckpt "$here/checkpoints/p1_ddpm.pt"
