#!/usr/bin/env bash
# Sets up ./.venv (see setup.sh) and runs the main job: few-shot face parts
# with k=2 labelled FASSEG faces (configs/faces.py: class-weighted target
# gradient, zoom-out augmentation), 600 A/S iterations, 2000 generated images
# x 3 epochs (augmented), then "LAGM + labelled" (600 fine-tuning updates on
# the 2 faces), the supervised baseline (600 updates) and the self-training
# control (the supervised model labels the same 2000 generated faces; the same
# phase two and fine-tuning); every model scored on the frontal02 test faces
# and the multipose V3 validation faces. Extra flags go to launch/faces.py,
# e.g. --manual_dir=../shared/data/fasseg (offline), --workdir=runs/other,
# --baselines=supervised,self_training,label_free (adds the label-free
# control: the untrained annotator's labels; ,rendered adds the rendered-label
# baseline: a second phase one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
exec .venv/bin/python launch/faces.py \
  --config=configs/faces.py:num=2,steps=600,downstream_images=2000 \
  --config.downstream.epochs=3 --config.downstream.finetune_steps=600 \
  --config.train.eval_every=100 --config.train.ckpt_every=100 \
  --config.train.grid_every=300 --baselines=supervised,self_training --workdir=runs/faces_k2 "$@"
