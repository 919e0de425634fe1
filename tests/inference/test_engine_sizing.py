"""How the composition root sizes the engine sessions from the settings and the cores."""

from __future__ import annotations

import pytest

import app.config
import app.main
from app.config import Settings
from app.main import engine_options


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> int:
    """A 4-core machine, whatever this one has."""
    monkeypatch.setattr(app.config, "available_cores", lambda: 4)
    monkeypatch.setattr(app.main, "available_cores", lambda: 4)
    return 4


def test_on_a_cpu_the_recognizer_runs_one_stream_per_worker(cores: int) -> None:
    settings = Settings(engine="openvino")
    detector, recognizer = engine_options(settings)
    assert settings.resolved_recognizer_runners() == cores
    assert (recognizer.streams, recognizer.intra_op_threads) == (cores, 1)
    assert (detector.streams, detector.intra_op_threads) == (cores, 1)


def test_fewer_workers_give_each_runner_more_threads(cores: int) -> None:
    settings = Settings(engine="openvino", inference_workers=2)
    _, recognizer = engine_options(settings)
    assert (recognizer.streams, recognizer.intra_op_threads) == (2, 2)


def test_one_runner_gets_every_core(cores: int) -> None:
    settings = Settings(engine="openvino", recognizer_runners=1)
    _, recognizer = engine_options(settings)
    assert (recognizer.streams, recognizer.intra_op_threads) == (1, cores)


@pytest.mark.parametrize(
    "gpu",
    [
        {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "engine": "onnxruntime"},
        {"providers": ["TensorrtExecutionProvider"], "engine": "onnxruntime"},
        {"openvino_devices": ["GPU"], "engine": "openvino"},
    ],
)
def test_on_a_gpu_one_runner_batches_everything(cores: int, gpu: dict[str, object]) -> None:
    settings = Settings(**gpu)  # type: ignore[arg-type]
    assert settings.resolved_recognizer_runners() == 1


def test_an_openvino_gpu_recognizer_is_one_stream_with_every_core(cores: int) -> None:
    _, recognizer = engine_options(Settings(engine="openvino", openvino_devices=["GPU"]))
    assert (recognizer.streams, recognizer.intra_op_threads) == (1, cores)
