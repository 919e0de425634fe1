#!/usr/bin/env bash
# Set up (first run) and start the service on http://127.0.0.1:8000 (docs at /docs).
# Models: FACEREC_MODELS_DIR (default ../shared/models when it exists, else ./models-data;
# `facerec models fetch buffalo_s` fills it for users with internet).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "${FACEREC_FLAVOUR:-cpu}"
if [ -z "${FACEREC_MODELS_DIR:-}" ]; then
  if [ -d ../shared/models ]; then export FACEREC_MODELS_DIR=../shared/models; else export FACEREC_MODELS_DIR=models-data; fi
fi
export FACEREC_DATA_DIR="${FACEREC_DATA_DIR:-data}"
exec .venv/bin/facerec serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
