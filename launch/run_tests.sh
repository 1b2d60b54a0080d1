#!/usr/bin/env bash
# Sets up ./.venv (see setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash launch/setup.sh
exec .venv/bin/python -m pytest -q tests "$@"
