#!/usr/bin/env bash
# P1 on one GPU: train a teacher, then its guidance-distilled student (the shipped checkpoint's kind).
#
#   bash tools/p1_teacher_gpu.sh
#
# Runs from the repository root (relative paths below are taken from there). docs/training.md,
# "Training the P1 teacher and student on a GPU", describes the recipe and the timings.
#
# Data: DATA_ROOT in the course layout (mnistm/ and svhn/, data/*.png + train.csv). When
# DATA_ROOT/svhn/train.csv is missing, DIGITS_PACK is unpacked there first: a pack made on another
# machine with `python -m utils.digits_pack pack hw2_data/digits digits_pack` (lossless, 85 MiB
# instead of 127 MB of small PNGs) and copied here.
#
# Writes OUT/teacher/ and OUT/student/ (model.pt: the sampling checkpoint; last.pt; train_log.jsonl)
# and OUT/teacher.log, OUT/student.log. Sample and score the student afterwards, e.g.
#   bash hw2_1.sh outputs/p1_gpu --ckpt runs/p1_gpu/student/model.pt --bf16 off
#   python p1_ddpm_eval.py outputs/p1_gpu
#
#   OUT           where the two runs go (default runs/p1_gpu; must not hold them yet)
#   DATA_ROOT     the training digits (default hw2_data/digits)
#   DIGITS_PACK   a digits_pack folder to unpack into DATA_ROOT if it is empty (default digits_pack)
#   TEACHER_ARGS  p1_ddpm_train.py flags of the teacher run (default: 10,000 more steps of the shipped
#                 teacher, from a peak learning rate of 2e-4, read from teacher.pt, which
#                 `git show 931e3ae:checkpoints/p1_ddpm.pt > teacher.pt` writes); "--n-feat 160"
#                 instead trains a wider teacher from scratch with the shipped recipe
#   STUDENT_ARGS  flags of the guidance distillation (default: the shipped student's recipe)
#   PYTHON        the interpreter (default: .venv/bin/python if present, else python3)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
. "$here/utils/pick_python.sh"
OUT=${OUT:-runs/p1_gpu}
DATA_ROOT=${DATA_ROOT:-hw2_data/digits}
DIGITS_PACK=${DIGITS_PACK:-digits_pack}
TEACHER_ARGS=${TEACHER_ARGS:---init-from teacher.pt --steps 10000 --lr 2e-4}
STUDENT_ARGS=${STUDENT_ARGS:---steps 1600 --batch-size 64 --lr 1e-4 --warmup 50 --ema-decay 0.995}
export PYTHONUNBUFFERED=1
"$python" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
[ -f "$DATA_ROOT/svhn/train.csv" ] || "$python" -m utils.digits_pack unpack "$DIGITS_PACK" "$DATA_ROOT"
mkdir -p "$OUT"
# shellcheck disable=SC2086  # the flags are meant to split
"$python" p1_ddpm_train.py --data-root "$DATA_ROOT" --out-dir "$OUT/teacher" $TEACHER_ARGS 2>&1 \
  | tee "$OUT/teacher.log"
# shellcheck disable=SC2086
"$python" p1_ddpm_train.py --data-root "$DATA_ROOT" --distill-guidance "$OUT/teacher/model.pt" \
  --out-dir "$OUT/student" $STUDENT_ARGS 2>&1 | tee "$OUT/student.log"
ls -l "$OUT" "$OUT/teacher/model.pt" "$OUT/student/model.pt"
