"""onnxruntime session construction: providers, threads, logging, import steps."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from app.errors import ModelError
from app.inference.manifest import ModelManifest
from app.inference.onnx_import import import_model

logger = logging.getLogger(__name__)

# onnxruntime severity 3 = ERROR: stale declared shapes are fixed on import, but
# other files may still trigger per-run warnings that would flood the logs.
_ORT_LOG_ERROR = 3


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How every session is built. ``providers`` are tried in order."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    require_all_providers: bool = False


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
    available = set(ort.get_available_providers())
    wanted = [p for p in options.providers if p in available]
    missing = [p for p in options.providers if p not in available]
    if missing and options.require_all_providers:
        raise ModelError(
            f"execution providers {missing} were requested but this onnxruntime build "
            f"offers only {sorted(available)}"
        )
    if not wanted:
        raise ModelError(f"none of the providers {list(options.providers)} is available")
    try:
        session = ort.InferenceSession(model_bytes, session_options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise ModelError(f"onnxruntime could not load {model_path}: {exc}") from exc
    _check_input(manifest, session)
    used = session.get_providers()
    if options.require_all_providers and used[: len(wanted)] != wanted:
        raise ModelError(f"{manifest.name}: requested providers {wanted}, in use {used}")
    logger.info("loaded %s (%s) on %s", manifest.name, model_path, used)
    return session


def _check_input(manifest: ModelManifest, session: ort.InferenceSession) -> None:
    names = [node.name for node in session.get_inputs()]
    if names != [manifest.input.name]:
        raise ModelError(
            f"{manifest.name}: manifest input is {manifest.input.name!r}, model inputs are {names}"
        )
