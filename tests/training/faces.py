"""Faces found and aligned by the service's own code, for the training tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from app.inference.align import align_face
from app.inference.loader import build_detector, load_model
from app.inference.scrfd import ScrfdDetector
from app.inference.session import RuntimeOptions


def service_detector(models_dir: Path) -> ScrfdDetector:
    """The service's default detector (scrfd_500m), as the app builds it."""
    model = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=RuntimeOptions()
    )
    return build_detector(model)


def aligned_faces(
    detector: ScrfdDetector, path: Path, limit: int | None = None
) -> list[NDArray[np.uint8]]:
    """The 112x112 ArcFace crops (RGB) of a photo's faces, best detection first."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return [align_face(image, d.landmarks) for d in detector.detect(image)[:limit]]
