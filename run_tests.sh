#!/usr/bin/env bash
# Set up .venv (see setup.sh) and run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
CUDA_VISIBLE_DEVICES="" .venv/bin/python -m pytest -q "$@"
