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
    resolve_precision,
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


def test_openvino_session_reports_the_precision_it_computes_in(models_dir: Path) -> None:
    f32 = load(models_dir, engine="openvino", precision="f32")
    onnxruntime = load(models_dir, engine="onnxruntime", precision="bf16")

    assert f32.precision == "f32"  # type: ignore[attr-defined]
    assert onnxruntime.precision == "f32"  # type: ignore[attr-defined]


NATIVE_BF16 = ("BF16", "FP32", "INT8")
NO_BF16 = ("FP32", "INT8")


@pytest.mark.parametrize(
    ("choice", "capabilities", "precision"),
    [
        ("auto", NATIVE_BF16, "bf16"),
        ("auto", NO_BF16, "f32"),
        ("f32", NATIVE_BF16, "f32"),
        ("bf16", NATIVE_BF16, "bf16"),
    ],
)
def test_auto_precision_is_bf16_only_where_the_cpu_has_it_natively(
    choice: str, capabilities: tuple[str, ...], precision: str
) -> None:
    assert resolve_precision(choice, ["CPU"], capabilities) == precision  # type: ignore[arg-type]


def test_bf16_asked_for_on_a_cpu_without_it_is_refused() -> None:
    # OpenVINO would emulate it, slower than f32, and say nothing.
    with pytest.raises(ProviderUnavailable, match="no native bf16") as raised:
        resolve_precision("bf16", ["CPU"], NO_BF16)

    assert raised.value.code == "provider_unavailable"
    assert "FACEREC_OPENVINO_PRECISION" in raised.value.message


def test_auto_leaves_a_non_cpu_device_its_own_precision_and_bf16_there_is_refused() -> None:
    assert resolve_precision("auto", ["GPU"], ()) is None
    assert resolve_precision("f32", ["GPU", "CPU"], ()) == "f32"
    with pytest.raises(ProviderUnavailable, match="CPU only"):
        resolve_precision("bf16", ["GPU"], ())


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
