#!/usr/bin/env bash
# Issue 15's next step where a GPU is lent: a better P1 teacher and its guidance-distilled student.
#
# Runs on the device machine, in the repository root, once these are there (docs/p1.md, "What is left",
# gives the calls that carry them): .carry/digits (the training digits, `python -m utils.digits_pack pack`)
# and, for the default TEACHER_ARGS, .carry/teacher.pt (`git show 931e3ae:checkpoints/p1_ddpm.pt`).
# Writes into $OUT: teacher.pt.* and student.pt.* (15 MiB pieces: `cat student.pt.* > student.pt`) and
# logs.tgz (both runs' output and train_log.jsonl). Sampling and scoring happen on the CPU afterwards,
# where the fp32 numbers are measured.
#
#   TEACHER_ARGS  p1_ddpm_train.py flags of the teacher run (default: 10,000 more steps of the shipped
#                 teacher, 20,000 in all, from a peak learning rate of 2e-4); e.g. "--n-feat 160" trains
#                 a wider one from scratch
#   STUDENT_ARGS  flags of the guidance distillation (default: the shipped student's recipe)
set -euo pipefail
: "${OUT:?set OUT to the folder the results go to}"
TEACHER_ARGS=${TEACHER_ARGS:---init-from .carry/teacher.pt --steps 10000 --lr 2e-4}
STUDENT_ARGS=${STUDENT_ARGS:---steps 1600 --batch-size 64 --lr 1e-4 --warmup 50 --ema-decay 0.995}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}  # the device's python3 holds torch; elsewhere e.g. PYTHON=.venv/bin/python
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
[ -f hw2_data/digits/svhn/train.csv ] || "$PY" -m utils.digits_pack unpack .carry/digits hw2_data/digits
mkdir -p runs
# shellcheck disable=SC2086  # the flags are meant to split
"$PY" p1_ddpm_train.py --out-dir runs/teacher $TEACHER_ARGS 2>&1 | tee runs/teacher.log
# shellcheck disable=SC2086
"$PY" p1_ddpm_train.py --distill-guidance runs/teacher/model.pt --out-dir runs/student $STUDENT_ARGS 2>&1 \
  | tee runs/student.log
split -b 15m runs/teacher/model.pt "$OUT/teacher.pt."
split -b 15m runs/student/model.pt "$OUT/student.pt."
tar czf "$OUT/logs.tgz" runs/teacher.log runs/student.log runs/teacher/train_log.jsonl runs/student/train_log.jsonl
ls -l "$OUT"
