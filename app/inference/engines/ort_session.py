"""onnxruntime engine: the CPU, CUDA and TensorRT path.

Every requested provider is required: onnxruntime itself drops a provider that
fails to initialise and quietly runs on the rest (usually the CPU); such a
session is refused here with ``ProviderUnavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from app.errors import ModelError, ProviderUnavailable
from app.inference.engines.base import EngineName, RuntimeOptions, Tensor

logger = logging.getLogger(__name__)

# onnxruntime severity 3 = ERROR: stale declared shapes are fixed on import, but
# other files may still trigger per-run warnings that would flood the logs.
_ORT_LOG_ERROR = 3


class OrtSession:
    """An ``EngineSession`` over ``onnxruntime.InferenceSession`` (thread-safe ``run``)."""

    engine: EngineName = "onnxruntime"

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self._inputs = tuple(node.name for node in session.get_inputs())
        self._outputs = tuple(node.name for node in session.get_outputs())

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.session.get_providers())

    @property
    def precision(self) -> str:
        return "f32"

    def run(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        outputs = self.session.run(None, dict(feeds))
        return [np.asarray(output, dtype=np.float32) for output in outputs]


def create_ort_session(model_bytes: bytes, name: str, options: RuntimeOptions) -> OrtSession:
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
        raise ModelError(f"onnxruntime could not load {name}: {exc}") from exc
    check_providers_in_use(name, requested, session.get_providers())
    return OrtSession(session)


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
