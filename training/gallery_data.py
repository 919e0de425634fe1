"""Training data from the service's own gallery: enrolled faces -> vetted, split ``FaceSet``s.

Only what the gallery stores as enrolled faces (``Gallery.aligned_crops``: faces added
through ``POST /enroll`` or an import) is used, never faces the service merely saw.
The steps, all deterministic for a given gallery and seed:

1. read every face of a collection with its stored 112x112 crop and its stored
   embedding (the serving model's, so no model has to run here);
2. flag per-subject outliers (``find_outliers``): a face whose similarity to the
   centroid of its subject's OTHER faces is no higher than what strangers reach at
   ``outlier_far`` is reported and left out (a mislabelled or poisoned photo);
3. drop subjects left with fewer than ``min_faces`` faces, cap the rest at
   ``max_faces`` (a seeded sample, so one heavily enrolled subject cannot dominate);
4. split subjects three ways: training, selection (the epoch is chosen on these)
   and held-out (the promotion gate reports on these; training never sees them).

numpy only: no PyTorch (the promotion gate and the service import this too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np
from numpy.typing import NDArray

from app.core.gallery import EmbeddingBatch
from app.core.types import FaceRecord, FloatArray
from app.inference.align import ARCFACE_SIZE
from app.inference.image import decode_image
from training.faces import FaceSet, pose_of, split_identities

# Stored crops are PNGs the service wrote; the limits only have to admit them.
_CROP_MAX_BYTES = 1 << 22
_CROP_MAX_PIXELS = 1 << 20
# Face-to-stranger scores kept for the outlier threshold: beyond this many, rows are
# sampled (seeded). 2e7 float32 = 80 MB, and a quantile at 1e-3 over 2e7 scores is exact
# to well under a point of FAR.
_MAX_IMPOSTOR_SCORES = 20_000_000
EXPORT_BATCH = 1024


@dataclass(frozen=True, slots=True)
class GalleryFaces:
    """A collection's enrolled faces that kept their crop (rows aligned)."""

    crops: NDArray[np.uint8]  # (N, 112, 112, 3) RGB
    embeddings: FloatArray  # (N, dim) unit norm, the serving model's
    subjects: tuple[str, ...]
    face_ids: tuple[str, ...]
    image_sha256: tuple[str, ...]
    without_crop: int  # faces enrolled with crops off: they cannot be trained on

    def __len__(self) -> int:
        return len(self.subjects)


@dataclass(frozen=True, slots=True)
class Outlier:
    """A face left out because it does not look like the rest of its subject."""

    face_id: str
    subject: str
    similarity: float  # to the centroid of the subject's other faces
    threshold: float
    closest_subject: str | None  # the other subject whose centroid it matches best
    closest_similarity: float


@dataclass(frozen=True, slots=True)
class OutlierScan:
    rows: tuple[int, ...]  # flagged rows, ascending
    outliers: tuple[Outlier, ...]
    threshold: float
    impostor_scores: int


class EnrolledFaces(Protocol):
    """What reading a gallery's enrolled faces needs: the ``Gallery`` protocol's export
    side, which ``app.gallery.embedded.reader.GalleryReader`` also provides."""

    @property
    def dim(self) -> int: ...

    def export_embeddings(
        self, collection: str, *, batch_size: int
    ) -> Iterator[EmbeddingBatch]: ...

    def aligned_crops(
        self, collection: str | None = None
    ) -> Iterator[tuple[FaceRecord, bytes]]: ...

    def close(self) -> None: ...


def read_gallery_faces(gallery: EnrolledFaces, collection: str) -> GalleryFaces:
    """Every face of ``collection`` with its stored crop and embedding, in face order."""
    stored: dict[str, FloatArray] = {}
    for batch in gallery.export_embeddings(collection, batch_size=EXPORT_BATCH):
        stored.update(zip(batch.face_ids, batch.embeddings, strict=True))
    crops: list[NDArray[np.uint8]] = []
    embeddings: list[FloatArray] = []
    subjects: list[str] = []
    face_ids: list[str] = []
    hashes: list[str] = []
    for record, png in gallery.aligned_crops(collection):
        embedding = stored.get(record.face_id)
        if embedding is None:  # enrolled after the export pass: next run takes it
            continue
        pixels = decode_image(png, max_bytes=_CROP_MAX_BYTES, max_pixels=_CROP_MAX_PIXELS).pixels
        if pixels.shape[:2] != (ARCFACE_SIZE, ARCFACE_SIZE):
            raise ValueError(
                f"face {record.face_id}: stored crop is {pixels.shape[1]}x{pixels.shape[0]}, "
                f"not {ARCFACE_SIZE}x{ARCFACE_SIZE}"
            )
        crops.append(pixels)
        embeddings.append(embedding)
        subjects.append(record.subject)
        face_ids.append(record.face_id)
        hashes.append(record.image_sha256)
    dim = gallery.dim
    return GalleryFaces(
        crops=(
            np.stack(crops)
            if crops
            else np.zeros((0, ARCFACE_SIZE, ARCFACE_SIZE, 3), dtype=np.uint8)
        ),
        embeddings=(
            np.stack(embeddings).astype(np.float32)
            if embeddings
            else np.zeros((0, dim), dtype=np.float32)
        ),
        subjects=tuple(subjects),
        face_ids=tuple(face_ids),
        image_sha256=tuple(hashes),
        without_crop=len(stored) - len(face_ids),
    )


def _unit(vectors: NDArray[np.floating[Any]]) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def find_outliers(
    embeddings: FloatArray,
    subjects: Sequence[str],
    face_ids: Sequence[str],
    *,
    far: float,
    seed: int = 0,
) -> OutlierScan:
    """Faces no closer to their own subject than strangers are (see the module docstring).

    Own score: cosine of a face to the mean of its subject's other faces. Stranger
    scores: cosine of faces to the centroids of the subjects they are not filed under,
    each face's closest one left out (it is the true subject of a mislabelled face);
    the threshold is their ``1 - far`` quantile. A face of a subject with a single face
    cannot be judged and is never flagged (``min_faces`` drops such subjects anyway).
    """
    if not 0 < far < 1:
        raise ValueError(f"outlier FAR must be in (0, 1), got {far}")
    names = sorted(set(subjects))
    if len(names) < 3:
        raise ValueError("outlier rejection needs at least 3 subjects (strangers to compare)")
    index = {name: k for k, name in enumerate(names)}
    labels = np.array([index[s] for s in subjects], dtype=np.int64)
    vectors = _unit(np.asarray(embeddings, dtype=np.float32))
    sums = np.zeros((len(names), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, vectors)
    counts = np.bincount(labels, minlength=len(names))
    others = sums[labels] - vectors  # each face's subject without itself
    judged = counts[labels] >= 2
    own = np.full(len(labels), np.nan, dtype=np.float64)
    own[judged] = np.sum(vectors[judged] * _unit(others[judged]), axis=1)

    centroids = _unit(sums.astype(np.float32))
    strangers = vectors @ centroids.T  # (N, K)
    strangers[np.arange(len(labels)), labels] = -np.inf
    closest = np.argmax(strangers, axis=1)
    # The threshold leaves out each face's closest stranger: a mislabelled face's
    # "stranger" is its true subject, and one such score would set the threshold.
    trimmed = strangers.copy()
    trimmed[np.arange(len(labels)), closest] = -np.inf
    rows = np.arange(len(labels))
    per_row = max(len(names) - 2, 1)
    if len(rows) * per_row > _MAX_IMPOSTOR_SCORES:
        keep = _MAX_IMPOSTOR_SCORES // per_row
        rows = np.sort(np.random.default_rng(seed).choice(len(labels), keep, replace=False))
    sample = trimmed[rows]
    scores = sample[np.isfinite(sample)]
    if scores.size == 0:
        raise ValueError("outlier rejection needs at least 3 subjects (strangers to compare)")
    threshold = float(np.quantile(scores, 1.0 - far, method="higher"))

    flagged = np.flatnonzero(judged & (own < threshold))
    outliers = tuple(
        Outlier(
            face_id=face_ids[int(row)],
            subject=subjects[int(row)],
            similarity=float(own[row]),
            threshold=threshold,
            closest_subject=names[int(closest[row])],
            closest_similarity=float(strangers[row, closest[row]]),
        )
        for row in flagged
    )
    return OutlierScan(
        rows=tuple(int(r) for r in flagged),
        outliers=outliers,
        threshold=threshold,
        impostor_scores=int(scores.size),
    )


def select_rows(
    subjects: Sequence[str],
    excluded: Sequence[int],
    *,
    min_faces: int,
    max_faces: int | None,
    seed: int,
) -> tuple[list[int], dict[str, int]]:
    """Rows kept: without ``excluded``, subjects with at least ``min_faces``, at most
    ``max_faces`` each (a seeded sample kept in face order). Also returns how many
    subjects were dropped for too few faces and how many faces the cap left out."""
    left_out = set(excluded)
    by_subject: dict[str, list[int]] = {}
    for row, subject in enumerate(subjects):
        if row not in left_out:
            by_subject.setdefault(subject, []).append(row)
    kept: list[int] = []
    too_few = capped = 0
    rng = np.random.default_rng(seed)
    for subject in sorted(by_subject):
        rows = by_subject[subject]
        if len(rows) < min_faces:
            too_few += 1
            continue
        if max_faces is not None and len(rows) > max_faces:
            capped += len(rows) - max_faces
            rows = sorted(int(r) for r in rng.choice(rows, max_faces, replace=False))
        kept.extend(rows)
    return sorted(kept), {"subjects_too_few_faces": too_few, "faces_over_cap": capped}


def three_way_split(
    subjects: Sequence[str], *, held_out: float, selection: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Subjects -> (training, selection, held-out), disjoint; counts (>= 1) or fractions
    (held-out of all subjects, selection of those left)."""
    rest, held = split_identities(subjects, held_out, seed)
    train, chosen = split_identities(rest, selection, seed + 1)
    return train, chosen, held


def photo_poses(photos_dir: Path) -> dict[str, str]:
    """sha256 of every photo below ``photos_dir`` -> its pose folder (``frontal`` /
    ``profile``, the CFP layout), to label gallery faces for pose-aware reports."""
    poses: dict[str, str] = {}
    for path in sorted(photos_dir.rglob("*")):
        if not path.is_file():
            continue
        pose = pose_of(path.relative_to(photos_dir).as_posix())
        if pose is not None:
            poses[hashlib.sha256(path.read_bytes()).hexdigest()] = pose
    return poses


def face_set(faces: GalleryFaces, rows: Sequence[int], poses: Mapping[str, str]) -> FaceSet:
    """Rows of ``faces`` as a ``FaceSet``; relpaths are ``<subject>/[<pose>/]<face_id>``
    (the subject percent-encoded, so no name can fake a path component)."""
    picked = np.asarray(rows, dtype=np.int64)
    relpaths = []
    for row in picked:
        pose = poses.get(faces.image_sha256[row])
        middle = f"{pose}/" if pose else ""
        relpaths.append(f"{quote(faces.subjects[row], safe='')}/{middle}{faces.face_ids[row]}")
    return FaceSet(
        crops=faces.crops[picked],
        identities=tuple(faces.subjects[r] for r in picked),
        relpaths=tuple(relpaths),
    )


def outlier_report(scan: OutlierScan) -> list[dict[str, Any]]:
    return [
        {
            "face_id": o.face_id,
            "subject": o.subject,
            "similarity_to_own_subject": round(o.similarity, 4),
            "threshold": round(o.threshold, 4),
            "closest_other_subject": o.closest_subject,
            "similarity_to_closest_other": round(o.closest_similarity, 4),
        }
        for o in scan.outliers
    ]
