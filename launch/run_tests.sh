#!/usr/bin/env bash
# Sets up ./.venv (see setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
# Two worker processes by default (the CI machine's 2 cores): compilation, which
# dominates the suite, is single-threaded. Whole files go to one worker
# (--dist loadfile), so module fixtures (built models, jitted steps) are built
# once; the longest files go first (tests/conftest.py, kept by
# --no-loadscope-reorder). GMSEG_TEST_WORKERS=0 runs in this process (e.g. for pdb).
# --durations=25 prints the slowest tests, so every run says where the time goes.
exec .venv/bin/python -m pytest -q -n "${GMSEG_TEST_WORKERS:-2}" --dist loadfile \
  --no-loadscope-reorder --durations=25 tests "$@"
