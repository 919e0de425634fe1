#!/usr/bin/env bash
# Set up (first run) and run the checks: ruff, mypy, then the test suite on the real
# models in FACEREC_MODELS_DIR (default ../shared/models) and data in FACEREC_DATA_ROOT
# (default ../shared/data). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu test,train,postgres
. .venv/bin/activate
export FACEREC_MODELS_DIR="${FACEREC_MODELS_DIR:-../shared/models}"
export FACEREC_DATA_ROOT="${FACEREC_DATA_ROOT:-../shared/data}"
ruff check .
ruff format --check . || { echo "run: ruff format ." >&2; exit 1; }
mypy
pytest "$@"
