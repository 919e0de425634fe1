"""Face quality: how usable a detected face is for recognition. Pure numerics, numpy only.

Four measurements, each mapped onto [0, 1] by a linear ramp between a level that is
useless and one that is fully good, and a score that is their product (the weakest
one dominates; a face good in every respect scores 1):

* **size**: the shorter side of the detector's box, in pixels of the photo;
* **sharpness**: variance of the Laplacian of the aligned 112x112 crop's grey levels
  over the inner face (eyes to chin), the classic focus measure. A crop upscaled from
  a tiny or blurred face has little high-frequency energy;
* **pose**: yaw and pitch estimated from the five landmarks (see ``estimate_pose``).
  Roll is reported but not scored: alignment rotates it away;
* **detector score**: SCRFD's confidence that this is a face at all.

Each measurement below its ``ok`` level adds a machine-readable reason, so a client
can tell a user what to fix ("move closer", "hold still", "face the camera").
The levels are constants here, not settings: they describe faces, not deployments;
the one deployment choice is the score an enrollment needs (``FACEREC_MIN_QUALITY``).
Numbers behind them: ``python -m bench.quality`` (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.core.types import Detection, FloatArray, ImageArray


@dataclass(frozen=True, slots=True)
class Ramp:
    """``bad`` maps to 0, ``good`` to 1, linear in between (``good`` may be the smaller:
    angles); a value on the bad side of ``ok`` is a reason."""

    bad: float
    good: float
    ok: float

    def __call__(self, value: float) -> float:
        return float(min(1.0, max(0.0, (value - self.bad) / (self.good - self.bad))))

    def falls_short(self, value: float) -> bool:
        """Whether ``value`` is on the bad side of ``ok`` (ramps may run either way)."""
        return value < self.ok if self.good > self.bad else value > self.ok


# The levels below were set on the shared photos with ``python -m bench.quality``:
# every LFW, CelebA and CFP frontal face that the size and detector-score gates accept
# scores >= 0.03 (LFW's blurriest, upscaled originals score 0.032), while nearly every
# LFW face blurred by a Gaussian of sigma 3 px scores below it.
#
# Shorter box side, px: ArcFace's input is 112 px; faces under ~24 px carry little identity.
SIZE = Ramp(bad=16.0, good=64.0, ok=40.0)
# Laplacian variance of the inner aligned face (grey levels 0-255): LFW's crops are
# >= 30 for 99.5% of faces (median 150), CelebA's >= 65; blurring LFW by sigma 2 px
# brings the median to 13.
SHARPNESS = Ramp(bad=10.0, good=80.0, ok=30.0)
# Absolute yaw and pitch in degrees: frontal to three-quarter views score fully. The
# estimates are rough (pitch especially: +-30 degrees on frontal photos), hence the
# wide ramps; CFP's profile photos estimate at a yaw of 65 degrees (median).
YAW = Ramp(bad=90.0, good=40.0, ok=55.0)
PITCH = Ramp(bad=75.0, good=35.0, ok=45.0)
# SCRFD confidence: true faces are mostly above 0.75; its own output threshold is 0.5.
DET_SCORE = Ramp(bad=0.5, good=0.75, ok=0.6)
# The score an enrollment needs by default (FACEREC_MIN_QUALITY).
DEFAULT_MIN_QUALITY = 0.03

# Rows and columns of the aligned 112x112 crop holding the inner face in the ArcFace
# template (eyes at y ~ 52, mouth corners at y ~ 92): sharpness ignores hair and background.
INNER_FACE = (slice(36, 108), slice(20, 92))
# How far the nose tip stands out of the eyes' plane, in half eye distances, and out of
# the eye-mouth plane in eye-to-mouth distances (average adult head proportions): a
# rotation of the head by an angle moves the nose tip, relative to the eyes, by the
# depth times the angle's tangent.
NOSE_DEPTH = 0.8
NOSE_DEPTH_VERTICAL = 0.5
# Where the nose tip sits between the eye line (0) and the mouth line (1) when the face
# looks straight ahead: the ArcFace template's own proportion (71.7 - 51.6) / (92.2 - 51.6).
FRONTAL_NOSE_HEIGHT = 0.495

REASON_SMALL = "small_face"
REASON_BLURRY = "blurry"
REASON_TURNED = "head_turned"
REASON_TILTED = "head_tilted"
REASON_UNCERTAIN = "low_detector_score"


@dataclass(frozen=True, slots=True)
class Pose:
    """Head pose in degrees, estimated from five landmarks (a rough, model-free guess)."""

    yaw: float  # + : the face turns to the image's left (the nose moves left of centre)
    pitch: float  # + : the face looks down
    roll: float  # + : the eye line rotates clockwise in the image


@dataclass(frozen=True, slots=True)
class FaceQuality:
    score: float  # [0, 1], product of the four component scores
    size: float  # shorter box side, px
    sharpness: float  # Laplacian variance of the inner aligned face
    pose: Pose
    det_score: float
    reasons: tuple[str, ...]  # REASON_* codes, in a fixed order


def estimate_pose(landmarks: FloatArray) -> Pose:
    """Yaw, pitch and roll from (5, 2) landmarks: eyes, nose, mouth corners (x, y).

    Roll is the eye line's angle. In the frame rotated by it, the nose tip's horizontal
    offset from the eyes' midpoint, in half eye distances, is ``NOSE_DEPTH x tan(yaw)``
    (eyes and nose tip on a rigid head); its height between the eye and mouth lines,
    against a frontal face's, gives pitch the same way. Landmark noise makes these
    rough (+-10 degrees near frontal); they only need to tell frontal from turned.
    Degenerate layouts (coincident eyes) give 90 degrees.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    eye_vector = right_eye - left_eye
    eye_distance = float(np.hypot(*eye_vector))
    if eye_distance < 1e-6:
        return Pose(yaw=90.0, pitch=90.0, roll=0.0)
    roll = math.atan2(eye_vector[1], eye_vector[0])
    cos_r, sin_r = math.cos(-roll), math.sin(-roll)
    rotation = np.array([[cos_r, -sin_r], [sin_r, cos_r]])
    eyes_mid = (left_eye + right_eye) / 2
    nose_x, nose_y = rotation @ (nose - eyes_mid)
    _, mouth_y = rotation @ ((mouth_left + mouth_right) / 2 - eyes_mid)
    yaw = math.degrees(math.atan2(-nose_x / (eye_distance / 2), NOSE_DEPTH))
    if mouth_y <= 1e-6:
        pitch = 90.0
    else:
        height = nose_y / mouth_y
        pitch = math.degrees(math.atan2(height - FRONTAL_NOSE_HEIGHT, NOSE_DEPTH_VERTICAL))
    return Pose(yaw=yaw, pitch=pitch, roll=math.degrees(roll))


def laplacian_variance(aligned_face: ImageArray) -> float:
    """Variance of the 4-neighbour Laplacian of the inner face's grey levels."""
    rgb = np.asarray(aligned_face, dtype=np.float32)[INNER_FACE]
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    laplacian = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    )
    return float(laplacian.var())


def assess_face(detection: Detection, aligned_face: ImageArray) -> FaceQuality:
    """The quality of one detected face, given its aligned 112x112 RGB crop."""
    size = float(min(detection.width, detection.height))
    sharpness = laplacian_variance(aligned_face)
    pose = estimate_pose(detection.landmarks)
    det_score = float(detection.score)
    components = (
        (SIZE, size, REASON_SMALL),
        (SHARPNESS, sharpness, REASON_BLURRY),
        (YAW, abs(pose.yaw), REASON_TURNED),
        (PITCH, abs(pose.pitch), REASON_TILTED),
        (DET_SCORE, det_score, REASON_UNCERTAIN),
    )
    score = math.prod(ramp(value) for ramp, value, _ in components)
    return FaceQuality(
        score=round(score, 4),
        size=size,
        sharpness=round(sharpness, 2),
        pose=Pose(yaw=round(pose.yaw, 1), pitch=round(pose.pitch, 1), roll=round(pose.roll, 1)),
        det_score=det_score,
        reasons=tuple(reason for ramp, value, reason in components if ramp.falls_short(value)),
    )
