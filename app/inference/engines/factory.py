"""Choose an engine and build a session on it from imported model bytes."""

from __future__ import annotations

import importlib.util
from typing import Literal

from app.errors import EngineUnavailable
from app.inference.engines.base import EngineName, EngineSession, RuntimeOptions

EngineChoice = Literal["auto", "onnxruntime", "openvino"]
CPU_ONLY = ("CPUExecutionProvider",)


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_engine(choice: EngineChoice, providers: tuple[str, ...]) -> EngineName:
    """``auto``: OpenVINO for CPU-only deployments where it is installed (measured
    faster on both models, same outputs), onnxruntime otherwise (CUDA, TensorRT,
    or an install without OpenVINO, such as the GPU image)."""
    if choice == "auto":
        return "openvino" if providers == CPU_ONLY and openvino_installed() else "onnxruntime"
    if choice == "openvino" and not openvino_installed():
        raise EngineUnavailable(
            "FACEREC_ENGINE=openvino but the openvino package is not installed; install "
            "the [cpu] extra, or set FACEREC_ENGINE=onnxruntime",
            engine=choice,
        )
    return choice


def create_engine_session(model_bytes: bytes, name: str, options: RuntimeOptions) -> EngineSession:
    """A session for ``options.engine``; the engine module is imported only when used."""
    if options.engine == "openvino":
        if not openvino_installed():
            raise EngineUnavailable("the openvino package is not installed", engine=options.engine)
        from app.inference.engines.openvino_session import create_openvino_session

        return create_openvino_session(model_bytes, name, options)
    from app.inference.engines.ort_session import create_ort_session

    return create_ort_session(model_bytes, name, options)
