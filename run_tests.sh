#!/usr/bin/env bash
# Set up .venv (see setup.sh) and run the test suite on the CPU. Extra arguments go to pytest.
# Two pytest-xdist workers of one thread each: most of the suite's time is spent importing torch and
# diffusers in end-to-end subprocesses, one core each; 1.35x faster than one worker of two threads
# on the project's 2-core machines (163 s -> 120-136 s). tests/conftest.py starts the tests marked `heavy`
# first, one share on each worker, so that no worker is left running one alone at the end (167-204 s ->
# 134-174 s on an Intel Xeon host). `bash run_tests.sh -n 0` runs it in one process.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES="" .venv/bin/python -m pytest -q -n 2 --dist worksteal "$@"
