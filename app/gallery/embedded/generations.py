"""Gallery generations of the embedded backend: one folder each, an atomic ACTIVE pointer.

Layout under the data directory::

    gallery.sqlite3, index/ ...        generation 0: the gallery as it was before any swap
    generations/<n>/                   generation n >= 1: a gallery of its own (SQLite + index)
    generations/<n>/generation.json    every generation's record (0 included, once swapped)
    generations/ACTIVE                 {"generation", "previous", "activated_at", "activated_by"}

Every file is written to a temporary name, fsynced, renamed over the old one and
the directory fsynced: a crash at any point leaves either the old file or the new
one, never a mix. ``ACTIVE`` is written last, so a crash before it leaves the old
generation active, and a generation never activated is only a folder that the next
start removes (``discard_unfinished``). Without ``ACTIVE`` (a gallery never swapped)
generation 0 serves, with the configured recognizer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from app.core.generations import Activation, ActivePointer, Generation, retirable
from app.errors import GalleryUnavailable, InvalidRequest
from app.storage.sqlite import format_timestamp, parse_timestamp, utc_now

__all__ = ["GENERATIONS_DIRNAME", "EmbeddedGenerations"]

logger = logging.getLogger(__name__)

GENERATIONS_DIRNAME = "generations"
ACTIVE_FILENAME = "ACTIVE"
RECORD_FILENAME = "generation.json"


class EmbeddedGenerations:
    """The generations of the embedded gallery in ``data_dir`` (one process owns it)."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._root = data_dir / GENERATIONS_DIRNAME

    def gallery_dir(self, number: int) -> Path:
        """Where generation ``number``'s gallery lives (0: the data directory itself)."""
        return self._data_dir if number == 0 else self._root / str(number)

    def active_number(self) -> int:
        pointer = self.active()
        return 0 if pointer is None else pointer.generation

    def active(self) -> ActivePointer | None:
        raw = _read_json(self._root / ACTIVE_FILENAME)
        if raw is None:
            return None
        try:
            return ActivePointer(
                generation=int(raw["generation"]),
                previous=None if raw.get("previous") is None else int(raw["previous"]),
                activated_at=parse_timestamp(str(raw["activated_at"])),
                activated_by=raw.get("activated_by"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GalleryUnavailable(
                f"{self._root / ACTIVE_FILENAME} is damaged ({exc}); it names the generation "
                "that serves: restore it from a backup or write it by hand",
                path=str(self._root / ACTIVE_FILENAME),
            ) from exc

    def has(self, number: int) -> bool:
        return (self._record_path(number)).is_file()

    def get(self, number: int) -> Generation:
        raw = _read_json(self._record_path(number))
        if raw is None:
            raise InvalidRequest(f"no gallery generation {number}", generation=number)
        return _generation_from_json(raw)

    def generations(self) -> list[Generation]:
        if not self._root.is_dir():
            return []
        numbers = sorted(int(p.name) for p in self._root.iterdir() if p.name.isdigit())
        return [self.get(number) for number in numbers if self.has(number)]

    def record_origin(
        self, *, model_id: str, dim: int, manifest_path: str, manifest_sha256: str
    ) -> Generation:
        """Generation 0's record (the gallery as it was before the first swap), written
        once; what it says about the recognizer comes from the one serving it now."""
        if self.has(0):
            return self.get(0)
        generation = Generation(
            number=0,
            model_id=model_id,
            dim=dim,
            manifest_path=manifest_path,
            manifest_sha256=manifest_sha256,
            created_at=utc_now(),
            created_by=None,
        )
        self._write_record(generation)
        return generation

    def create(
        self,
        *,
        model_id: str,
        dim: int,
        manifest_path: str,
        manifest_sha256: str,
        created_by: str | None,
    ) -> Generation:
        self._root.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name) for p in self._root.iterdir() if p.name.isdigit()]
        number = max(taken, default=0) + 1
        self.gallery_dir(number).mkdir()
        generation = Generation(
            number=number,
            model_id=model_id,
            dim=dim,
            manifest_path=manifest_path,
            manifest_sha256=manifest_sha256,
            created_at=utc_now(),
            created_by=created_by,
        )
        self._write_record(generation)
        return generation

    def activate(self, number: int, *, by: str | None) -> ActivePointer:
        """Point ``ACTIVE`` at ``number`` (previous: the one active until now), then note
        the activation in the generation's record. ``ACTIVE`` is the truth: a crash
        between the two leaves a record one activation short, mended by ``reconcile``."""
        generation = self.get(number)
        current = self.active_number()
        pointer = ActivePointer(
            generation=number,
            previous=None if current == number else current,
            activated_at=utc_now(),
            activated_by=by,
        )
        _write_atomically(
            self._root / ACTIVE_FILENAME,
            {
                "generation": pointer.generation,
                "previous": pointer.previous,
                "activated_at": format_timestamp(pointer.activated_at),
                "activated_by": pointer.activated_by,
            },
        )
        self._note_activation(generation, Activation(at=pointer.activated_at, by=by))
        return pointer

    def reconcile(self) -> None:
        """At start-up: note an activation ``ACTIVE`` holds but the record missed."""
        pointer = self.active()
        if pointer is None or not self.has(pointer.generation):
            return
        generation = self.get(pointer.generation)
        if all(a.at != pointer.activated_at for a in generation.activations):
            self._note_activation(
                generation, Activation(pointer.activated_at, pointer.activated_by)
            )

    def discard(self, number: int) -> None:
        pointer = self.active()
        keep = {0} if pointer is None else {0, pointer.generation, pointer.previous}
        if number in keep:
            raise InvalidRequest(f"generation {number} is active or the previous one; kept")
        shutil.rmtree(self.gallery_dir(number), ignore_errors=True)

    def discard_unfinished(self) -> list[int]:
        """Remove generations never activated (a swap that did not finish); at start-up."""
        gone = []
        for generation in self.generations():
            pointer = self.active()
            kept = pointer is not None and generation.number in (
                pointer.generation,
                pointer.previous,
            )
            if generation.number and not generation.activations and not kept:
                self.discard(generation.number)
                gone.append(generation.number)
        if self._root.is_dir():
            for leftover in self._root.iterdir():  # a crash between mkdir and the record
                if leftover.name.isdigit() and not self.has(int(leftover.name)):
                    shutil.rmtree(leftover, ignore_errors=True)
        if gone:
            logger.warning("removed gallery generations %s: their swap did not finish", gone)
        return gone

    def retire_older(self) -> list[int]:
        """Remove generations >= 1 that are neither active nor previous (disk space)."""
        gone = retirable(self.active(), self.generations())
        for number in gone:
            shutil.rmtree(self.gallery_dir(number), ignore_errors=True)
        return gone

    # --- internals ----------------------------------------------------------------------

    def _record_path(self, number: int) -> Path:
        return self._root / str(number) / RECORD_FILENAME

    def _note_activation(self, generation: Generation, activation: Activation) -> None:
        from dataclasses import replace

        self._write_record(replace(generation, activations=(*generation.activations, activation)))

    def _write_record(self, generation: Generation) -> None:
        path = self._record_path(generation.number)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, _generation_to_json(generation))


def _generation_to_json(generation: Generation) -> dict[str, Any]:
    return {
        "number": generation.number,
        "model_id": generation.model_id,
        "dim": generation.dim,
        "manifest_path": generation.manifest_path,
        "manifest_sha256": generation.manifest_sha256,
        "created_at": format_timestamp(generation.created_at),
        "created_by": generation.created_by,
        "activations": [{"at": format_timestamp(a.at), "by": a.by} for a in generation.activations],
    }


def _generation_from_json(raw: dict[str, Any]) -> Generation:
    return Generation(
        number=int(raw["number"]),
        model_id=str(raw["model_id"]),
        dim=int(raw["dim"]),
        manifest_path=str(raw["manifest_path"]),
        manifest_sha256=str(raw["manifest_sha256"]),
        created_at=parse_timestamp(str(raw["created_at"])),
        created_by=raw.get("created_by"),
        activations=tuple(
            Activation(at=parse_timestamp(str(a["at"])), by=a.get("by"))
            for a in raw.get("activations", [])
        ),
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GalleryUnavailable(f"{path} is not valid JSON: {exc}", path=str(path)) from exc
    if not isinstance(raw, dict):
        raise GalleryUnavailable(f"{path} is not a JSON object", path=str(path))
    return raw


def _write_atomically(path: Path, content: dict[str, Any]) -> None:
    """Temp file, fsync, rename over ``path``, fsync the directory."""
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
