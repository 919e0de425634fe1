"""Reduced-scale decoding: detections between decoded and full-size coordinates.

A large JPEG is decoded at 1/2..1/8 scale for the detector (``DecodedImage.scale``).
Clients always get full-size coordinates; a face whose crop would be upsampled
from the reduced pixels is aligned from a full-size decode instead.
"""

from __future__ import annotations

from app.core.types import Detection


def rescale_detection(detection: Detection, factor: float) -> Detection:
    """The same detection with coordinates multiplied by ``factor``."""
    if factor == 1.0:
        return detection
    x1, y1, x2, y2 = detection.bbox
    return Detection(
        bbox=(x1 * factor, y1 * factor, x2 * factor, y2 * factor),
        score=detection.score,
        landmarks=(detection.landmarks * factor).astype(detection.landmarks.dtype),
    )


def needs_full_resolution(detections: list[Detection], scale: float, crop_size: int) -> bool:
    """True when ``scale`` < 1 and a face (decoded coordinates) is smaller than the crop.

    The aligned crop of such a face would be upsampled from the reduced pixels,
    while the full-size image holds more detail for it.
    """
    return scale < 1.0 and any(min(d.width, d.height) < crop_size for d in detections)
