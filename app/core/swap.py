"""Filling one gallery generation from another while the source keeps serving.

``synchronise`` makes the target hold exactly the source's faces, each re-embedded
from its stored aligned crop by the target's recognizer, then switches:

1. Passes: the face ids of both are compared; faces the target lacks are copied
   (crops read, embedded, written under their own face id) in small batches, faces
   it holds that the source no longer does are removed. Enrollments and deletions
   made meanwhile are picked up by the next pass's comparison.
2. When a pass finds at most ``finish_below`` faces to copy, the source's writes are
   held (enroll and delete wait on its write lock; searches go on), the last
   differences and the collection settings are copied, ``switch`` publishes the
   target, and the source is sealed: a write that was waiting fails with
   ``GenerationRetired`` (retry) instead of landing in a gallery no longer served.

The same function rolls back (the target is then the previous generation, which
needs only what changed since the swap).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from app.core.generations import Replica
from app.core.types import FloatArray, reembedded

# Crops embedded per step: small enough that a step holds an inference slot for a
# fraction of a second, so /identify gets the CPU between steps.
BATCH_SIZE = 32
# A pass that leaves at most this many faces to copy is the last one before the
# write barrier: writes then wait about one batch.
FINISH_BELOW = BATCH_SIZE

# PNG crops -> (N, dim) unit embeddings by the target's recognizer.
EmbedCrops = Callable[[list[bytes]], FloatArray]


class SwapCancelled(Exception):
    """The service is stopping: the job ends and the target is left unactivated."""


@dataclass(frozen=True, slots=True)
class SwapProgress:
    """One swap job as ``/ready`` and ``/metrics`` show it."""

    action: str  # "activate" | "rollback"
    state: str  # "loading" | "copying" | "switching" | "done" | "failed" | "cancelled"
    target_generation: int | None
    target_model_id: str
    started_at: datetime
    requested_by: str | None
    faces_done: int = 0
    faces_total: int = 0
    faces_removed: int = 0
    faces_skipped: int = 0  # held without a crop: cannot be re-embedded
    finished_at: datetime | None = None
    error_code: str | None = None

    @property
    def running(self) -> bool:
        return self.state in ("loading", "copying", "switching")


@dataclass
class ProgressBoard:
    """The progress of the current (or last) job, shared between threads."""

    current: SwapProgress | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def show(self, progress: SwapProgress) -> None:
        with self._lock:
            self.current = progress

    def update(self, **changes: object) -> None:
        with self._lock:
            assert self.current is not None
            self.current = replace(self.current, **changes)  # type: ignore[arg-type]

    def snapshot(self) -> SwapProgress | None:
        with self._lock:
            return self.current


@dataclass(frozen=True, slots=True)
class SyncControls:
    """How the job yields and stops: ``pause`` between batches, ``stopping`` polled."""

    pause: Callable[[], object]
    stopping: Callable[[], bool]
    batch_size: int = BATCH_SIZE
    finish_below: int | None = None  # None: one batch (FINISH_BELOW at the default size)

    @property
    def last_pass_below(self) -> int:
        return self.batch_size if self.finish_below is None else self.finish_below


class _Copier:
    def __init__(
        self, source: Replica, target: Replica, embed: EmbedCrops, board: ProgressBoard
    ) -> None:
        self.source = source
        self.target = target
        self.embed = embed
        self.board = board
        self.done = 0
        self.removed = 0
        self.uncopyable: set[str] = set()

    def differences(self) -> tuple[list[str], list[str]]:
        """(face ids to copy, face ids to remove), and the progress they imply."""
        held = self.source.face_ids()
        copied = self.target.face_ids()
        self.uncopyable &= held
        missing = sorted(held - copied - self.uncopyable)
        extra = sorted(copied - held)
        self.board.update(
            faces_done=self.done,
            faces_total=self.done + len(missing),
            faces_skipped=len(self.uncopyable),
        )
        return missing, extra

    def remove(self, extra: Sequence[str]) -> None:
        if extra:
            self.removed += self.target.remove_faces(extra)
            self.board.update(faces_removed=self.removed)

    def copy(self, face_ids: Sequence[str]) -> None:
        found = self.source.crops_of(face_ids)
        returned = {record.face_id for record, _ in found}
        self.uncopyable |= set(face_ids) - returned  # deleted meanwhile, or no crop
        if found:
            embeddings = self.embed([png for _, png in found])
            faces = [
                (record, reembedded(record, embedding, png))
                for (record, png), embedding in zip(found, embeddings, strict=True)
            ]
            self.target.copy_faces(faces)
            self.done += len(found)
        self.board.update(faces_done=self.done)


def synchronise(
    source: Replica,
    target: Replica,
    embed: EmbedCrops,
    board: ProgressBoard,
    *,
    switch: Callable[[], None],
    controls: SyncControls,
) -> None:
    """Copy ``source`` into ``target`` (re-embedded), then ``switch`` under the barrier."""
    copier = _Copier(source, target, embed, board)
    board.update(state="copying")
    while True:
        missing, extra = copier.differences()
        copier.remove(extra)
        if len(missing) <= controls.last_pass_below:
            break
        for start in range(0, len(missing), controls.batch_size):
            if controls.stopping():
                raise SwapCancelled
            copier.copy(missing[start : start + controls.batch_size])
            controls.pause()
    board.update(state="switching")
    with source.hold_writes():
        missing, extra = copier.differences()
        copier.remove(extra)
        for start in range(0, len(missing), controls.batch_size):
            copier.copy(missing[start : start + controls.batch_size])
        target.put_collection_settings(source.all_collection_settings())
        target.set_sealed(False)
        switch()
        source.set_sealed(True)
    # Skipped faces that are gone by now are not worth reporting.
    copier.uncopyable &= source.face_ids()
    board.update(faces_skipped=len(copier.uncopyable))
