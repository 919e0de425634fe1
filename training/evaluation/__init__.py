"""Evaluation numerics, the single source for ``bench/`` and ``training/``.

numpy only (no PyTorch, no plotting), over unit-norm embeddings where similarity is the
dot product and a pair is accepted when ``similarity >= threshold``:

- ``pairs``: LFW ``pairs.txt`` parsing and an even subset of its folds;
- ``scores``: genuine / impostor similarities of labelled embeddings, in row blocks;
- ``verification``: FAR calibration, TAR at FAR, ROC and AUC, 10-fold accuracy;
- ``identification``: rank-1;
- ``calibration``: thresholds at fixed FARs, in-sample and held out by identity folds;
- ``protocols``: CFP frontal/profile, all pairs, LFW.
"""

from training.evaluation.calibration import (
    CALIBRATION_FARS,
    HELD_OUT_FOLDS,
    Calibration,
    HeldOutPoint,
    calibrate,
    identity_folds,
    manifest_thresholds,
    round_up,
)
from training.evaluation.identification import rank1
from training.evaluation.pairs import (
    LfwPair,
    lfw_identity,
    pair_images,
    read_lfw_pairs,
    select_pairs,
)
from training.evaluation.protocols import (
    ProtocolResult,
    cfp_protocol,
    headline_metric,
    is_cfp_layout,
    lfw_accuracy,
    pairs_protocol,
    validation_protocol,
)
from training.evaluation.scores import (
    MISSING_SCORE,
    all_pair_scores,
    cross_pair_scores,
    grouped_pair_scores,
    lfw_pair_scores,
    top_impostor_pairs,
)
from training.evaluation.verification import (
    REPORT_FARS,
    FoldAccuracy,
    OperatingPoint,
    Verification,
    allowed_false_accepts,
    area_under,
    best_accuracy_threshold,
    calibrate_threshold,
    far_key,
    operating_point,
    point_at,
    roc_curve,
    ten_fold_accuracy,
    verify,
)

__all__ = [
    "CALIBRATION_FARS",
    "HELD_OUT_FOLDS",
    "MISSING_SCORE",
    "REPORT_FARS",
    "Calibration",
    "FoldAccuracy",
    "HeldOutPoint",
    "LfwPair",
    "OperatingPoint",
    "ProtocolResult",
    "Verification",
    "all_pair_scores",
    "allowed_false_accepts",
    "area_under",
    "best_accuracy_threshold",
    "calibrate",
    "calibrate_threshold",
    "cfp_protocol",
    "cross_pair_scores",
    "far_key",
    "grouped_pair_scores",
    "headline_metric",
    "identity_folds",
    "is_cfp_layout",
    "lfw_accuracy",
    "lfw_identity",
    "lfw_pair_scores",
    "manifest_thresholds",
    "operating_point",
    "pair_images",
    "pairs_protocol",
    "point_at",
    "rank1",
    "read_lfw_pairs",
    "roc_curve",
    "round_up",
    "select_pairs",
    "ten_fold_accuracy",
    "top_impostor_pairs",
    "validation_protocol",
    "verify",
]
