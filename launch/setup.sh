#!/usr/bin/env bash
# Creates (or reuses) ./.venv and installs gmseg with everything it needs.
# Sourced or run by the README's commands and by .ci/run; safe to run repeatedly.
#
# GMSEG_ACCEL picks JAX's accelerator build (pyproject.toml's extras):
#   cpu     (default) CPU jax from requirements.txt, as CI installs it
#   cuda12  NVIDIA GPUs, CUDA 12 (pip's CUDA libraries; needs an NVIDIA driver)
#   cuda13  NVIDIA GPUs, CUDA 13
#   tpu     Cloud TPU VMs (libtpu)
# e.g. GMSEG_ACCEL=cuda12 bash launch/run_faces.sh
# GMSEG_SETUP_DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
ACCEL=${GMSEG_ACCEL:-cpu}
case "$ACCEL" in
  cpu|cuda12|cuda13|tpu) ;;
  *)
    echo "error: GMSEG_ACCEL=$ACCEL is not one of cpu, cuda12, cuda13, tpu" \
         "(e.g. GMSEG_ACCEL=cuda12 bash launch/setup.sh; unset for CPU)." >&2
    exit 1
    ;;
esac

run() {
  if [ "${GMSEG_SETUP_DRY_RUN:-0}" = 1 ]; then
    echo "$*"
  else
    "$@"
  fi
}

if [ ! -x .venv/bin/python ]; then
  run "$PY" -m venv .venv
fi
run .venv/bin/python -m pip install -q --upgrade pip
run .venv/bin/python -m pip install -q -r requirements.txt
if [ "$ACCEL" = cpu ]; then
  run .venv/bin/python -m pip install -q --no-deps -e .
else
  # The extra adds jax's plugin for the accelerator (jax[cuda12], jax[tpu]),
  # pinned by jax to the jax version requirements.txt installed.
  run .venv/bin/python -m pip install -q -e ".[$ACCEL]"
fi
# The pretrained face DCGAN: only its weights file is needed; its declared
# dependencies (torch, torchvision, wandb) are not.
run .venv/bin/python -m pip install -q --no-deps gan-face-generate==1.1.1
