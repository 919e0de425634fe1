"""Session construction: manifest import steps, then the configured engine.

The engines live in ``app.inference.engines``; this module is what the rest of
the service calls (``create_session``), plus the names it has always exported.
"""

from __future__ import annotations

import logging
from pathlib import Path

from app.errors import ModelError
from app.inference.engines.base import EngineSession, RuntimeOptions
from app.inference.engines.factory import create_engine_session
from app.inference.engines.ort_session import (
    check_providers_available,
    check_providers_in_use,
)
from app.inference.manifest import ModelManifest
from app.inference.onnx_import import import_model

__all__ = [
    "EngineSession",
    "RuntimeOptions",
    "check_providers_available",
    "check_providers_in_use",
    "create_session",
]

logger = logging.getLogger(__name__)


def create_session(
    manifest: ModelManifest, model_path: Path, options: RuntimeOptions
) -> EngineSession:
    """Load ``model_path`` with the manifest's import steps applied in memory."""
    steps = manifest.import_steps
    model_bytes = import_model(
        model_path.read_bytes(),
        dequantize=steps.dequantize,
        fix_dynamic_shapes=steps.fix_dynamic_shapes,
    )
    session = create_engine_session(model_bytes, str(model_path), options)
    if list(session.input_names) != [manifest.input.name]:
        raise ModelError(
            f"{manifest.name}: manifest input is {manifest.input.name!r}, "
            f"model inputs are {list(session.input_names)}"
        )
    logger.info(
        "loaded %s (%s) on %s %s in %s",
        manifest.name,
        model_path,
        session.engine,
        session.devices,
        session.precision,
    )
    return session
