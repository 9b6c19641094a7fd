#!/usr/bin/env bash
# Set up .venv and run every problem on its default inputs; outputs go to outputs/.
# The main job is P1 with the shipped checkpoint; the others run when their inputs are present
# (see hw2_data/README.md) and otherwise say what is missing and go on.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
PY=.venv/bin/python

# P1: the 1,000 graded images, both grids and the reverse-process figure, then their scores
$PY p1_ddpm_sample.py outputs/p1 --ckpt checkpoints/p1_ddpm.pt --grid --reverse-process
$PY p1_ddpm_eval.py outputs/p1 --mnistm-classifier Classifier.pth \
    --svhn-classifier checkpoints/svhn_classifier.pt --skip-missing

# P2: DDIM faces from the course's noise files, MSE against ground truth, eta sweep, slerp/lerp
$PY p2_ddim.py hw2_data/face/noise outputs/p2 hw2_data/face/UNet.pt --gt-dir hw2_data/face/GT \
    --eta-sweep --interpolation --skip-missing

# P3: CLIP zero-shot classification (needs the val images and the ViT-B-32 OpenAI weights)
$PY p3_clip_zeroshot.py hw2_data/clip_zeroshot/val hw2_data/clip_zeroshot/id2label.json outputs/p3_clip \
    --model ViT-B-32 --pretrained openai --skip-missing

# P3: textual inversion on SD v1 (needs hw2_data/sd-v1-4.ckpt): learn <new1>, <new2>, <new3>
# (resumable), the graded images, their CLIP scores and the two-concept figure
$PY p3_textual_inversion.py train hw2_data/textual_inversion/0 hw2_data/sd-v1-4.ckpt --token '<new1>' \
    --initializer dog --resume --skip-missing
$PY p3_textual_inversion.py train hw2_data/textual_inversion/1 hw2_data/sd-v1-4.ckpt --token '<new2>' \
    --initializer illustration --style --resume --skip-missing
$PY p3_textual_inversion.py train hw2_data/textual_inversion/2 hw2_data/sd-v1-4.ckpt --token '<new3>' \
    --initializer cat --resume --skip-missing
$PY p3_textual_inversion.py generate hw2_data/textual_inversion/input.json outputs/p3_ti hw2_data/sd-v1-4.ckpt \
    --skip-missing
$PY p3_textual_inversion.py evaluate hw2_data/textual_inversion/input.json outputs/p3_ti \
    --concept-root hw2_data/textual_inversion --clip hw2_data/clip-vit-base-patch32 \
    --json outputs/p3_ti_scores.json --skip-missing
$PY p3_textual_inversion.py figure hw2_data/sd-v1-4.ckpt outputs/p3_multi_concept.png \
    --tokens '<new1>' '<new3>' --skip-missing

# P3: Custom Diffusion on SD v1 (needs hw2_data/sd-v1-4.ckpt): <new1> and <new3> jointly (resumable), the
# same two apart and merged, the two-concept comparison with textual inversion
$PY p3_custom_diffusion.py train hw2_data/textual_inversion/0 hw2_data/textual_inversion/2 hw2_data/sd-v1-4.ckpt \
    --tokens '<new1>' '<new3>' --class-words dog cat --out-dir runs/p3_custom_diffusion/joint --resume --skip-missing
$PY p3_custom_diffusion.py train hw2_data/textual_inversion/0 hw2_data/sd-v1-4.ckpt --tokens '<new1>' \
    --class-words dog --out-dir runs/p3_custom_diffusion/new1 --resume --skip-missing
$PY p3_custom_diffusion.py train hw2_data/textual_inversion/2 hw2_data/sd-v1-4.ckpt --tokens '<new3>' \
    --class-words cat --out-dir runs/p3_custom_diffusion/new3 --resume --skip-missing
$PY p3_custom_diffusion.py merge runs/p3_custom_diffusion/new1 runs/p3_custom_diffusion/new3 hw2_data/sd-v1-4.ckpt \
    --out-dir runs/p3_custom_diffusion/merged --skip-missing
$PY p3_custom_diffusion.py figure hw2_data/sd-v1-4.ckpt outputs/p3_cd_comparison.png --tokens '<new1>' '<new3>' \
    --skip-missing
