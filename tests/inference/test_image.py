"""decode_image: accepted formats, modes, orientation, limits, errors, fuzzing."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, features

from app.errors import FaceRecError, ImageTooLarge, InvalidImage, UnsupportedImageType
from app.inference.image import ACCEPTED_FORMATS, decode_image, image_to_rgb

# Real photos, in the `photos` folder of tests/conftest.py.
JPEG_PHOTO = "insightface_t1.jpg"
PNG_PHOTO = "insightface_Tom_Hanks_54745.png"

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
DOMAIN_ERRORS = (InvalidImage, UnsupportedImageType, ImageTooLarge)

RED = (220, 30, 30)
GREEN = (30, 200, 40)
BLUE = (30, 40, 210)
WHITE = (245, 245, 245)
# Quadrants top-left, top-right, bottom-left, bottom-right: no rotation or flip
# of the picture leaves it unchanged.
QUADRANT_COLOURS = (RED, GREEN, BLUE, WHITE)


def decode(data: bytes, **limits: int) -> Any:
    return decode_image(
        data,
        max_bytes=limits.get("max_bytes", MAX_BYTES),
        max_pixels=limits.get("max_pixels", MAX_PIXELS),
    )


def quadrants(width: int = 64, height: int = 48) -> NDArray[np.uint8]:
    pixels = np.empty((height, width, 3), np.uint8)
    half_h, half_w = height // 2, width // 2
    pixels[:half_h, :half_w] = QUADRANT_COLOURS[0]
    pixels[:half_h, half_w:] = QUADRANT_COLOURS[1]
    pixels[half_h:, :half_w] = QUADRANT_COLOURS[2]
    pixels[half_h:, half_w:] = QUADRANT_COLOURS[3]
    return pixels


def encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def quadrants_encoded(image_format: str, **params: Any) -> bytes:
    return encode(Image.fromarray(quadrants()), image_format, **params)


def with_orientation(image_format: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # ExifTags.Base.Orientation
    params: dict[str, Any] = {"exif": exif}
    if image_format == "JPEG":
        params["quality"] = 95
    elif image_format == "WEBP":
        params["lossless"] = True
    return quadrants_encoded(image_format, **params)


def assert_close(actual: NDArray[np.uint8], expected: NDArray[np.uint8], tolerance: float) -> None:
    assert actual.shape == expected.shape
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert float(difference.mean()) <= tolerance


def assert_rgb_array(pixels: NDArray[Any], width: int, height: int) -> None:
    assert pixels.shape == (height, width, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous


# --- accepted formats -------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "params", "tolerance"),
    [
        ("JPEG", {"quality": 90}, 6.0),
        ("PNG", {}, 0.0),
        ("WEBP", {"quality": 90}, 8.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("BMP", {}, 0.0),
    ],
    ids=["jpeg", "png", "webp-lossy", "webp-lossless", "bmp"],
)
def test_accepted_format_round_trips_size_and_colours(
    image_format: str, params: dict[str, Any], tolerance: float
) -> None:
    data = quadrants_encoded(image_format, **params)

    decoded = decode(data)

    assert decoded.format == image_format
    assert (decoded.width, decoded.height) == (64, 48)
    assert_rgb_array(decoded.pixels, 64, 48)
    assert_close(decoded.pixels, quadrants(), tolerance)


def test_sha256_is_of_the_input_bytes() -> None:
    data = quadrants_encoded("PNG")

    assert decode(data).sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("name", "image_format"), [(JPEG_PHOTO, "JPEG"), (PNG_PHOTO, "PNG")], ids=["jpeg", "png"]
)
def test_real_photo_decodes_to_pillows_pixels(photos: Path, name: str, image_format: str) -> None:
    path = photos / name
    data = path.read_bytes()
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB"))

    decoded = decode(data)

    assert decoded.format == image_format
    assert_rgb_array(decoded.pixels, expected.shape[1], expected.shape[0])
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()


# --- EXIF orientation ---------------------------------------------------------------

# Orientation tag -> quarter turns counter-clockwise (np.rot90's k) that make it upright.
ROTATIONS = {1: 0, 3: 2, 6: -1, 8: 1}


@pytest.mark.parametrize("orientation", sorted(ROTATIONS))
@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(image_format: str, orientation: int) -> None:
    data = with_orientation(image_format, orientation)

    decoded = decode(data)

    expected = np.rot90(quadrants(), ROTATIONS[orientation])
    assert_close(decoded.pixels, expected, tolerance=4.0)
    assert decoded.pixels.flags.c_contiguous


@pytest.mark.parametrize(("extra_pixels", "accepted"), [(0, True), (1, False)])
def test_pixel_limit_applies_equally_to_a_rotated_image(extra_pixels: int, accepted: bool) -> None:
    data = with_orientation("JPEG", 6)  # stored 64x48, upright 48x64
    max_pixels = 64 * 48 - extra_pixels

    if accepted:
        assert decode(data, max_pixels=max_pixels).pixels.shape == (64, 48, 3)
    else:
        with pytest.raises(ImageTooLarge):
            decode(data, max_pixels=max_pixels)


# --- modes ----------------------------------------------------------------------------


def sixteen_bit_png() -> bytes:
    samples = np.array([[0, 257 * 100, 32896, 65535]], np.uint16)
    return encode(Image.fromarray(samples), "PNG")


def palette_with_transparency(image_format: str) -> bytes:
    image = Image.new("P", (4, 2))
    image.putpalette([*RED, *GREEN] + [0, 0, 0] * 254)
    image.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    return encode(image, image_format, transparency=1)


def rgba_image() -> Image.Image:
    # Alpha 255, 128, 0 over the same colour, then an opaque white pixel.
    pixels = np.array(
        [[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0], [*WHITE, 255]]]
    )
    return Image.fromarray(pixels.astype(np.uint8), "RGBA")


MODE_CASES: dict[str, Callable[[], bytes]] = {
    "L-jpeg": lambda: encode(Image.new("L", (5, 3), 77), "JPEG"),
    "L-png-colour-key": lambda: encode(Image.new("L", (5, 3), 77), "PNG", transparency=77),
    "LA-png": lambda: encode(Image.new("LA", (5, 3), (77, 128)), "PNG"),
    "P-png-transparency": lambda: palette_with_transparency("PNG"),
    "P-bmp": lambda: encode(Image.new("P", (5, 3), 3), "BMP"),
    "RGB-png-colour-key": lambda: encode(Image.new("RGB", (5, 3), RED), "PNG", transparency=RED),
    "RGBA-png": lambda: encode(rgba_image(), "PNG"),
    "RGBA-webp": lambda: encode(rgba_image(), "WEBP", lossless=True),
    "RGBA-bmp": lambda: encode(rgba_image(), "BMP"),
    "CMYK-jpeg": lambda: encode(Image.new("CMYK", (5, 3), (0, 255, 255, 0)), "JPEG"),
    "YCbCr-jpeg": lambda: encode(Image.new("YCbCr", (5, 3), (81, 90, 240)), "JPEG"),
    "I;16-png": sixteen_bit_png,
    "1-png": lambda: encode(Image.new("1", (5, 3), 1), "PNG"),
    "1-png-transparency": lambda: encode(Image.new("1", (5, 3), 1), "PNG", transparency=0),
    "1-bmp": lambda: encode(Image.new("1", (5, 3), 1), "BMP"),
}


@pytest.mark.parametrize("make", MODE_CASES.values(), ids=MODE_CASES.keys())
def test_every_mode_decodes_to_rgb_uint8(make: Callable[[], bytes]) -> None:
    data = make()
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size

    decoded = decode(data)

    assert_rgb_array(decoded.pixels, width, height)


@pytest.mark.parametrize(
    ("make", "expected_row"),
    [
        (lambda: encode(rgba_image(), "PNG"), [(200, 100, 50), (100, 50, 25), (0, 0, 0), WHITE]),
        (lambda: encode(rgba_image(), "WEBP", lossless=True), [(200, 100, 50), (100, 50, 25)]),
        (lambda: palette_with_transparency("PNG"), [RED, (0, 0, 0), RED, (0, 0, 0)]),
        (lambda: encode(Image.new("LA", (2, 1), (80, 0)), "PNG"), [(0, 0, 0), (0, 0, 0)]),
    ],
    ids=["rgba-png", "rgba-webp", "palette-png", "la-png"],
)
def test_transparency_is_composited_onto_black(
    make: Callable[[], bytes], expected_row: list[tuple[int, int, int]]
) -> None:
    decoded = decode(make())

    actual = decoded.pixels[0, : len(expected_row)].astype(np.int16)
    np.testing.assert_allclose(actual, np.array(expected_row), atol=1)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    decoded = decode(sixteen_bit_png())

    np.testing.assert_array_equal(decoded.pixels[0, :, 0], [0, 100, 128, 255])
    np.testing.assert_array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])


@pytest.mark.parametrize(
    "make", [lambda: quadrants_encoded("PNG"), sixteen_bit_png], ids=["png", "png-16-bit"]
)
def test_pixels_are_read_only(make: Callable[[], bytes]) -> None:
    decoded = decode(make())

    assert not decoded.pixels.flags.writeable


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("1", (3, 2), 1), (255, 255, 255)),
        (Image.new("L", (3, 2), 77), (77, 77, 77)),
        (Image.new("LA", (3, 2), (200, 0)), (0, 0, 0)),
        (Image.new("RGBA", (3, 2), (*RED, 255)), RED),
        (Image.new("CMYK", (3, 2), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("YCbCr", (3, 2), (255, 128, 128)), (255, 255, 255)),
        (Image.new("I;16", (3, 2), 65535), (255, 255, 255)),
        (Image.new("I;16B", (3, 2), 257 * 9), (9, 9, 9)),
        (Image.new("I", (3, 2), 257 * 200), (200, 200, 200)),
        (Image.new("I", (3, 2), 70000), (255, 255, 255)),
    ],
    ids=lambda value: value.mode if isinstance(value, Image.Image) else "",
)
def test_image_to_rgb_converts_any_mode(image: Image.Image, expected: tuple[int, int, int]) -> None:
    pixels = image_to_rgb(image)

    assert_rgb_array(pixels, 3, 2)
    np.testing.assert_allclose(pixels.astype(np.int16), np.full((2, 3, 3), expected), atol=1)


# --- animation and multi-picture files --------------------------------------------------


def two_frames(image_format: str, **params: Any) -> bytes:
    first, second = Image.new("RGB", (8, 6), RED), Image.new("RGB", (8, 6), GREEN)
    return encode(first, image_format, save_all=True, append_images=[second], **params)


@pytest.mark.parametrize(
    ("image_format", "params", "reported"),
    [
        ("PNG", {}, "PNG"),
        ("WEBP", {"lossless": True}, "WEBP"),
        ("MPO", {}, "JPEG"),
    ],
    ids=["apng", "animated-webp", "mpo"],
)
def test_multi_frame_image_decodes_its_first_frame(
    image_format: str, params: dict[str, Any], reported: str
) -> None:
    data = two_frames(image_format, **params)
    with Image.open(io.BytesIO(data)) as image:
        assert getattr(image, "n_frames", 1) == 2

    decoded = decode(data)

    assert decoded.format == reported
    assert_close(decoded.pixels, np.full((6, 8, 3), RED, np.uint8), tolerance=3.0)


# --- errors -------------------------------------------------------------------------------


def truncated(image_format: str) -> bytes:
    data = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)),
        image_format,
    )
    return data[: len(data) // 2]


INVALID_CASES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "one-byte": lambda: b"\xff",
    "jpeg-signature-only": lambda: b"\xff\xd8\xff",
    "png-signature-only": lambda: b"\x89PNG\r\n\x1a\n",
    "truncated-jpeg": lambda: truncated("JPEG"),
    "truncated-png": lambda: truncated("PNG"),
    "truncated-webp": lambda: truncated("WEBP"),
    "truncated-bmp": lambda: truncated("BMP"),
    "jpeg-without-end": lambda: quadrants_encoded("JPEG")[:-2],
}


@pytest.mark.parametrize("make", INVALID_CASES.values(), ids=INVALID_CASES.keys())
def test_undecodable_bytes_raise_invalid_image(make: Callable[[], bytes]) -> None:
    with pytest.raises(InvalidImage) as caught:
        decode(make())

    assert caught.value.code == "undecodable_image"


NOT_IMAGES: dict[str, Callable[[], bytes]] = {
    "text": lambda: b"this is not an image, honest",
    "pdf": lambda: b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n",
    "random": lambda: random.Random(1).randbytes(4096),
    "zeros": lambda: bytes(4096),
    "wav": lambda: b"RIFF\x24\x00\x00\x00WAVEfmt ",
}


@pytest.mark.parametrize("make", NOT_IMAGES.values(), ids=NOT_IMAGES.keys())
def test_bytes_of_no_image_format_raise_unsupported_type(make: Callable[[], bytes]) -> None:
    """A README, a PDF or noise is the wrong kind of upload (415), not a damaged image."""
    with pytest.raises(UnsupportedImageType) as caught:
        decode(make())

    assert caught.value.code == "unsupported_media_type"
    assert caught.value.details["accepted"] == list(ACCEPTED_FORMATS)
    assert "not an image" in caught.value.message


UNSUPPORTED_CASES: dict[str, Callable[[], bytes]] = {
    "GIF": lambda: quadrants_encoded("GIF"),
    "TIFF": lambda: quadrants_encoded("TIFF"),
    "ICO": lambda: quadrants_encoded("ICO"),
    "PPM": lambda: quadrants_encoded("PPM"),
    "PCX": lambda: quadrants_encoded("PCX"),
    "TGA": lambda: quadrants_encoded("TGA"),
    "JPEG2000": lambda: quadrants_encoded("JPEG2000"),
}
if features.check("avif"):
    UNSUPPORTED_CASES["AVIF"] = lambda: quadrants_encoded("AVIF")


@pytest.mark.parametrize(
    ("image_format", "make"), UNSUPPORTED_CASES.items(), ids=UNSUPPORTED_CASES.keys()
)
def test_other_image_formats_raise_unsupported_type(
    image_format: str, make: Callable[[], bytes]
) -> None:
    with pytest.raises(UnsupportedImageType) as caught:
        decode(make())

    error = caught.value
    assert error.code == "unsupported_media_type"
    assert error.details["format"] == image_format
    assert error.details["accepted"] == list(ACCEPTED_FORMATS)
    assert image_format in error.message
    assert all(name in error.message for name in ACCEPTED_FORMATS)


def test_animated_gif_is_unsupported() -> None:
    with pytest.raises(UnsupportedImageType):
        decode(two_frames("GIF"))


# --- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra_bytes", "accepted"), [(0, True), (1, False)])
def test_byte_limit(extra_bytes: int, accepted: bool) -> None:
    data = quadrants_encoded("PNG")
    max_bytes = len(data) - extra_bytes

    if accepted:
        assert decode(data, max_bytes=max_bytes).format == "PNG"
    else:
        with pytest.raises(ImageTooLarge) as caught:
            decode(data, max_bytes=max_bytes)
        assert caught.value.code == "image_too_large"


def test_byte_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        decode(b"\x00" * 101, max_bytes=100)


def with_png_size(width: int, height: int) -> bytes:
    data = bytearray(quadrants_encoded("PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(data[ihdr : ihdr + 17]))
    return bytes(data)


def with_bmp_size(width: int, height: int) -> bytes:
    data = bytearray(quadrants_encoded("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def with_jpeg_size(width: int, height: int) -> bytes:
    data = bytearray(quadrants_encoded("JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def with_webp_size(width: int, height: int) -> bytes:
    data = bytearray(quadrants_encoded("WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    (bits,) = struct.unpack("<I", data[21:25])
    bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
    data[21:25] = struct.pack("<I", bits)
    return bytes(data)


@pytest.mark.parametrize(
    "with_size",
    [with_png_size, with_bmp_size, with_jpeg_size, with_webp_size],
    ids=["png", "bmp", "jpeg", "webp"],
)
@pytest.mark.parametrize(
    ("width", "height"),
    [(1001, 1000), (9000, 9000), (16384, 16384)],
    ids=["just-over-limit", "under-pillow-limit", "pillow-bomb"],
)
def test_declared_pixel_count_is_refused_before_decoding(
    with_size: Callable[[int, int], bytes], width: int, height: int
) -> None:
    # The pixel data is the small original's: decoding it would fail as truncated
    # (PNG, BMP, WebP) or give a mostly grey picture (libjpeg fills what is missing
    # after a premature end marker), so ImageTooLarge shows only the header was read.
    data = with_size(width, height)

    with pytest.raises(ImageTooLarge) as caught:
        decode(data, max_pixels=1_000_000)

    assert caught.value.code == "image_too_large"


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """A valid 30000x30000 1-bit PNG: ~110 kB that decode to 900 M pixels."""
    side = 30000
    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows = row * 1000
    idat = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def peak_rss_bytes() -> int:
    resource = pytest.importorskip("resource")
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


@pytest.mark.parametrize("max_pixels", [MAX_PIXELS, 10**10], ids=["own-limit", "pillow-limit"])
def test_decompression_bomb_is_refused_without_allocating(png_bomb: bytes, max_pixels: int) -> None:
    global_limit = Image.MAX_IMAGE_PIXELS
    peak_before = peak_rss_bytes()

    with pytest.raises(ImageTooLarge):
        decode(png_bomb, max_pixels=max_pixels)

    assert peak_rss_bytes() - peak_before < 100 * 1024 * 1024
    assert global_limit == Image.MAX_IMAGE_PIXELS


# --- robustness and speed -------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random) -> bytes:
    mutated = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 16)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del mutated[rng.randrange(len(mutated)) :]
    elif kind == 2:  # overwrite a span with noise
        start = rng.randrange(len(mutated))
        mutated[start : start + rng.randint(1, 256)] = rng.randbytes(rng.randint(1, 256))
    elif kind == 3:  # duplicate a span
        start = rng.randrange(len(mutated))
        mutated[start:start] = mutated[start : start + rng.randint(1, 512)]
    else:  # corrupt the header, where the parsers are most intricate
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(min(len(mutated), 1024))] = rng.randrange(256)
    return bytes(mutated)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF
@pytest.mark.parametrize("name", [JPEG_PHOTO, PNG_PHOTO], ids=["jpeg", "png"])
def test_mutated_photos_raise_only_domain_errors(photos: Path, name: str) -> None:
    original = (photos / name).read_bytes()
    rng = random.Random(20240601)
    outcomes: dict[str, int] = {}

    for _ in range(300):
        data = mutate(original, rng)
        try:
            decoded = decode(data, max_pixels=16_000_000)
        except DOMAIN_ERRORS as error:
            outcome = error.code
        except FaceRecError as error:  # pragma: no cover - would be a bug
            pytest.fail(f"unexpected domain error {error!r}")
        else:
            assert decoded.pixels.ndim == 3
            assert decoded.pixels.shape[2] == 3
            outcome = "decoded"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    assert outcomes.get("undecodable_image", 0) > 0


def test_large_jpeg_decodes_to_the_same_pixels_as_pillow() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (300, 400, 3), np.uint8)
    large = Image.fromarray(noise).resize((4000, 3000), Image.Resampling.BILINEAR)
    data = encode(large, "JPEG", quality=90)
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(decode(data).pixels, expected)
