"""Enroll a folder of identity subfolders, with exactly the gates of ``POST /enroll``.

``DIR/<subject>/<photo>`` (the layout of CelebA's ``images/``): each subfolder is a
subject named after it, each image file in it or in its own subfolders one photo
(``DIR/<subject>/frontal/01.jpg``, the layout of CFP's ``images/``). Photos go through
``FaceService.enroll``, the use case behind ``POST /enroll``: the same decoding
limits, face policy and quality gates, the same idempotence (a photo already
enrolled for its subject is not added again), so a re-run adds nothing.

Photos are sent in calls of at most ``photos_per_call`` photos and at most the
request pixel budget (``FACEREC_MAX_REQUEST_PIXELS``), so a folder of large photos is
enrolled in more calls rather than refused; a single photo above the budget is
rejected on its own. A subject the gallery refuses as a whole (a name that looks like
another subject's) is reported with its photos and the import goes on.
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
from app.errors import FaceRecError, InvalidImage, NameConflict, RequestTooLarge

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
    """``(folder name, image files)`` per subfolder, sorted; the image files of a folder
    are found at any depth below it; hidden entries are skipped at every level."""
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a folder")
    folders = []
    for folder in sorted(directory.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        photos = sorted(_photos_below(folder))
        if photos:
            folders.append((folder.name, photos))
    return folders


def _photos_below(folder: Path) -> Iterator[Path]:
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        if path.is_dir():
            yield from _photos_below(path)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


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
            calls = _calls(service, photos, photos_per_call, max_image_bytes, result)
            for chunk, consumed in calls:
                try:
                    enrolled |= _enroll_chunk(service, collection, subject, chunk, policy, result)
                except NameConflict as exc:
                    # The subject as a whole is refused, so is every photo of the call.
                    for name, _ in chunk:
                        result.reject(name, exc.code, exc.message)
                bar.update(consumed)
            result.subjects += enrolled
    result.seconds = time.perf_counter() - started
    return result


def _enroll_chunk(
    service: FaceService,
    collection: str,
    subject: str,
    images: list[tuple[str, bytes]],
    policy: FacePolicy,
    result: PhotoImport,
) -> bool:
    """Enroll one call's photos of one subject; True if any face is stored."""
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


def _calls(
    service: FaceService,
    photos: list[Path],
    photos_per_call: int,
    max_image_bytes: int,
    result: PhotoImport,
) -> Iterator[tuple[list[tuple[str, bytes]], int]]:
    """``(images of one call, photos consumed)``: at most ``photos_per_call`` photos and
    at most the service's request pixel budget per call, read one call at a time.

    Unreadable files and photos that alone declare more pixels than the budget are
    rejected here (counted in ``consumed``, never sent).
    """
    budget = service.max_request_pixels if service.probe is not None else None
    images: list[tuple[str, bytes]] = []
    pixels = 0
    consumed = 0
    for photo in photos:
        consumed += 1
        try:
            data = _read_capped(photo, max_image_bytes)
        except OSError as exc:
            result.reject(str(photo), InvalidImage.code, f"cannot read the file: {exc.strerror}")
            continue
        declared = service.probe(data) if service.probe is not None else 0
        if budget is not None and declared > budget:
            result.reject(
                str(photo),
                RequestTooLarge.code,
                f"the image declares {declared} pixels; at most {budget} are accepted per "
                "request (FACEREC_MAX_REQUEST_PIXELS)",
            )
            continue
        if images and (
            len(images) >= photos_per_call or (budget is not None and pixels + declared > budget)
        ):
            yield images, consumed - 1
            images, pixels, consumed = [], 0, 1
        images.append((str(photo), data))
        pixels += declared
    if consumed:
        yield images, consumed


def _read_capped(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes: enough for the decoder to refuse a larger file."""
    with path.open("rb") as handle:
        return handle.read(max_bytes + 1)
