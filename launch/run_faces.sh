#!/usr/bin/env bash
# Sets up ./.venv (see setup.sh) and runs the main job: few-shot face parts
# with k=2 labelled FASSEG faces, at the CPU budget of the benchmark (200
# A/S iterations, 200 generated images, 2 epochs). Extra flags go to launch/faces.py, e.g.
# --manual_dir=../shared/data/fasseg (offline) or --workdir=runs/other.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
exec .venv/bin/python launch/faces.py \
  --config=configs/faces.py:num=2,steps=200,downstream_images=200 \
  --config.downstream.epochs=2 --config.train.eval_every=100 \
  --config.train.ckpt_every=100 --config.train.grid_every=100 --workdir=runs/faces_k2 "$@"
