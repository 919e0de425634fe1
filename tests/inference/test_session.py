"""Session providers: every requested provider is used, or start-up fails loudly.

This machine has the CPU build of onnxruntime and no GPU, so a CUDA request must end in
``ProviderUnavailable``, never in a session that quietly runs on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from app.errors import ModelError, ProviderUnavailable
from app.inference.catalog import resolve_manifest
from app.inference.session import (
    EngineSession,
    RuntimeOptions,
    check_providers_available,
    check_providers_in_use,
    create_session,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def load_detector(models_dir: Path, *providers: str) -> EngineSession:
    manifest, _ = resolve_manifest("scrfd_500m")
    options = RuntimeOptions(providers=providers)
    return create_session(manifest, models_dir / manifest.file, options)


def test_cpu_request_builds_a_session_on_the_cpu(models_dir: Path) -> None:
    session = load_detector(models_dir, CPU)

    assert session.engine == "onnxruntime"
    assert session.devices == (CPU,)


def test_cuda_request_without_onnxruntime_gpu_fails_loudly(models_dir: Path) -> None:
    assert CUDA not in ort.get_available_providers(), "this test needs the CPU build"

    with pytest.raises(ProviderUnavailable) as raised:
        load_detector(models_dir, CUDA, CPU)

    assert raised.value.code == "provider_unavailable"
    assert CUDA in raised.value.message
    assert "onnxruntime-gpu" in raised.value.message
    assert raised.value.details["requested"] == [CUDA, CPU]


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_session_that_quietly_fell_back_to_the_cpu_is_refused(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CUDA build whose provider fails to initialise (no GPU visible, cuDNN missing)
    # looks like this: CUDA is offered, the session is created, it runs on the CPU.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])

    with pytest.raises(ProviderUnavailable) as raised:
        load_detector(models_dir, CUDA, CPU)

    assert "could not initialise ['CUDAExecutionProvider']" in raised.value.message
    assert raised.value.details["in_use"] == [CPU]


def test_no_provider_requested_is_an_error() -> None:
    with pytest.raises(ModelError, match="no onnxruntime execution provider"):
        check_providers_available([], [CPU])


@pytest.mark.parametrize(
    ("requested", "available", "missing"),
    [
        ([CUDA, CPU], [CPU], [CUDA]),
        ([TENSORRT, CUDA, CPU], [CUDA, CPU], [TENSORRT]),
        (["CudaExecutionProvider"], [CUDA, CPU], ["CudaExecutionProvider"]),
    ],
)
def test_providers_the_build_lacks_are_named(
    requested: list[str], available: list[str], missing: list[str]
) -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        check_providers_available(requested, available)

    assert str(missing) in raised.value.message
    assert raised.value.details["available"] == available


@pytest.mark.parametrize(
    ("requested", "in_use"),
    [
        ([CPU], [CPU]),
        ([CUDA, CPU], [CUDA, CPU]),
        ([CUDA], [CUDA, CPU]),  # onnxruntime always adds the CPU for the rest
        ([TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU]),
    ],
)
def test_sessions_using_every_requested_provider_pass(
    requested: list[str], in_use: list[str]
) -> None:
    check_providers_in_use("model", requested, in_use)


@pytest.mark.parametrize(
    ("requested", "in_use", "dropped"),
    [
        ([CUDA, CPU], [CPU], [CUDA]),
        ([TENSORRT, CUDA, CPU], [CUDA, CPU], [TENSORRT]),
        ([TENSORRT, CUDA, CPU], [CPU], [TENSORRT, CUDA]),
    ],
)
def test_sessions_missing_a_requested_provider_are_refused(
    requested: list[str], in_use: list[str], dropped: list[str]
) -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        check_providers_in_use("scrfd_500m", requested, in_use)

    assert raised.value.message.startswith(
        f"scrfd_500m: onnxruntime could not initialise {dropped}"
    )
