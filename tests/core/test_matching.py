"""assign_subjects: which subject, if any, each face of one photo is."""

from __future__ import annotations

from app.core.matching import assign_subjects
from app.core.types import SearchHit

THRESHOLD = 0.4


def hit(subject: str, similarity: float) -> SearchHit:
    return SearchHit(subject=subject, similarity=similarity, face_id=f"{subject}-face")


def subjects(matches: list[SearchHit | None]) -> list[str | None]:
    return [match.subject if match else None for match in matches]


def test_each_face_gets_its_best_subject_when_there_is_no_conflict() -> None:
    candidates = [[hit("ana", 0.8), hit("bo", 0.5)], [hit("bo", 0.7), hit("ana", 0.45)]]

    assert subjects(assign_subjects(candidates, THRESHOLD)) == ["ana", "bo"]


def test_a_best_match_below_the_threshold_is_unknown() -> None:
    candidates = [[hit("ana", 0.39)], [hit("bo", 0.9)]]

    assert subjects(assign_subjects(candidates, THRESHOLD)) == [None, "bo"]


def test_a_similarity_at_the_threshold_matches() -> None:
    assert subjects(assign_subjects([[hit("ana", THRESHOLD)]], THRESHOLD)) == ["ana"]


def test_one_subject_is_never_assigned_to_two_faces() -> None:
    candidates = [[hit("ana", 0.7)], [hit("ana", 0.9)], [hit("ana", 0.8)]]

    matches = assign_subjects(candidates, THRESHOLD)

    assert subjects(matches) == [None, "ana", None]


def test_the_better_matching_face_wins_and_the_other_falls_back_to_its_next_candidate() -> None:
    candidates = [
        [hit("ana", 0.75), hit("bo", 0.6), hit("cy", 0.5)],
        [hit("ana", 0.85), hit("cy", 0.3)],
    ]

    matches = assign_subjects(candidates, THRESHOLD)

    assert subjects(matches) == ["bo", "ana"]
    assert matches[0] == hit("bo", 0.6)  # the hit itself, with its similarity and face


def test_a_fallback_candidate_below_the_threshold_leaves_the_face_unknown() -> None:
    candidates = [[hit("ana", 0.75), hit("bo", 0.35)], [hit("ana", 0.85)]]

    assert subjects(assign_subjects(candidates, THRESHOLD)) == [None, "ana"]


def test_a_fallback_does_not_steal_a_subject_from_a_better_match() -> None:
    # Face 0 loses "ana" to face 1; its fallback "bo" is matched better by face 2.
    candidates = [
        [hit("ana", 0.8), hit("bo", 0.6)],
        [hit("ana", 0.9)],
        [hit("bo", 0.7), hit("cy", 0.5)],
    ]

    assert subjects(assign_subjects(candidates, THRESHOLD)) == [None, "ana", "bo"]


def test_equal_similarities_go_to_the_earlier_face() -> None:
    candidates = [[hit("ana", 0.8)], [hit("ana", 0.8), hit("bo", 0.6)]]

    assert subjects(assign_subjects(candidates, THRESHOLD)) == ["ana", "bo"]


def test_faces_without_candidates_are_unknown() -> None:
    assert assign_subjects([[], [hit("ana", 0.9)], []], THRESHOLD) == [None, hit("ana", 0.9), None]


def test_no_faces_give_no_matches() -> None:
    assert assign_subjects([], THRESHOLD) == []
