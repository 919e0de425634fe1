"""Identity votes over a track's recent recognitions."""

from __future__ import annotations

import pytest

from app.stream.voting import IdentityVotes, Observation, decide

THRESHOLD = 0.35


def votes(*observations: Observation, window: int = 5, min_votes: int = 2) -> IdentityVotes:
    vote = IdentityVotes(threshold=THRESHOLD, window=window, min_votes=min_votes)
    for observation in observations:
        vote.add(observation)
    return vote


ADA = Observation("ada", 0.6)
ADA_WEAK = Observation("ada", 0.4)
BOB = Observation("bob", 0.5)
UNKNOWN = Observation(None, 0.1)


@pytest.mark.parametrize(
    ("observations", "subject"),
    [
        ([ADA], "undecided"),  # one frame is never enough
        ([ADA, ADA], "ada"),
        ([ADA, BOB], "undecided"),
        ([ADA, BOB, ADA], "ada"),
        ([UNKNOWN, UNKNOWN], None),  # decided unknown
        ([ADA, UNKNOWN, UNKNOWN], None),  # two agreeing unknowns beat one name
        ([ADA_WEAK, ADA_WEAK, UNKNOWN, UNKNOWN], "ada"),  # 0.8 against 2 x threshold = 0.7
        ([ADA, ADA, BOB, BOB, BOB], "bob"),  # heavier: 1.5 against 1.2
    ],
)
def test_decision_is_the_heaviest_outcome_with_enough_votes(
    observations: list[Observation], subject: str | None
) -> None:
    decision = decide(observations, threshold=THRESHOLD, min_votes=2)
    if subject == "undecided":
        assert decision is None
    else:
        assert decision is not None
        assert decision.subject == subject


def test_decision_reports_the_mean_similarity_and_votes_of_the_winner() -> None:
    decision = decide([ADA, ADA_WEAK, BOB], threshold=THRESHOLD, min_votes=2)
    assert decision is not None
    assert decision.votes == 2
    assert decision.similarity == pytest.approx(0.5)
    assert decision.weight == pytest.approx(1.0)


def test_one_odd_frame_does_not_rename_a_track() -> None:
    vote = votes(ADA, ADA, ADA)
    assert vote.add(BOB) is not None
    assert vote.decision is not None
    assert vote.decision.subject == "ada"
    assert votes(ADA, ADA, UNKNOWN).decision.subject == "ada"  # type: ignore[union-attr]


def test_a_new_name_needs_min_votes_agreeing_frames() -> None:
    vote = votes(ADA, ADA, window=3)
    vote.add(BOB)
    assert vote.decision is not None
    assert vote.decision.subject == "ada"
    vote.add(BOB)  # window: ada, bob, bob
    assert vote.decision.subject == "bob"


def test_the_decision_stands_when_no_outcome_qualifies() -> None:
    # Window of 2: after ada, ada, bob, carol no outcome has 2 votes; ada stands.
    vote = votes(ADA, ADA, BOB, Observation("carol", 0.9), window=2)
    assert vote.decision is not None
    assert vote.decision.subject == "ada"


def test_forgetting_observations_keeps_the_decision_until_new_votes_agree() -> None:
    vote = votes(ADA, ADA)
    vote.forget_observations()
    assert vote.observations == 0
    assert vote.decision is not None
    assert vote.decision.subject == "ada"
    vote.add(UNKNOWN)
    assert vote.decision.subject == "ada"
    vote.add(UNKNOWN)
    assert vote.decision.subject is None


@pytest.mark.parametrize(("window", "min_votes"), [(0, 1), (3, 0), (3, 4)])
def test_votes_reject_invalid_rules(window: int, min_votes: int) -> None:
    with pytest.raises(ValueError, match="min_votes"):
        IdentityVotes(threshold=THRESHOLD, window=window, min_votes=min_votes)


def test_one_clear_match_decides_at_once_when_instant_decisions_are_on() -> None:
    clear = Observation("ada", 0.7)
    assert decide([clear], threshold=THRESHOLD, min_votes=2) is None
    decision = decide([clear], threshold=THRESHOLD, min_votes=2, instant_similarity=0.55)
    assert decision is not None
    assert (decision.subject, decision.votes) == ("ada", 1)
    # A match under the instant similarity still needs its second vote, and an unknown
    # observation is never decided from one frame.
    assert decide([ADA_WEAK], threshold=THRESHOLD, min_votes=2, instant_similarity=0.55) is None
    assert decide([UNKNOWN], threshold=THRESHOLD, min_votes=2, instant_similarity=0.0) is None


def test_an_instant_match_does_not_outweigh_an_established_name() -> None:
    vote = IdentityVotes(threshold=THRESHOLD, window=5, min_votes=2, instant_similarity=0.55)
    for _ in range(3):
        vote.add(ADA)
    assert vote.add(Observation("bob", 0.6)) is not None
    assert vote.decision is not None
    assert vote.decision.subject == "ada"  # 1.8 against 0.6
