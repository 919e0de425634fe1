"""The engine-session seam: what a model class may ask of any inference engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

EngineName = Literal["onnxruntime", "openvino"]
Tensor = NDArray[np.float32]


class EngineSession(Protocol):
    """One loaded model on one engine. ``run`` is safe to call from several threads."""

    @property
    def engine(self) -> EngineName: ...

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    @property
    def devices(self) -> tuple[str, ...]:
        """What actually runs the graph: onnxruntime providers or OpenVINO devices."""
        ...

    def run(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        """Outputs in the graph's output order."""
        ...


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How sessions are built; the composition root fills it from Settings.

    ``providers`` (onnxruntime, priority order) and ``devices`` (OpenVINO) are all
    required: a session that cannot use every one of them is refused, never run
    on fewer. ``intra_op_threads`` is the thread budget of one session; ``streams``
    how many calls one session runs at once (OpenVINO splits the threads among
    them; onnxruntime shares one pool among concurrent calls). ``precision`` is the
    OpenVINO CPU inference precision: ``f32`` keeps outputs equal to
    onnxruntime's, ``bf16`` is faster on CPUs with AVX512-BF16/AMX and changes
    embeddings (cos ~0.9995), so it is a different embedding space.
    """

    engine: EngineName = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    devices: tuple[str, ...] = ("CPU",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    streams: int = 1
    precision: Literal["f32", "bf16"] = "f32"
