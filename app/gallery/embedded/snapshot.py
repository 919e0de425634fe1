"""Index snapshots on disk: written atomically, verified before anything is trusted.

A snapshot saves the start-up cost of a big gallery (re-reading every embedding
from SQLite and rebuilding HNSW graphs). It lives in ``<data dir>/index/``:

* ``manifest.json``: format version, a random token, model id, dim, metric, the
  database's change marks (last face row id, last deletion log entry) when it was
  taken, and per collection its structure, counts, files, sizes and sha256.
* per collection, ``<token>-<n>.faiss`` (the FAISS index, vectors included) and
  ``<token>-<n>.npz`` (position -> row id, live flag, subject, face id).

Files are owner-only (they hold embeddings). A new snapshot's files get new names,
the manifest is replaced by an atomic rename, and only then are the old files
removed, so a crash at any point leaves the previous snapshot or the new one, never a
mix. Reading checks every file's size before parsing it and its sha256 while parsing
it (one pass over the bytes: at a million faces a second pass costs seconds), and
uses nothing parsed unless the digest matches; then the manifest's facts are checked
against what was parsed. Any doubt is a ``SnapshotRejected`` and the caller rebuilds
from SQLite. Whether the snapshot belongs
to this database at all is the caller's question (``recovery``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from zipfile import BadZipFile

import faiss
import numpy as np

from app.gallery.embedded.index import CollectionIndex, IndexState
from app.gallery.embedded.repository import ChangeMarks
from app.gallery.embedded.vectors import IndexPolicy
from app.storage.sqlite import OWNER_ONLY, format_timestamp, utc_now

# faiss's bundled type stubs lack the Python IO callbacks.
_faiss: Any = faiss

SNAPSHOT_DIRNAME = "index"
MANIFEST_NAME = "manifest.json"
# Bump when the files' layout changes; older snapshots are then rebuilt, not read.
FORMAT_VERSION = 1
METRIC = "inner_product"
_CHUNK = 8 << 20
# A manifest is a few hundred bytes per collection; anything huge is not one.
_MAX_MANIFEST_BYTES = 64 << 20
# The maps of a collection take ~50 bytes per face plus its subject names.
_MAX_MAPS_BYTES = 4 << 30


class SnapshotRejected(Exception):
    """The snapshot cannot be trusted; ``str(exc)`` says why (for the log)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    token: str
    marks: ChangeMarks
    model_id: str
    dim: int
    collections: list[dict[str, Any]]


# --- writing ----------------------------------------------------------------------------


def write_snapshot(
    directory: Path,
    indexes: Mapping[str, CollectionIndex],
    *,
    token: str,
    marks: ChangeMarks,
    model_id: str,
    dim: int,
) -> None:
    """Write every index and then the manifest; remove the previous snapshot's files.

    The caller guarantees no index changes meanwhile (searches may go on).
    """
    directory.mkdir(mode=0o700, exist_ok=True)
    entries: list[dict[str, Any]] = []
    written: list[Path] = []
    try:
        for number, (collection, index) in enumerate(sorted(indexes.items())):
            state = index.state()
            stem = f"{token}-{number}"
            index_file = directory / f"{stem}.faiss"
            maps_file = directory / f"{stem}.npz"
            written += [index_file, maps_file]
            entries.append(
                {
                    "name": collection,
                    "kind": index.kind.value,
                    "positions": index.position_count,
                    "live_faces": index.face_count,
                    "subjects": index.subject_count,
                    "index": _write_file(index_file, lambda out, s=state: _write_faiss(out, s)),
                    "maps": _write_file(maps_file, lambda out, s=state: _write_maps(out, s)),
                }
            )
        manifest = {
            "format": FORMAT_VERSION,
            "token": token,
            "model_id": model_id,
            "dim": dim,
            "metric": METRIC,
            "last_row_id": marks.last_row_id,
            "last_deletion_seq": marks.last_deletion_seq,
            "written_at": format_timestamp(utc_now()),
            "collections": entries,
        }
        partial = directory / f"{MANIFEST_NAME}.{token}.partial"
        written.append(partial)
        _write_file(partial, lambda out: out.write(json.dumps(manifest, indent=1).encode()))
        partial.replace(directory / MANIFEST_NAME)
        _fsync_directory(directory)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    keep = {MANIFEST_NAME, *(path.name for path in written)}
    for path in directory.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def remove_snapshot(directory: Path) -> None:
    """Delete the snapshot: the manifest first, so a crash midway leaves none."""
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    _fsync_directory(directory)
    for path in directory.iterdir():
        path.unlink(missing_ok=True)


class _HashingFile:
    """Writes to a file while counting and hashing what went through."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self._out.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def _write_file(path: Path, produce: Any) -> dict[str, Any]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY)
    with os.fdopen(fd, "wb") as raw:
        out = _HashingFile(raw)
        produce(out)
        raw.flush()
        os.fsync(raw.fileno())
    return {"file": path.name, "bytes": out.size, "sha256": out.digest.hexdigest()}


def _write_faiss(out: _HashingFile, state: IndexState) -> None:
    faiss.write_index(state.faiss_index, _faiss.PyCallbackIOWriter(out.write, _CHUNK))


def _write_maps(out: _HashingFile, state: IndexState) -> None:
    names = [name.encode("utf-8") for name in state.subject_names]
    offsets = np.cumsum([0, *(len(name) for name in names)], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        row_ids=state.row_ids,
        live=state.live,
        subject_codes=state.subject_codes,
        face_ids=state.face_ids,
        subject_names=np.frombuffer(b"".join(names), dtype=np.uint8),
        subject_offsets=offsets,
    )
    out.write(buffer.getbuffer())


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ----------------------------------------------------------------------------


def read_manifest(directory: Path, *, model_id: str, dim: int) -> Manifest | None:
    """The manifest, None when there is no snapshot; ``SnapshotRejected`` when unusable."""
    path = directory / MANIFEST_NAME
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotRejected(f"cannot read {path}: {exc}") from exc
    try:
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise ValueError("the file is too large to be a manifest")
        data = json.loads(raw)
        manifest = Manifest(
            token=_text(data["token"]),
            marks=ChangeMarks(
                last_row_id=_count(data["last_row_id"]),
                last_deletion_seq=_count(data["last_deletion_seq"]),
            ),
            model_id=_text(data["model_id"]),
            dim=_count(data["dim"]),
            collections=list(data["collections"]),
        )
        version, metric = data["format"], data["metric"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotRejected(f"{path} is not a valid manifest: {exc}") from exc
    if version != FORMAT_VERSION:
        raise SnapshotRejected(f"snapshot format {version!r}; this build reads {FORMAT_VERSION}")
    if metric != METRIC or manifest.model_id != model_id or manifest.dim != dim:
        raise SnapshotRejected(
            f"snapshot of model {manifest.model_id!r} (dim {manifest.dim}, {metric}); "
            f"the gallery is {model_id!r} (dim {dim}, {METRIC})"
        )
    return manifest


def read_indexes(
    directory: Path, manifest: Manifest, *, policy: IndexPolicy
) -> dict[str, CollectionIndex]:
    """Every collection's index, each file verified before it is parsed."""
    indexes: dict[str, CollectionIndex] = {}
    for entry in manifest.collections:
        try:
            name = _text(entry["name"])
            maps = _read_verified(directory, entry["maps"], _parse_maps)
            faiss_index = _read_verified(directory, entry["index"], _parse_faiss)
            state = _state(faiss_index, maps)
            index = CollectionIndex.from_state(state, dim=manifest.dim, policy=policy)
            facts = {
                "kind": index.kind.value,
                "positions": index.position_count,
                "live_faces": index.face_count,
                "subjects": index.subject_count,
            }
            expected = {key: entry[key] for key in facts}
        except (KeyError, TypeError, ValueError, RuntimeError, OSError, BadZipFile) as exc:
            # RuntimeError: FAISS refusing a file that passed the checksum (a bug, or a
            # snapshot written by an incompatible FAISS build).
            raise SnapshotRejected(f"collection entry {entry!r:.200}: {exc}") from exc
        if facts != expected:
            raise SnapshotRejected(f"collection {name!r}: manifest says {expected}, files {facts}")
        if name in indexes:
            raise SnapshotRejected(f"collection {name!r} appears twice in the manifest")
        indexes[name] = index
    return indexes


def _checked_path(directory: Path, entry: dict[str, Any]) -> tuple[Path, str]:
    """The file ``entry`` names, with its size checked, and its expected sha256."""
    file_name = _text(entry["file"])
    if Path(file_name).name != file_name or file_name.startswith("."):
        raise ValueError(f"file name {file_name!r} is not a plain name")
    path = directory / file_name
    expected_size = _count(entry["bytes"])
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SnapshotRejected(f"cannot read {path}: {exc}") from exc
    if size != expected_size:
        raise SnapshotRejected(f"{path} has {size} bytes, the manifest says {expected_size}")
    return path, _text(entry["sha256"])


class _HashingReader:
    """Reads a file for a parser while hashing every byte that goes through."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        return data

    def finish(self) -> str:
        """Hash the rest (a parser may stop early) and return the hex digest."""
        while self.read(_CHUNK):
            pass
        return self.digest.hexdigest()


def _read_verified(directory: Path, entry: dict[str, Any], parse: Any) -> Any:
    """``parse(reader)`` of the file ``entry`` names, in one pass: the result is returned
    only if the bytes parsed are the bytes the manifest's sha256 describes."""
    path, expected_sha256 = _checked_path(directory, entry)
    try:
        with path.open("rb") as handle:
            reader = _HashingReader(handle)
            parsed = parse(reader)
            digest = reader.finish()
    except OSError as exc:
        raise SnapshotRejected(f"cannot read {path}: {exc}") from exc
    except (ValueError, RuntimeError, BadZipFile) as exc:
        # Damage that the parser noticed before the checksum could.
        raise SnapshotRejected(f"{path} does not parse ({exc}); damaged") from exc
    if digest != expected_sha256:
        raise SnapshotRejected(f"{path} does not match its sha256 (damaged or changed)")
    return parsed


def _parse_faiss(reader: _HashingReader) -> faiss.Index:
    return faiss.read_index(_faiss.PyCallbackIOReader(reader.read, _CHUNK))


def _parse_maps(reader: _HashingReader) -> dict[str, np.ndarray[Any, Any]]:
    # Small (tens of MB at a million faces): read whole, then parsed from memory.
    data = io.BytesIO(reader.read(_MAX_MAPS_BYTES))
    with np.load(data, allow_pickle=False) as maps:
        return {key: maps[key] for key in maps.files}


def _state(faiss_index: faiss.Index, maps: dict[str, np.ndarray[Any, Any]]) -> IndexState:
    offsets = maps["subject_offsets"]
    blob = maps["subject_names"].tobytes()
    if (
        len(offsets) < 1
        or offsets[0] != 0
        or offsets[-1] != len(blob)
        or np.any(np.diff(offsets) < 0)
    ):
        raise ValueError("subject name offsets do not cover the names")
    names = [
        blob[start:stop].decode("utf-8")
        for start, stop in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]
    return IndexState(
        faiss_index=faiss_index,
        row_ids=maps["row_ids"],
        live=maps["live"],
        subject_codes=maps["subject_codes"],
        face_ids=maps["face_ids"],
        subject_names=names,
    )


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r:.80}")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r:.80}")
    return value
