"""The engine-session seam: what a model class may ask of any inference engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

EngineName = Literal["onnxruntime", "openvino"]
# What a graph computes in: "f32", or "bf16" (OpenVINO on a CPU with native bf16).
Precision = Literal["f32", "bf16"]
PrecisionChoice = Literal["auto", "f32", "bf16"]
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

    @property
    def precision(self) -> str:
        """What the graph computes in, as the engine reports it (``f32``, ``bf16``)."""
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
    OpenVINO CPU inference precision: ``f32`` keeps outputs equal to onnxruntime's;
    ``bf16`` runs 1.3-1.8x faster on CPUs with native bf16 (AVX512-BF16, AMX) and moves
    embeddings by cos ~1e-3, far inside the model's own noise (docs/performance.md
    "Precision"); ``auto`` is bf16 where the CPU has it natively, f32 elsewhere (the
    composition root gives the detector f32 instead of ``auto``: ``detector_precision``).
    onnxruntime computes in f32 whatever is asked.
    """

    engine: EngineName = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    devices: tuple[str, ...] = ("CPU",)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    streams: int = 1
    precision: PrecisionChoice = "f32"
