#!/usr/bin/env bash
# Creates (or reuses) ./.venv and installs gmseg with everything it needs.
# Sourced or run by the README's commands and by .ci/run; safe to run repeatedly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
# The pretrained face DCGAN: only its weights file is needed; its declared
# dependencies (torch, torchvision, wandb) are not.
.venv/bin/python -m pip install -q --no-deps gan-face-generate==1.1.1
