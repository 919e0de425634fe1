"""How worth recognising a tracked face's crop is: size, detector score, pose, sharpness.

``crop_quality`` is a product of four factors in [0, 1], so one bad factor (a
profile, a blur, a tiny face) is enough to make a crop poor:

- size: the face's shorter side over the recognizer's 112 pixels (larger faces
  carry no extra detail for it);
- detector score, as is;
- frontal pose, from the five landmarks: yaw is the nose's sideways offset from the
  eyes' and mouth's midline in units of the (projected) eye distance: 0 frontal,
  about 0.7 for a three-quarter view that the recognizer still names well (LFW),
  beyond 1 towards profile; pitch is where the nose sits between the eye line and
  the mouth line (0.495 on the ArcFace template). Each gives a factor that falls
  quadratically from 1 at the template to 0 at ``MAX_YAW`` / ``MAX_PITCH_OFFSET``;
- sharpness (``appearance.FaceView.sharpness``): half weight, as blur costs the
  recognizer less than pose does. Sharp LFW faces measure about 0.55 (median) at
  the view's 64 pixels, blurred by a 2-pixel Gaussian about 0.12.

Pure numerics.
"""

from __future__ import annotations

import numpy as np

from app.core.types import Detection
from app.inference.align import ARCFACE_TEMPLATE

ALIGNED_SIDE = 112.0
MAX_YAW = 1.3
MAX_PITCH_OFFSET = 0.4
SHARP_ENOUGH = 0.3  # sharpness at and above which a view counts as fully sharp


def yaw_and_pitch(landmarks: np.ndarray) -> tuple[float, float] | None:
    """(yaw, pitch) as defined above; None for degenerate landmarks."""
    left_eye, right_eye, nose, left_mouth, right_mouth = (
        np.asarray(landmarks[i], dtype=np.float64) for i in range(5)
    )
    eyes = right_eye - left_eye
    eye_distance = float(np.linalg.norm(eyes))
    if eye_distance < 1e-3:
        return None
    across = eyes / eye_distance
    eye_mid, mouth_mid = (left_eye + right_eye) / 2, (left_mouth + right_mouth) / 2
    midline = (eye_mid + mouth_mid) / 2
    down = np.array([-across[1], across[0]])
    face_height = float(np.dot(mouth_mid - eye_mid, down))
    if face_height < 1e-3:
        return None
    yaw = float(np.dot(nose - midline, across)) / eye_distance
    return yaw, float(np.dot(nose - eye_mid, down)) / face_height


_TEMPLATE_POSE = yaw_and_pitch(ARCFACE_TEMPLATE)
assert _TEMPLATE_POSE is not None  # invariant: the template is not degenerate
TEMPLATE_YAW, TEMPLATE_PITCH = _TEMPLATE_POSE


def pose_factor(landmarks: np.ndarray) -> float:
    """1.0 for a face posed like the template, falling to 0.0 at strong yaw or pitch."""
    pose = yaw_and_pitch(landmarks)
    if pose is None:
        return 0.0
    yaw, pitch = pose
    yaw_factor = max(0.0, 1.0 - ((yaw - TEMPLATE_YAW) / MAX_YAW) ** 2)
    pitch_factor = max(0.0, 1.0 - ((pitch - TEMPLATE_PITCH) / MAX_PITCH_OFFSET) ** 2)
    return yaw_factor * pitch_factor


def crop_quality(detection: Detection, sharpness: float) -> float:
    """Quality of the crop in [0, 1]; higher is more worth recognising."""
    size = min(max(min(detection.width, detection.height), 0.0), ALIGNED_SIDE) / ALIGNED_SIDE
    sharp = min(max(sharpness, 0.0) / SHARP_ENOUGH, 1.0)
    score = min(max(detection.score, 0.0), 1.0)
    return size * score * pose_factor(detection.landmarks) * (0.5 + 0.5 * sharp)
