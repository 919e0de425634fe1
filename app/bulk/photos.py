"""Enroll a folder of identity subfolders, with exactly the gates of ``POST /enroll``.

``DIR/<subject>/<photo>`` (the layout of CelebA's ``images/``): each subfolder is a
subject named after it, each image file in it one photo. Photos go through
``FaceService.enroll``, the use case behind ``POST /enroll``: the same decoding
limits, face policy and quality gates, the same idempotence (a photo already
enrolled for its subject is not added again), so a re-run adds nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from app.api.deps import validate_subject
from app.core.service import FacePolicy, FaceService
from app.errors import FaceRecError, InvalidImage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# Rejections listed one by one in the summary; the rest are only counted.
EXAMPLES_KEPT = 20


@dataclass(slots=True)
class PhotoImport:
    """What an import did, for the summary the CLI prints."""

    subjects: int = 0
    added: int = 0
    existing: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # error code -> photos
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # path, code, message
    seconds: float = 0.0

    def reject(self, path: str, code: str, message: str) -> None:
        self.rejected[code] += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append((path, code, message))


def identity_folders(directory: Path) -> list[tuple[str, list[Path]]]:
    """``(folder name, image files)`` per subfolder, sorted; hidden entries skipped."""
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a folder")
    folders = []
    for folder in sorted(directory.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        photos = [
            path
            for path in sorted(folder.iterdir())
            if path.is_file()
            and not path.name.startswith(".")
            and path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if photos:
            folders.append((folder.name, photos))
    return folders


def import_photos(
    service: FaceService,
    collection: str,
    directory: Path,
    *,
    policy: FacePolicy,
    max_image_bytes: int,
    photos_per_call: int,
    progress: bool,
) -> PhotoImport:
    """Enroll every subfolder of ``directory`` as a subject of ``collection``."""
    started = time.perf_counter()
    folders = identity_folders(directory)
    result = PhotoImport()
    total = sum(len(photos) for _, photos in folders)
    with tqdm(total=total, unit="photo", disable=not progress, desc="enroll") as bar:
        for folder, photos in folders:
            try:
                subject = validate_subject(folder)
            except FaceRecError as exc:
                for photo in photos:
                    result.reject(str(photo), exc.code, f"folder name: {exc.message}")
                bar.update(len(photos))
                continue
            enrolled = False
            for chunk in _chunks(photos, photos_per_call):
                enrolled |= _enroll_chunk(
                    service, collection, subject, chunk, policy, max_image_bytes, result
                )
                bar.update(len(chunk))
            result.subjects += enrolled
    result.seconds = time.perf_counter() - started
    return result


def _enroll_chunk(
    service: FaceService,
    collection: str,
    subject: str,
    photos: list[Path],
    policy: FacePolicy,
    max_image_bytes: int,
    result: PhotoImport,
) -> bool:
    """Enroll up to ``photos_per_call`` photos of one subject; True if any face is stored."""
    images: list[tuple[str, bytes]] = []
    for photo in photos:
        try:
            images.append((str(photo), _read_capped(photo, max_image_bytes)))
        except OSError as exc:
            result.reject(str(photo), InvalidImage.code, f"cannot read the file: {exc.strerror}")
    if not images:
        return False
    try:
        enrolled = service.enroll(collection, subject, images, policy)
    except FaceRecError as exc:
        rejected = exc.details.get("rejected")
        if rejected is None:
            raise  # not about the photos (the gallery, say): stop the import
        for entry in rejected:
            result.reject(entry["image"], entry["code"], entry["message"])
        return False
    for rejection in enrolled.rejected:
        result.reject(rejection.image, rejection.error.code, rejection.error.message)
    result.added += sum(face.created for face in enrolled.faces)
    result.existing += sum(not face.created for face in enrolled.faces)
    return bool(enrolled.faces)


def _read_capped(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes: enough for the decoder to refuse a larger file."""
    with path.open("rb") as handle:
        return handle.read(max_bytes + 1)


def _chunks(photos: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(photos), size):
        yield photos[start : start + size]
