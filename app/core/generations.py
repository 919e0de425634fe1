"""Gallery generations: one gallery per recognizer, and which one serves.

A model swap re-embeds every stored aligned crop with the new recognizer into a
new *generation* (a gallery bound to that model) while the active one keeps
serving, then makes it active in one atomic step (``app.core.swap``). These are
the seams it needs; ``app.gallery.embedded.generations`` and the embedded gallery
implement them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from app.core.thresholds import CollectionSettings
from app.core.types import FaceRecord, NewFace


@dataclass(frozen=True, slots=True)
class Activation:
    """One time a generation was made the active one."""

    at: datetime
    by: str | None  # the admin key id; None with API keys off or at first start


@dataclass(frozen=True, slots=True)
class Generation:
    """A gallery bound to one recognizer, and where that recognizer came from."""

    number: int
    model_id: str
    dim: int
    manifest_path: str  # the recognizer manifest, as given when it was activated
    manifest_sha256: str  # of the manifest file's bytes
    created_at: datetime
    created_by: str | None
    activations: tuple[Activation, ...] = ()


@dataclass(frozen=True, slots=True)
class ActivePointer:
    """What ``ACTIVE`` says: the generation serving, the one before it, when and by whom."""

    generation: int
    previous: int | None
    activated_at: datetime
    activated_by: str | None


def retirable(pointer: ActivePointer | None, generations: Sequence[Generation]) -> list[int]:
    """Generations >= 1 neither active nor previous: their embeddings can go."""
    if pointer is None:
        return []
    keep = {0, pointer.generation, pointer.previous}
    return [g.number for g in generations if g.number not in keep]


class GenerationStore(Protocol):
    """The generations of one gallery, and the pointer to the active one."""

    def active(self) -> ActivePointer | None:
        """The pointer, or None for a gallery never swapped (generation 0 serves)."""
        ...

    def get(self, number: int) -> Generation: ...

    def generations(self) -> list[Generation]: ...

    def create(
        self,
        *,
        model_id: str,
        dim: int,
        manifest_path: str,
        manifest_sha256: str,
        created_by: str | None,
    ) -> Generation:
        """A new, empty, inactive generation numbered after every existing one."""
        ...

    def activate(self, number: int, *, by: str | None) -> ActivePointer:
        """Make ``number`` the active generation (atomic: all or nothing on a crash)."""
        ...

    def discard(self, number: int) -> None:
        """Remove a generation that is neither active nor the previous one."""
        ...


class Replica(Protocol):
    """What a swap needs of a gallery beyond ``Gallery``: copying faces between
    generations with their identity (face ids, dates) kept, and a write barrier."""

    @property
    def model_id(self) -> str: ...

    def face_ids(self) -> set[str]:
        """Every face id held, over all collections (cheap: ids only)."""
        ...

    def faces_without_crop(self) -> int:
        """Faces stored without an aligned crop (they cannot be re-embedded)."""
        ...

    def crops_of(self, face_ids: Sequence[str]) -> list[tuple[FaceRecord, bytes]]:
        """The records and stored aligned crops (PNG) of those of ``face_ids`` still held
        with a crop, in storage order."""
        ...

    def copy_faces(self, faces: Sequence[tuple[FaceRecord, NewFace]]) -> int:
        """Insert faces under their own face id, collection, subject and creation time;
        faces already held are left alone. Returns how many were added."""
        ...

    def remove_faces(self, face_ids: Sequence[str]) -> int:
        """Delete those faces (subjects left empty go too); returns how many went."""
        ...

    def all_collection_settings(self) -> dict[str, CollectionSettings]: ...

    def put_collection_settings(self, settings: dict[str, CollectionSettings]) -> None:
        """Replace every stored collection setting with ``settings``."""
        ...

    def hold_writes(self) -> AbstractContextManager[None]:
        """Block the public writes (enroll, delete, settings) while inside; reads go on."""
        ...

    def set_sealed(self, sealed: bool) -> None:
        """Sealed: public writes raise ``GenerationRetired`` (another generation serves)."""
        ...
