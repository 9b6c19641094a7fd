#!/usr/bin/env bash
# P2: DDIM faces from the course's noise files.  Usage: bash hw2_2.sh NOISE_DIR OUT_DIR UNET_PATH
set -euo pipefail
if [ "$#" -ne 3 ]; then
    echo "usage: bash $0 NOISE_DIR OUT_DIR UNET_PATH" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
. "$here/utils/pick_python.sh"
"$python" "$here/p2_ddim.py" "$1" "$2" "$3"
