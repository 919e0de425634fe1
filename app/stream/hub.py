"""The per-process side of streaming: shared engine, stream caps, the detector's scale."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from app.core.types import Detection, ImageArray
from app.inference.manifest import DetectorInput
from app.inference.scrfd import ScrfdDetector, choose_input_size
from app.stream.metrics import StreamMetrics
from app.stream.session import StreamEngine
from app.stream.unknowns import UnknownStore


class SlotRefusal(Enum):
    FULL = "full"  # every stream of the process is taken
    KEY_FULL = "key_full"  # this key holds its share


class StreamSlots:
    """At most ``capacity`` streams at once, and ``per_key`` of them for one API key.

    The per-key share keeps one tenant from holding every slot (with auth off there
    is one caller, ``None``, and only the process cap applies).
    """

    def __init__(self, capacity: int, per_key: int | None = None) -> None:
        if capacity < 1 or (per_key is not None and per_key < 1):
            raise ValueError(f"capacity and per_key must be at least 1, got {capacity}, {per_key}")
        self.capacity = capacity
        self.per_key = per_key
        self._active = 0
        self._by_key: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    def try_acquire(self, key_id: str | None = None) -> SlotRefusal | None:
        """None when a slot was taken (``release`` it later), else why not."""
        with self._lock:
            if (
                key_id is not None
                and self.per_key is not None
                and self._by_key[key_id] >= self.per_key
            ):
                return SlotRefusal.KEY_FULL
            if self._active >= self.capacity:
                return SlotRefusal.FULL
            self._active += 1
            if key_id is not None:
                self._by_key[key_id] += 1
            return None

    def release(self, key_id: str | None = None) -> None:
        with self._lock:
            if self._active == 0 or (key_id is not None and self._by_key[key_id] == 0):
                raise RuntimeError("release() without a matching try_acquire()")
            self._active -= 1
            if key_id is not None:
                self._by_key[key_id] -= 1
                if not self._by_key[key_id]:
                    del self._by_key[key_id]


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    idle_s: float  # no frame this long: the stream is closed
    key_check_s: float  # the key is re-checked at least this often (revocation, scope)
    send_s: float  # an answer not taken by the client this long: the stream is closed


@dataclass(frozen=True, slots=True)
class StreamHub:
    """Everything ``/stream`` needs besides the runtime's inference limiter and guard."""

    engine: StreamEngine
    slots: StreamSlots
    max_frame_bytes: int
    timeouts: StreamTimeouts
    unknowns: UnknownStore
    metrics: StreamMetrics


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
