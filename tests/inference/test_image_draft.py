"""Reduced-scale JPEG decoding (``reduce_to``): bounds, formats, limits, orientation."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from app.errors import ImageTooLarge
from app.inference.image import decode_image

LIMITS = {"max_bytes": 1 << 26, "max_pixels": 1 << 26}
LARGE = "deepface_couple.jpg"  # 2280 x 1588


@pytest.fixture(scope="module")
def large_jpeg(photos: Path) -> bytes:
    return (photos / LARGE).read_bytes()


@pytest.mark.parametrize("reduce_to", [200, 300, 640, 1000, 1139, 1140, 1141, 2000, 4000])
def test_the_smallest_dct_scale_keeping_reduce_to_is_chosen(
    large_jpeg: bytes, reduce_to: int
) -> None:
    full = decode_image(large_jpeg, **LIMITS)
    reduced = decode_image(large_jpeg, reduce_to=reduce_to, **LIMITS)
    long_side = max(reduced.width, reduced.height)

    assert long_side >= min(reduce_to, max(full.width, full.height))
    assert reduced.scale in (1.0, 0.5, 0.25, 0.125)
    assert reduced.width == pytest.approx(full.width * reduced.scale, abs=1)
    assert reduced.height == pytest.approx(full.height * reduced.scale, abs=1)
    if reduced.scale < 1.0:  # one more halving would have fallen below reduce_to
        assert long_side / 2 < reduce_to
    assert reduced.sha256 == full.sha256


def test_reduced_pixels_are_the_full_image_shrunk(large_jpeg: bytes) -> None:
    full = decode_image(large_jpeg, **LIMITS)
    reduced = decode_image(large_jpeg, reduce_to=640, **LIMITS)
    shrunk = cv2.resize(full.pixels, (reduced.width, reduced.height), interpolation=cv2.INTER_AREA)

    assert reduced.scale == 0.5
    difference = np.abs(shrunk.astype(np.int16) - reduced.pixels.astype(np.int16))
    assert difference.mean() < 2.0


def test_a_jpeg_already_small_enough_is_decoded_whole(photos: Path) -> None:
    data = (photos / "deepface_selfie-many-people.jpg").read_bytes()  # 600 x 604

    assert decode_image(data, reduce_to=300, **LIMITS).scale == 0.5  # 302 px long side
    assert decode_image(data, reduce_to=303, **LIMITS).scale == 1.0  # a half is too small
    assert decode_image(data, reduce_to=640, **LIMITS).scale == 1.0


def test_other_formats_are_never_reduced(large_jpeg: bytes) -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(large_jpeg)).save(buffer, format="PNG", compress_level=1)

    decoded = decode_image(buffer.getvalue(), reduce_to=300, **LIMITS)

    assert decoded.scale == 1.0
    assert (decoded.width, decoded.height) == (2280, 1588)


def test_the_pixel_limit_applies_to_the_full_size(large_jpeg: bytes) -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(large_jpeg, max_bytes=1 << 26, max_pixels=2280 * 1588 - 1, reduce_to=300)


def test_a_rotated_jpeg_is_reduced_then_turned_upright(large_jpeg: bytes) -> None:
    source = Image.open(io.BytesIO(large_jpeg))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", quality=90, exif=exif)

    decoded = decode_image(buffer.getvalue(), reduce_to=640, **LIMITS)

    assert decoded.scale == 0.5
    assert (decoded.width, decoded.height) == (794, 1140)  # upright: portrait
