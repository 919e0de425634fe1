"""Export a collection's embeddings to a file, and import such a file into a gallery.

Both go through the ``Gallery`` protocol only, so they work on every backend. An
import is checked in full before its first row is written (model, dim, subject
names, unit norms), then written in batches with ``add_faces_bulk``; each row gets
a deterministic ``image_sha256`` from its subject and vector, so re-running an
import, or running it again after an interruption, adds nothing twice.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.api.deps import validate_subject
from app.bulk.npz import EmbeddingFileReader, EmbeddingFileWriter
from app.core.gallery import Gallery
from app.core.types import FloatArray, NewFace
from app.errors import GalleryModelMismatch, InvalidRequest
from app.gallery.values import UNIT_NORM_TOLERANCE

# Imported faces come from no photo: no box, no detector score.
NO_BOX = (0.0, 0.0, 0.0, 0.0)
NO_SCORE = 0.0
_KEY_PREFIX = b"facerec-import-v1\x00"

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class TransferSummary:
    faces: int  # rows read or written
    added: int  # rows that became new faces (imports)
    seconds: float

    @property
    def existing(self) -> int:
        return self.faces - self.added


def import_key(subject: str, embedding: FloatArray) -> str:
    """The ``image_sha256`` an imported row is stored under: the same row, the same key."""
    digest = hashlib.sha256(_KEY_PREFIX)
    digest.update(subject.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(np.ascontiguousarray(embedding, dtype="<f4").tobytes())
    return digest.hexdigest()


def export_collection(
    gallery: Gallery, collection: str, out: Path, *, batch_size: int, progress: bool
) -> TransferSummary:
    """Write every face of ``collection`` to ``out`` (replaced atomically)."""
    started = time.perf_counter()
    total = gallery.stats().get(collection, 0)
    if total == 0:
        raise InvalidRequest(f"collection {collection!r} holds no faces", collection=collection)
    with (
        EmbeddingFileWriter(out, model_id=gallery.model_id, dim=gallery.dim) as writer,
        tqdm(total=total, unit="face", disable=not progress, desc="export") as bar,
    ):
        for batch in gallery.export_embeddings(collection, batch_size=batch_size):
            writer.write(batch.subjects, batch.face_ids, batch.embeddings)
            bar.update(len(batch.subjects))
        writer.commit()
        count = writer.count
    return TransferSummary(faces=count, added=0, seconds=time.perf_counter() - started)


def import_embeddings(
    gallery: Gallery, collection: str, source: Path, *, batch_size: int, progress: bool
) -> TransferSummary:
    """Add every row of ``source`` to ``collection``; rows already there are left alone."""
    started = time.perf_counter()
    with EmbeddingFileReader(source) as reader:
        summary = reader.summary
        if summary.model_id != gallery.model_id or summary.dim != gallery.dim:
            raise GalleryModelMismatch(
                f"{source} holds embeddings of model {summary.model_id!r} (dim {summary.dim}); "
                f"this gallery is for {gallery.model_id!r} (dim {gallery.dim}). Embeddings of "
                "different models are not comparable: import into a gallery of that model "
                "(FACEREC_RECOGNIZER), or re-enroll the photos with this one",
                file_model_id=summary.model_id,
                file_dim=summary.dim,
                gallery_model_id=gallery.model_id,
                gallery_dim=gallery.dim,
            )
        with tqdm(
            total=2 * summary.count, unit="row", disable=not progress, desc="check, import"
        ) as bar:
            for first, (subjects, embeddings) in _numbered(reader, batch_size):
                _check_rows(source, first, subjects, embeddings)
                bar.update(len(subjects))
            added = 0
            for _, (subjects, embeddings) in _numbered(reader, batch_size):
                faces = [
                    (name, _imported_face(name, embedding))
                    for name, embedding in zip(_names(subjects), embeddings, strict=True)
                ]
                added += gallery.add_faces_bulk(collection, faces).added
                bar.update(len(subjects))
    return TransferSummary(faces=summary.count, added=added, seconds=time.perf_counter() - started)


def _numbered(
    reader: EmbeddingFileReader, batch_size: int
) -> Iterator[tuple[int, tuple[list[str], FloatArray]]]:
    """``(number of the batch's first row, batch)`` over the file."""
    first = 0
    for batch in reader.batches(batch_size):
        yield first, batch
        first += len(batch[0])


def _names(subjects: list[str]) -> list[str]:
    return [validate_subject(subject) for subject in subjects]


def _check_rows(source: Path, first: int, subjects: list[str], embeddings: FloatArray) -> None:
    for offset, subject in enumerate(subjects):
        try:
            validate_subject(subject)
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"{source}: row {first + offset} has subject {subject!r:.80}: {exc.message}",
                row=first + offset,
            ) from exc
    finite = np.isfinite(embeddings).all(axis=1)
    norms = np.linalg.norm(embeddings, axis=1)
    bad = np.flatnonzero(~finite | (np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE))
    if len(bad):
        row = int(bad[0])
        raise InvalidRequest(
            f"{source}: row {first + row} is not an L2-normalised embedding (norm "
            f"{norms[row]:.4f}); {len(bad)} such rows in rows {first}..{first + len(subjects) - 1}",
            row=first + row,
        )


def _imported_face(subject: str, embedding: FloatArray) -> NewFace:
    return NewFace(
        image_sha256=import_key(subject, embedding),
        bbox=NO_BOX,
        det_score=NO_SCORE,
        embedding=embedding,
    )
