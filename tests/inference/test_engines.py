"""Engine choice and the "every requested device is required" rule, on real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import EngineUnavailable, ModelError, ProviderUnavailable
from app.inference.catalog import resolve_manifest
from app.inference.engines import factory
from app.inference.engines.openvino_session import (
    check_devices_available,
    check_devices_in_use,
)
from app.inference.session import RuntimeOptions, create_session

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


@pytest.mark.parametrize(
    ("choice", "providers", "installed", "engine"),
    [
        ("auto", (CPU_PROVIDER,), True, "openvino"),
        ("auto", (CPU_PROVIDER,), False, "onnxruntime"),
        ("auto", (CUDA_PROVIDER, CPU_PROVIDER), True, "onnxruntime"),
        ("onnxruntime", (CPU_PROVIDER,), True, "onnxruntime"),
        ("openvino", (CPU_PROVIDER,), True, "openvino"),
    ],
)
def test_auto_picks_openvino_only_for_cpu_deployments_that_have_it(
    monkeypatch: pytest.MonkeyPatch,
    choice: factory.EngineChoice,
    providers: tuple[str, ...],
    installed: bool,
    engine: str,
) -> None:
    monkeypatch.setattr(factory, "openvino_installed", lambda: installed)

    assert factory.resolve_engine(choice, providers) == engine


def test_openvino_asked_for_but_not_installed_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(factory, "openvino_installed", lambda: False)

    with pytest.raises(EngineUnavailable) as raised:
        factory.resolve_engine("openvino", (CPU_PROVIDER,))

    assert raised.value.code == "engine_unavailable"
    assert "FACEREC_ENGINE=onnxruntime" in raised.value.message


def load(models_dir: Path, **options: object) -> object:
    manifest, _ = resolve_manifest("scrfd_500m")
    return create_session(manifest, models_dir / manifest.file, RuntimeOptions(**options))  # type: ignore[arg-type]


def test_openvino_session_on_the_cpu_reports_its_device(models_dir: Path) -> None:
    session = load(models_dir, engine="openvino", devices=("CPU",))

    assert session.engine == "openvino"  # type: ignore[attr-defined]
    assert session.devices == ("CPU",)  # type: ignore[attr-defined]
    assert session.input_names == ("input.1",)  # type: ignore[attr-defined]
    assert len(session.output_names) == 9  # type: ignore[attr-defined]


def test_openvino_device_this_machine_lacks_is_refused(models_dir: Path) -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        load(models_dir, engine="openvino", devices=("NPU",))

    assert "['NPU']" in raised.value.message
    assert raised.value.details["requested"] == ["NPU"]
    assert "CPU" in raised.value.details["available"]


@pytest.mark.parametrize("device", ["AUTO", "AUTO:GPU,CPU", "MULTI:CPU"])
def test_openvino_devices_that_fall_back_quietly_are_refused(device: str) -> None:
    with pytest.raises(ProviderUnavailable, match="fall back"):
        check_devices_available([device], ["CPU"])


def test_no_openvino_device_is_an_error() -> None:
    with pytest.raises(ModelError, match="no OpenVINO device"):
        check_devices_available([], ["CPU"])


@pytest.mark.parametrize(
    ("requested", "available"),
    [(["CPU"], ["CPU"]), (["GPU"], ["CPU", "GPU.0", "GPU.1"]), (["GPU.1"], ["GPU.0", "GPU.1"])],
)
def test_visible_openvino_devices_pass(requested: list[str], available: list[str]) -> None:
    check_devices_available(requested, available)


def test_a_compiled_model_not_running_on_every_requested_device_is_refused() -> None:
    with pytest.raises(ProviderUnavailable) as raised:
        check_devices_in_use("scrfd_500m", ["GPU", "CPU"], ["CPU"])

    assert raised.value.message.startswith("scrfd_500m: OpenVINO does not execute on ['GPU']")


def test_cuda_requested_under_auto_goes_to_onnxruntime_and_fails_loudly(
    models_dir: Path,
) -> None:
    # auto never answers a CUDA request with OpenVINO on the CPU.
    engine = factory.resolve_engine("auto", (CUDA_PROVIDER, CPU_PROVIDER))

    with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu"):
        load(models_dir, engine=engine, providers=(CUDA_PROVIDER, CPU_PROVIDER))
