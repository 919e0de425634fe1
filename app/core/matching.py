"""Decisions: which subject, if any, each face of a photo is."""

from __future__ import annotations

from collections.abc import Sequence

from app.core.types import SearchHit


def assign_subjects(
    candidates: Sequence[Sequence[SearchHit]], threshold: float
) -> list[SearchHit | None]:
    """Match faces of one photo to subjects: one subject never matches two faces.

    Greedy over all (face, subject) pairs at or above ``threshold``, best
    similarity first: a person appears once in a photo, so the face that looks
    most like them takes the name and the others fall back to their next
    candidate, or to unknown (None).
    """
    pairs = sorted(
        (
            (hit.similarity, face_index, rank, hit)
            for face_index, hits in enumerate(candidates)
            for rank, hit in enumerate(hits)
            if hit.similarity >= threshold
        ),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    matches: list[SearchHit | None] = [None] * len(candidates)
    taken: set[str] = set()
    for _, face_index, _, hit in pairs:
        if matches[face_index] is None and hit.subject not in taken:
            matches[face_index] = hit
            taken.add(hit.subject)
    return matches
