#!/usr/bin/env bash
# Throughput and accuracy with onnxruntime's CUDA provider, figures printed.
#
#   bench/gpu.sh                 # from anywhere; needs an NVIDIA GPU and its driver
#   GPU_VENV=/opt/venv bench/gpu.sh   # reuse (or create) a venv elsewhere
#   QUICK=1 bench/gpu.sh         # smaller sets: a first look in about 5 minutes
#
# It creates its own virtual environment (.venv-gpu, never the CPU one) with the
# [gpu] extra (onnxruntime-gpu alone: no onnxruntime, no openvino, so
# FACEREC_ENGINE=auto picks onnxruntime), insightface (no deps) for the wrapper,
# and points at the shared models and data (../shared beside the checkout, or
# ./shared, or $FACEREC_SHARED). Both servers of the throughput run get CUDA
# first; ours also runs a variant that waits up to 2 ms to fill recognizer
# batches across requests (FACEREC_BATCH_MAX_WAIT_MS), the setting GPUs want.
# Results land in bench/results/gpu-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="${GPU_VENV:-.venv-gpu}"
shared="${FACEREC_SHARED:-}"
if [ -z "$shared" ]; then
  for candidate in ../shared ./shared; do
    if [ -d "$candidate/models" ] && [ -d "$candidate/data" ]; then shared="$candidate"; break; fi
  done
fi
[ -n "$shared" ] || { echo "gpu.sh: no shared/ with models/ and data/ (set FACEREC_SHARED)" >&2; exit 2; }
export FACEREC_MODELS_DIR="$(cd "$shared/models" && pwd)" FACEREC_DATA_ROOT="$(cd "$shared/data" && pwd)"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  || echo "gpu.sh: nvidia-smi not found; CUDA will be refused at start-up if no GPU is visible" >&2

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # The [gpu] extra's dependencies without installing facerec itself: the bench
  # runs the checkout's code (python -m from the repository root).
  "$venv/bin/python" -m pip install --quiet "onnxruntime-gpu>=1.18" \
    $("$python" - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(" ".join(project["dependencies"]))
PY
) httpx tqdm scikit-image scipy requests
  "$venv/bin/python" -m pip install --quiet --no-deps "insightface==2.1"
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
names = {d.metadata["Name"].lower() for d in md.distributions()}
if "onnxruntime" in names or "openvino" in names:
    raise SystemExit(f"gpu venv must hold onnxruntime-gpu only: found {sorted(names & {'onnxruntime', 'openvino'})}")
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
if "CUDAExecutionProvider" not in ort.get_available_providers():
    raise SystemExit("this onnxruntime build has no CUDAExecutionProvider")
PY

export FACEREC_PROVIDERS="CUDAExecutionProvider,CPUExecutionProvider" FACEREC_ENGINE=onnxruntime
mkdir -p bench/results
stamp="$(date -u +%Y%m%dT%H%MZ)"
if [ -n "${QUICK:-}" ]; then
  throughput_args=(--lfw 200 --photo-repeats 4 --clients 1 4 16 --passes 1)
  accuracy_args=(--lfw-limit 1200 --cfp-identities 50)
else
  throughput_args=(--clients 1 4 16 --passes 2)
  accuracy_args=()
fi
echo "=== throughput over HTTP (CUDA), $(date -u)"
"$venv/bin/python" -m bench.throughput "${throughput_args[@]}" \
  --ours-env FACEREC_PROVIDERS="$FACEREC_PROVIDERS" --ours-env FACEREC_ENGINE=onnxruntime \
  --variant "batch-wait-2ms:FACEREC_BATCH_MAX_WAIT_MS=2" \
  --wrapper-providers "$FACEREC_PROVIDERS" \
  --json-out "bench/results/gpu-throughput-$stamp.json"
echo "=== accuracy through the HTTP API (CUDA), $(date -u)"
"$venv/bin/python" -m bench.accuracy "${accuracy_args[@]}" --json-out "bench/results/gpu-accuracy-$stamp.json"
