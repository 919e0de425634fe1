"""How the composition root sizes the engine sessions from the settings and the cores."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

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


def test_by_default_one_recognizer_runner_gets_every_core(cores: int) -> None:
    detector, recognizer = engine_options(Settings(engine="openvino"))
    assert (recognizer.streams, recognizer.intra_op_threads) == (1, cores)
    assert (detector.streams, detector.intra_op_threads) == (cores, 1)


@pytest.mark.parametrize(("runners", "threads"), [(2, 2), (4, 1), (8, 1)])
def test_more_runners_share_the_cores_as_streams(cores: int, runners: int, threads: int) -> None:
    _, recognizer = engine_options(Settings(engine="openvino", recognizer_runners=runners))
    assert (recognizer.streams, recognizer.intra_op_threads) == (runners, threads)


def test_explicit_threads_win(cores: int) -> None:
    settings = Settings(engine="openvino", recognizer_runners=2, intra_op_threads=3)
    _, recognizer = engine_options(settings)
    assert (recognizer.streams, recognizer.intra_op_threads) == (2, 3)


def test_a_recognizer_needs_a_runner() -> None:
    with pytest.raises(ValidationError, match="recognizer_runners"):
        Settings(recognizer_runners=0)


@pytest.mark.parametrize(
    ("choice", "devices", "detector", "recognizer"),
    [
        # auto: bf16 (where the CPU has it) for the recognizer only; docs/performance.md.
        ("auto", ["CPU"], "f32", "auto"),
        ("f32", ["CPU"], "f32", "f32"),
        ("bf16", ["CPU"], "bf16", "bf16"),
        ("auto", ["GPU"], "auto", "auto"),
    ],
)
def test_auto_precision_keeps_the_detector_in_f32_on_the_cpu(
    choice: str, devices: list[str], detector: str, recognizer: str
) -> None:
    settings = Settings(engine="openvino", openvino_precision=choice, openvino_devices=devices)  # type: ignore[arg-type]
    detector_options, recognizer_options = engine_options(settings)
    assert (detector_options.precision, recognizer_options.precision) == (detector, recognizer)
