#!/usr/bin/env bash
# Create .venv and install facerec. Usage: scripts/setup.sh [cpu|gpu] [EXTRA,...]
#   cpu/gpu: which onnxruntime build (never both: they overwrite each other)
#   extras:  comma separated, e.g. "test" (test tools + insightface reference
#            oracle) or "train" (PyTorch for the training package)
# Runs pip only when something is missing (scripts/installed.py checks): once set up,
# the service starts in a second, without a package index. FACEREC_REINSTALL=1 forces pip.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
python="${PYTHON:-python3}"
extras="$flavour${2:+,$2}"
if [ -x .venv/bin/python ] && [ "${FACEREC_REINSTALL:-0}" != 1 ] \
    && .venv/bin/python scripts/installed.py "$extras" 2>/dev/null; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
. .venv/bin/activate
python -m pip install --quiet -e ".[$extras]"
if [[ ",${2:-}," == *,test,* ]]; then
  # insightface is a reference oracle for parity tests and benchmarks only. Its
  # wheel pins opencv-python and onnxruntime, which would put a second OpenCV
  # (and, on GPU machines, a second onnxruntime) beside ours: install it alone.
  python -m pip install --quiet --no-deps "insightface==2.1"
fi
python - <<'PY'
import importlib.metadata as md
names = {d.metadata["Name"].lower() for d in md.distributions()}
both = {"onnxruntime", "onnxruntime-gpu"} <= names
cv = {"opencv-python", "opencv-python-headless"} <= names
if both or cv:
    raise SystemExit(f"conflicting packages installed: onnxruntime both={both} opencv both={cv}")
PY
python scripts/installed.py "$extras"
