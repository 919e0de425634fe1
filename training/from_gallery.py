"""``finetune --gallery`` / ``evaluate --gallery``: open a service gallery, vet and split it.

The gallery is opened through ``app.gallery.open_gallery`` only (either backend), bound
to the base model's id and dim: a gallery of another recognizer is refused with
``GalleryModelMismatch``. An embedded gallery is read through ``GalleryReader`` (read
only, one snapshot, beside the service that holds it: no need to stop it); a PostgreSQL
one through ``open_gallery``, which many readers share.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.gallery import open_gallery
from app.gallery.embedded.generations import EmbeddedGenerations
from app.gallery.embedded.reader import GalleryReader
from training.config import FinetuneConfig
from training.faces import FaceSet
from training.gallery_data import (
    EnrolledFaces,
    GalleryFaces,
    face_set,
    find_outliers,
    outlier_report,
    photo_poses,
    read_gallery_faces,
    select_rows,
    three_way_split,
)

logger = logging.getLogger(__name__)

OUTLIERS_FILE = "outliers.json"
_DATABASE_SCHEMES = ("postgres://", "postgresql://")


def is_database_url(source: str) -> bool:
    return source.startswith(_DATABASE_SCHEMES)


def redact(source: str) -> str:
    """A gallery location safe to write down: a database URL without its password."""
    if not is_database_url(source):
        return source
    parts = urlsplit(source)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def open_source_gallery(source: str, *, model_id: str, dim: int) -> EnrolledFaces:
    """A data folder (read only, while the service may run) or a ``postgresql://`` URL,
    opened for the recognizer ``model_id``."""
    if is_database_url(source):
        return open_gallery(data_dir=Path("."), model_id=model_id, dim=dim, database_url=source)
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"no gallery folder at {folder}")
    # After a model swap the faces live in the active generation (docs/training.md).
    generations = EmbeddedGenerations(folder)
    return GalleryReader(
        generations.gallery_dir(generations.active_number()), model_id=model_id, dim=dim
    )


def read_collection(source: str, collection: str, *, model_id: str, dim: int) -> GalleryFaces:
    with closing(open_source_gallery(source, model_id=model_id, dim=dim)) as gallery:
        faces = read_gallery_faces(gallery, collection)
    logger.info(
        "gallery %s, collection %r: %d faces with crops of %d subjects (%d without a crop)",
        redact(source),
        collection,
        len(faces),
        len(set(faces.subjects)),
        faces.without_crop,
    )
    if len(faces) == 0:
        raise ValueError(f"collection {collection!r} holds no faces with a stored crop")
    return faces


@dataclass(frozen=True, slots=True)
class GallerySplit:
    train: FaceSet
    selection: FaceSet  # the epoch is chosen on these subjects
    held_out: FaceSet  # the promotion gate reports on these
    document: dict[str, Any]  # split.json
    outliers: list[dict[str, Any]]
    summary: dict[str, Any]  # the data summary for the manifest


def split_gallery(faces: GalleryFaces, config: FinetuneConfig, source: str) -> GallerySplit:
    """Outliers out, too-small subjects out, cap, then the three-way subject split."""
    policy = config.gallery
    seed = config.data.split_seed
    scan = find_outliers(
        faces.embeddings, faces.subjects, faces.face_ids, far=policy.outlier_far, seed=seed
    )
    for outlier in scan.outliers:
        logger.warning(
            "outlier left out: face %s of %r, similarity %.3f to its own subject "
            "(threshold %.3f); closest other subject %r at %.3f",
            outlier.face_id,
            outlier.subject,
            outlier.similarity,
            outlier.threshold,
            outlier.closest_subject,
            outlier.closest_similarity,
        )
    rows, dropped = select_rows(
        faces.subjects,
        scan.rows,
        min_faces=policy.min_faces,
        max_faces=policy.max_faces,
        seed=seed,
    )
    kept_subjects = sorted({faces.subjects[r] for r in rows})
    train_ids, selection_ids, held_ids = three_way_split(
        kept_subjects, held_out=policy.held_out, selection=config.data.val_identities, seed=seed
    )
    poses = photo_poses(policy.photos_dir) if policy.photos_dir is not None else {}
    by_subject: dict[str, list[int]] = {}
    for row in rows:
        by_subject.setdefault(faces.subjects[row], []).append(row)

    def rows_of(names: list[str]) -> list[int]:
        return sorted(r for name in names for r in by_subject[name])

    held_rows = rows_of(held_ids)
    document = {
        "source": redact(source),
        "collection": policy.collection,
        "seed": seed,
        "train": train_ids,
        "val": selection_ids,
        "held_out": held_ids,
        "held_out_faces": [faces.face_ids[r] for r in held_rows],
    }
    summary = {
        "source": "gallery",
        "gallery": redact(source),
        "collection": policy.collection,
        "faces_with_crop": len(faces),
        "faces_without_crop": faces.without_crop,
        "subjects": len(set(faces.subjects)),
        "outliers_left_out": len(scan.outliers),
        "outlier_threshold": round(scan.threshold, 4),
        "outlier_far": policy.outlier_far,
        **dropped,
        "min_faces": policy.min_faces,
        "max_faces": policy.max_faces,
        "faces_used": len(rows),
        "train_subjects": len(train_ids),
        "selection_subjects": len(selection_ids),
        "held_out_subjects": len(held_ids),
        "pose_labels": len(poses) > 0,
    }
    logger.info(
        "gallery split: %d outliers left out, %d subjects with too few faces, %d faces over "
        "the cap; %d training / %d selection / %d held-out subjects",
        len(scan.outliers),
        dropped["subjects_too_few_faces"],
        dropped["faces_over_cap"],
        len(train_ids),
        len(selection_ids),
        len(held_ids),
    )
    return GallerySplit(
        train=face_set(faces, rows_of(train_ids), poses),
        selection=face_set(faces, rows_of(selection_ids), poses),
        held_out=face_set(faces, held_rows, poses),
        document=document,
        outliers=outlier_report(scan),
        summary=summary,
    )


def held_out_faces(
    faces: GalleryFaces, document: dict[str, Any], photos_dir: Path | None
) -> tuple[FaceSet, int]:
    """The held-out faces a split names, as they are in the gallery now; also how many of
    them have been deleted since (they are skipped)."""
    wanted = set(document["held_out_faces"])
    rows = [r for r, face_id in enumerate(faces.face_ids) if face_id in wanted]
    poses = photo_poses(photos_dir) if photos_dir is not None else {}
    return face_set(faces, rows, poses), len(wanted) - len(rows)
