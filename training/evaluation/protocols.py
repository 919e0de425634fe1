"""Evaluation protocols over labelled embeddings: CFP frontal/profile, all pairs, LFW."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.evaluation.identification import rank1
from training.evaluation.pairs import LfwPair
from training.evaluation.scores import (
    Embeddings,
    all_pair_scores,
    cross_pair_scores,
    lfw_pair_scores,
)
from training.evaluation.verification import Verification, far_key, ten_fold_accuracy, verify


@dataclass(frozen=True, slots=True)
class ProtocolResult:
    verification: dict[str, Verification]  # protocol name -> figures
    rank1: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "verification": {name: v.summary() for name, v in self.verification.items()},
            "rank1": {name: round(value, 6) for name, value in self.rank1.items()},
        }


def cfp_protocol(
    embeddings: Embeddings, identities: Sequence[str], poses: Sequence[str | None]
) -> ProtocolResult:
    """CFP on the given identities: every frontal-frontal and frontal-profile pair, and
    rank-1 of profile probes against a gallery of all frontal faces."""
    pose = np.array([p or "" for p in poses])
    frontal, profile = np.flatnonzero(pose == "frontal"), np.flatnonzero(pose == "profile")
    if frontal.size == 0 or profile.size == 0:
        raise ValueError("the CFP protocol needs frontal/ and profile/ photos")
    frontal_ids = [identities[int(i)] for i in frontal]
    profile_ids = [identities[int(i)] for i in profile]
    ff = all_pair_scores(embeddings[frontal], frontal_ids)
    fp = cross_pair_scores(embeddings[frontal], frontal_ids, embeddings[profile], profile_ids)
    return ProtocolResult(
        verification={"frontal_frontal": verify(*ff), "frontal_profile": verify(*fp)},
        rank1={
            "profile_to_frontal": rank1(
                embeddings[frontal], frontal_ids, embeddings[profile], profile_ids
            )
        },
    )


def pairs_protocol(embeddings: Embeddings, identities: Sequence[str]) -> ProtocolResult:
    """Any identity folders: every pair of the faces, and leave-one-out rank-1."""
    return ProtocolResult(
        verification={"all_pairs": verify(*all_pair_scores(embeddings, identities))},
        rank1={
            "leave_one_out": rank1(
                embeddings, identities, embeddings, identities, leave_one_out=True
            )
        },
    )


def is_cfp_layout(poses: Sequence[str | None]) -> bool:
    return {"frontal", "profile"} <= set(poses)


def validation_protocol(
    embeddings: Embeddings, identities: Sequence[str], poses: Sequence[str | None]
) -> ProtocolResult:
    """CFP when the photos are in frontal/ and profile/ folders, all pairs otherwise."""
    if is_cfp_layout(poses):
        return cfp_protocol(embeddings, identities, poses)
    return pairs_protocol(embeddings, identities)


def headline_metric(result: ProtocolResult, far: float = 1e-3) -> tuple[str, float]:
    """The early-stopping metric: frontal-profile TAR at ``far`` if present, else all pairs."""
    name = "frontal_profile" if "frontal_profile" in result.verification else "all_pairs"
    return f"{name}_tar@{far_key(far)}", result.verification[name].tar(far)


def lfw_accuracy(
    pairs: Sequence[LfwPair], embeddings: Mapping[str, NDArray[np.float32]]
) -> dict[str, Any]:
    """10-fold accuracy over ``pairs``; a photo missing from ``embeddings`` had no face."""
    scores, same, folds, missing = lfw_pair_scores(pairs, embeddings)
    result = ten_fold_accuracy(scores, same, folds)
    return {
        "pairs": len(pairs),
        "pairs_missing_face": int(np.count_nonzero(missing)),
        "accuracy": round(result.mean, 6),
        "std": round(result.std, 6),
        "mean_threshold": round(float(np.mean(result.thresholds)), 6),
    }
