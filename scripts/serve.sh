#!/usr/bin/env bash
# Start the service on http://127.0.0.1:8000 (API docs at /docs, management page at
# /manage). The first run installs facerec into .venv; later runs start at once, offline.
# Configuration: FACEREC_* variables (docs/configuration.md). Models are read from
# FACEREC_MODELS_DIR, else ./models-data, like every facerec command
# (`.venv/bin/facerec models fetch buffalo_s` fills it). HOST and PORT move the server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "${FACEREC_FLAVOUR:-cpu}"
export FACEREC_DATA_DIR="${FACEREC_DATA_DIR:-data}"
exec .venv/bin/facerec serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
