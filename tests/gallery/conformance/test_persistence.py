"""What survives a close, a crash, or a change of model (every backend)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.gallery import Gallery
from app.core.types import FloatArray, NewFace
from app.errors import GalleryModelMismatch, GalleryUnavailable
from tests.gallery.conformance.conftest import Backend

UnitVectors = Callable[[int], FloatArray]
MakeFace = Callable[..., NewFace]
OpenGallery = Callable[..., Gallery]

REPO = Path(__file__).resolve().parents[3]


def fill(gallery: Gallery, make_face: MakeFace) -> None:
    for collection in ("office", "lab"):
        for number in range(6):
            faces = [make_face(aligned_png=b"\x89PNG\r\n\x1a\n") for _ in range(number % 3 + 1)]
            gallery.add_faces(collection, f"person-{number}", faces)
    [(doomed, _)] = gallery.add_faces("office", "person-0", [make_face()])
    gallery.delete_face("office", doomed.face_id)
    gallery.delete_subject("lab", "person-5")


def test_reopening_restores_search_results(
    open_gallery: OpenGallery, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    gallery = open_gallery()
    fill(gallery, make_face)
    queries = unit_vectors(20)
    before = {c: gallery.search(c, queries, top_k=4) for c in ("office", "lab", "none")}
    stats_before = gallery.stats()
    gallery.close()

    reopened = open_gallery()

    assert {c: reopened.search(c, queries, top_k=4) for c in before} == before
    assert reopened.stats() == stats_before


def test_reopening_restores_subjects_and_faces(
    open_gallery: OpenGallery, make_face: MakeFace
) -> None:
    gallery = open_gallery()
    fill(gallery, make_face)
    listings = {c: gallery.list_subjects(c, limit=100, offset=0) for c in ("office", "lab")}
    subjects = {
        (c, s.subject): gallery.get_subject(c, s.subject)
        for c, (page, _) in listings.items()
        for s in page
    }
    crops = list(gallery.aligned_crops())
    gallery.close()

    reopened = open_gallery()

    assert {c: reopened.list_subjects(c, limit=100, offset=0) for c in listings} == listings
    assert {key: reopened.get_subject(*key) for key in subjects} == subjects
    assert list(reopened.aligned_crops()) == crops


def test_reopening_with_another_model_raises_model_mismatch(
    open_gallery: OpenGallery, backend: Backend, make_face: MakeFace
) -> None:
    gallery = open_gallery(model_id="arcface-r100")
    gallery.add_faces("c", "alice", [make_face()])
    gallery.close()

    with pytest.raises(GalleryModelMismatch) as raised:
        open_gallery(model_id="mobilefacenet")

    message = raised.value.message
    assert "'arcface-r100'" in message  # what the gallery holds
    assert "'mobilefacenet'" in message  # what is loaded
    assert "re-enroll" in message
    assert backend.location_setting in message
    assert raised.value.code == "gallery_model_mismatch"


def test_reopening_with_another_dim_raises_model_mismatch(open_gallery: OpenGallery) -> None:
    open_gallery(dim=32).close()
    with pytest.raises(GalleryModelMismatch, match="dim 32"):
        open_gallery(dim=64)


def test_a_mismatched_open_leaves_the_gallery_usable(open_gallery: OpenGallery) -> None:
    open_gallery().close()
    with pytest.raises(GalleryModelMismatch):
        open_gallery(model_id="other")
    open_gallery()  # the failed open released its lock and connection


def test_a_gallery_from_a_newer_schema_is_refused(
    open_gallery: OpenGallery, backend: Backend
) -> None:
    open_gallery().close()
    backend.make_schema_newer()

    with pytest.raises(GalleryUnavailable, match="newer facerec"):
        open_gallery()


def test_a_closed_gallery_refuses_calls(open_gallery: OpenGallery, make_face: MakeFace) -> None:
    gallery = open_gallery()
    gallery.close()
    gallery.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        gallery.add_faces("c", "alice", [make_face()])
    with pytest.raises(RuntimeError, match="closed"):
        gallery.stats()


# The child acknowledges each enrolment only after add_faces returned, like an
# HTTP 2xx; every acknowledged face must survive SIGKILL.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from app.core.types import NewFace
    from app.gallery import open_gallery

    gallery = open_gallery(
        data_dir=Path(sys.argv[1]),
        database_url=sys.argv[2] or None,
        model_id="test-recognizer-v1",
        dim=32,
    )
    rng = np.random.default_rng(7)
    for number in range(100_000):
        vectors = rng.standard_normal((2, 32)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        faces = [
            NewFace(f"{number:032x}{side:032x}", (0.0, 0.0, 9.0, 9.0), 0.9, vector)
            for side, vector in enumerate(vectors)
        ]
        results = gallery.add_faces("c", f"subject-{number % 5}", faces)
        print("ACK", *(record.face_id for record, _ in results), flush=True)
    """
)
ACKS_BEFORE_KILL = 30


def test_acknowledged_faces_survive_sigkill(open_gallery: OpenGallery, backend: Backend) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(backend.data_dir), backend.database_url or ""],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    try:
        for line in child.stdout:
            if line.startswith("ACK "):
                acknowledged.extend(line.split()[1:])
            if len(acknowledged) >= 2 * ACKS_BEFORE_KILL:
                os.kill(child.pid, signal.SIGKILL)  # typically in the middle of the next write
                break
    finally:
        child.kill()
        # Read on through the same file object: lines it has buffered already (iteration
        # reads ahead) were acknowledged too, and reading the pipe's fd directly, as
        # communicate(timeout=...) does, would skip them.
        remaining = child.stdout.read()
        _, errors = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, errors
    # Lines already in the pipe were acknowledged before the kill too.
    for line in remaining.splitlines():
        if line.startswith("ACK "):
            acknowledged.extend(line.split()[1:])

    gallery = open_gallery()

    stored = {
        face.face_id
        for number in range(5)
        for face in gallery.get_subject("c", f"subject-{number}")[1]
    }
    assert set(acknowledged) <= stored
    assert len(stored) - len(acknowledged) in (0, 2)  # at most the one write in flight
    assert gallery.total_faces() == len(stored)
