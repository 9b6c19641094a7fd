#!/usr/bin/env bash
# P3: the graded textual-inversion images. $1 input.json, $2 output folder, $3 the SD v1 checkpoint (sd-v1-4.ckpt).
# Writes $2/{concept id}/{prompt index}/0.png ... 24.png with the embeddings in checkpoints/p3_textual_inversion/.
set -euo pipefail
if [ "$#" -ne 3 ]; then
    echo "usage: bash $0 INPUT_JSON OUT_DIR MODEL_CKPT" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
. "$here/utils/pick_python.sh"
"$python" "$here/p3_textual_inversion.py" generate "$1" "$2" "$3"
