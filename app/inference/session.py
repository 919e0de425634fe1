"""onnxruntime session construction: providers, threads, logging, import steps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from app.errors import ModelError, ProviderUnavailable
from app.inference.manifest import ModelManifest
from app.inference.onnx_import import import_model

logger = logging.getLogger(__name__)

# onnxruntime severity 3 = ERROR: stale declared shapes are fixed on import, but
# other files may still trigger per-run warnings that would flood the logs.
_ORT_LOG_ERROR = 3


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How every session is built.

    ``providers`` are in priority order: onnxruntime gives each graph node to the
    first one that can run it. Every provider listed is required; a session that
    cannot use one of them is refused (``ProviderUnavailable``), never run on the
    CPU instead.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1


def create_session(
    manifest: ModelManifest, model_path: Path, options: RuntimeOptions
) -> ort.InferenceSession:
    """Load ``model_path`` with the manifest's import steps applied in memory."""
    steps = manifest.import_steps
    model_bytes = import_model(
        model_path.read_bytes(),
        dequantize=steps.dequantize,
        fix_dynamic_shapes=steps.fix_dynamic_shapes,
    )
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session_options.log_severity_level = _ORT_LOG_ERROR
    requested = list(options.providers)
    check_providers_available(requested, ort.get_available_providers())
    try:
        session = ort.InferenceSession(model_bytes, session_options, providers=requested)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise ModelError(f"onnxruntime could not load {model_path}: {exc}") from exc
    _check_input(manifest, session)
    used = session.get_providers()
    check_providers_in_use(manifest.name, requested, used)
    logger.info("loaded %s (%s) on %s", manifest.name, model_path, used)
    return session


def check_providers_available(requested: Sequence[str], available: Sequence[str]) -> None:
    """Refuse providers this onnxruntime build lacks, instead of dropping them."""
    if not requested:
        raise ModelError("no onnxruntime execution provider requested (FACEREC_PROVIDERS)")
    missing = [name for name in requested if name not in available]
    if missing:
        raise ProviderUnavailable(
            f"execution provider(s) {missing} requested (FACEREC_PROVIDERS) but this "
            f"onnxruntime build offers only {list(available)}; for CUDA/TensorRT install "
            "the [gpu] extra (onnxruntime-gpu, never beside onnxruntime), or request "
            "CPUExecutionProvider",
            requested=list(requested),
            available=list(available),
        )


def check_providers_in_use(model: str, requested: Sequence[str], in_use: Sequence[str]) -> None:
    """Refuse a session that quietly fell back to fewer providers than requested.

    onnxruntime drops a provider that fails to initialise (no GPU visible to the
    process, CUDA/cuDNN/TensorRT libraries missing or mismatched) with a log line
    and carries on with the rest, usually the CPU alone.
    """
    dropped = [name for name in requested if name not in in_use]
    if dropped:
        raise ProviderUnavailable(
            f"{model}: onnxruntime could not initialise {dropped} (in use: {list(in_use)}); "
            "check that a GPU is visible to the process (nvidia-smi; docker --gpus or a "
            "compose device reservation) and that the CUDA, cuDNN (and TensorRT) libraries "
            "match the onnxruntime-gpu version",
            requested=list(requested),
            in_use=list(in_use),
        )


def _check_input(manifest: ModelManifest, session: ort.InferenceSession) -> None:
    names = [node.name for node in session.get_inputs()]
    if names != [manifest.input.name]:
        raise ModelError(
            f"{manifest.name}: manifest input is {manifest.input.name!r}, model inputs are {names}"
        )
