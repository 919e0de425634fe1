"""The per-process side of streaming: shared engine, the stream cap, the detector's scale."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from app.core.types import Detection, ImageArray
from app.inference.manifest import DetectorInput
from app.inference.scrfd import ScrfdDetector, choose_input_size
from app.stream.session import StreamEngine


class StreamSlots:
    """At most ``capacity`` streams at once; a refused stream is told to retry later."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    def try_acquire(self) -> bool:
        with self._lock:
            if self._active >= self.capacity:
                return False
            self._active += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._active == 0:
                raise RuntimeError("release() without a matching try_acquire()")
            self._active -= 1


@dataclass(frozen=True, slots=True)
class StreamHub:
    """Everything ``/stream`` needs besides the runtime's inference limiter."""

    engine: StreamEngine
    slots: StreamSlots
    max_frame_bytes: int


def scaled_detector(
    detector: ScrfdDetector, long_side: int
) -> Callable[[ImageArray], list[Detection]]:
    """``detector.detect`` at a network input whose long side is at most ``long_side``.

    Live frames are mostly webcam-sized (640x480) with near, large faces: a
    320-pixel input finds them at about a third of the cost of the photo policy
    (see bench/README.md, stream.py). ``long_side=0`` keeps the manifest's policy,
    close-up retry included.
    """
    if long_side == 0:
        return detector.detect
    spec = detector.manifest.input
    if not isinstance(spec, DetectorInput):
        raise TypeError(f"{detector.manifest.name} has no detector input")
    stream_spec = spec.model_copy(
        update={"size_policy": "adaptive", "max_side": long_side, "min_side": 0}
    )

    @lru_cache(maxsize=8)
    def input_size(width: int, height: int) -> tuple[int, int]:
        return choose_input_size(width, height, stream_spec)

    def detect(image: ImageArray) -> list[Detection]:
        height, width = image.shape[:2]
        return detector.detect(image, input_size(int(width), int(height)))

    return detect
