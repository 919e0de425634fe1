"""Untrusted upload bytes -> an upright RGB ``DecodedImage``, or a domain error.

The order of the checks is the security model:

1. byte count, before Pillow sees anything;
2. the format, sniffed by Pillow from the bytes (never from a filename or a
   Content-Type), restricted to ``ACCEPTED_FORMATS`` so no other plugin parses
   an accepted upload;
3. the pixel count declared by the header, before any pixel data is decoded, so
   decompression bombs are refused without allocating their pixels. Pillow's
   global ``Image.MAX_IMAGE_PIXELS`` is left alone; its own bomb error (and the
   bomb warning, where warnings are errors) is mapped to ``ImageTooLarge`` too;
4. the decode itself. ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off, so a
   truncated file is an error rather than a grey-filled image.

Decisions:

- Animated images (APNG, animated WebP) and multi-picture JPEGs (MPO) are
  accepted; the first frame is used, as a still-image viewer would show it.
- Transparency (alpha channels, palette and colour-key transparency) is
  composited onto black, so transparent areas read like the zero padding that
  face detectors already see around letterboxed inputs.
- 16-bit grayscale is scaled to 8 bits over the full range (``round(v / 257)``),
  not clipped. 16-bit colour PNGs are reduced to their high bytes by Pillow.
- ICC profiles are not applied; CMYK uses Pillow's plain conversion.
- The returned pixel array is read-only: it is the one copy made out of
  Pillow's buffer, and ``DecodedImage`` is immutable. Call ``.copy()`` to draw.
- ``reduce_to``: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT
  (libjpeg's scaled decoding, Pillow's draft mode), the smallest whose long side
  is still at least ``reduce_to`` pixels; ``DecodedImage.scale`` says by how
  much. Other formats, and JPEGs already small enough, decode at full size. The
  pixel-count limit always applies to the full size the header declares.
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.types import DecodedImage, ImageArray
from app.errors import FaceRecError, ImageTooLarge, InvalidImage, UnsupportedImageType

# Pillow format names of the formats the service accepts, in Pillow's spelling.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")

# Pillow reports a JPEG carrying an MP (multi-picture) extension, as many phone
# and camera photos do, as "MPO"; it is a JPEG whose first picture we decode.
_REPORTED_FORMAT = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "BMP": "BMP"}

# Modes holding more than 8 bits of grayscale. Among the accepted formats only
# PNG produces them, always with 16-bit samples ("I" comes from older Pillows).
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_UINT16_MAX = 65535

# Leading bytes of the accepted formats (WebP: RIFF....WEBP, checked apart). Bytes
# that start like one of these but do not decode are a damaged image (400); bytes
# that start like none are not an image at all (415, like any other wrong format).
_ACCEPTED_SIGNATURES = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM")

_UNDECODABLE = "the upload is not a decodable image (empty, truncated or corrupt)"


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, reduce_to: int | None = None
) -> DecodedImage:
    """Decode an uploaded JPEG, PNG, WebP or BMP into upright ``(H, W, 3)`` RGB.

    Raises ``ImageTooLarge`` (more than ``max_bytes`` bytes, or a header
    declaring more than ``max_pixels`` pixels), ``UnsupportedImageType`` (an
    image of another format) or ``InvalidImage`` (anything else that does not
    decode). No other exception escapes, whatever the bytes.
    """
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"the upload is {len(data)} bytes; at most {max_bytes} are accepted",
            size_bytes=len(data),
            max_bytes=max_bytes,
        )
    if not data:
        raise InvalidImage("the upload is empty")
    with _open_accepted(data) as image:
        image_format = _REPORTED_FORMAT[str(image.format)]
        _check_pixel_count(image.size, max_pixels)
        full_width = image.size[0]
        if reduce_to is not None and image_format == "JPEG":
            _draft(image, reduce_to)
        scale = image.size[0] / full_width
        pixels = _decode_upright_rgb(image)
    pixels.flags.writeable = False  # already so when numpy wraps Pillow's bytes
    return DecodedImage(
        pixels=pixels,
        sha256=hashlib.sha256(data).hexdigest(),
        format=image_format,
        scale=scale,
    )


def _draft(image: Image.Image, reduce_to: int) -> None:
    """Ask libjpeg for the smallest DCT scale whose long side is >= ``reduce_to``."""
    width, height = image.size
    long_side = max(width, height)
    if long_side < 2 * reduce_to:  # even 1/2 would fall below reduce_to
        return
    ratio = reduce_to / long_side
    # Pillow picks the largest reduction whose result is at least the requested size.
    requested = (max(1, math.ceil(width * ratio)), max(1, math.ceil(height * ratio)))
    try:
        image.draft(image.mode if image.mode in ("RGB", "L") else None, requested)
    except Exception as exc:  # Pillow raises many unrelated types on malformed input
        raise InvalidImage(_UNDECODABLE) from exc


def image_to_rgb(image: Image.Image) -> ImageArray:
    """Pixels of ``image`` (any Pillow mode) as a contiguous ``(H, W, 3)`` uint8 array."""
    if image.mode in _WIDE_GRAY_MODES:
        gray = _scale_16bit_to_8bit(np.asarray(image))
        return np.ascontiguousarray(np.broadcast_to(gray[:, :, np.newaxis], (*gray.shape, 3)))
    if image.has_transparency_data:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        # Pasting through the alpha band onto black is "composite over black".
        rgb = Image.new("RGB", rgba.size)
        rgb.paste(rgba, mask=rgba)
    else:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb)


def _open_accepted(data: bytes) -> Image.Image:
    """Open (parse the header of) ``data`` with the accepted formats' plugins only."""
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise _unaccepted_image_error(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge("the image declares too many pixels") from exc
    except Exception as exc:  # Pillow raises many unrelated types on malformed input
        raise InvalidImage(_UNDECODABLE) from exc


def _unaccepted_image_error(data: bytes) -> FaceRecError:
    """Name the format of bytes no accepted plugin opens; headers only, never decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return ImageTooLarge("the image declares too many pixels")
    except Exception:  # not an image at all (or one Pillow cannot even parse)
        return InvalidImage(_UNDECODABLE) if _starts_like_accepted(data) else _not_an_image()
    if image_format is None or image_format in _REPORTED_FORMAT:
        return InvalidImage(_UNDECODABLE)
    accepted = list(ACCEPTED_FORMATS)
    return UnsupportedImageType(
        f"{image_format} images are not accepted; send one of {', '.join(accepted)}",
        format=image_format,
        accepted=accepted,
    )


def _starts_like_accepted(data: bytes) -> bool:
    """Whether ``data`` begins like an accepted format (a truncated or damaged one)."""
    head = data[:12]
    if head[:4] == b"RIFF":
        return len(head) < 12 or head[8:12] == b"WEBP"
    return any(
        head.startswith(signature) or signature.startswith(head)
        for signature in _ACCEPTED_SIGNATURES
    )


def _not_an_image() -> UnsupportedImageType:
    """Bytes no image format claims (text, PDF, HTML, SVG...): the wrong kind of upload."""
    accepted = list(ACCEPTED_FORMATS)
    return UnsupportedImageType(
        f"the upload is not an image; send one of {', '.join(accepted)}",
        format=None,
        accepted=accepted,
    )


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    # A transpose swaps width and height, so the product holds for the upright image too.
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; "
            f"at most {max_pixels} are accepted",
            width=width,
            height=height,
            max_pixels=max_pixels,
        )


def _decode_upright_rgb(image: Image.Image) -> ImageArray:
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
        return image_to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge("the image declares too many pixels") from exc
    except MemoryError as exc:
        raise ImageTooLarge("the image needs more memory than is available") from exc
    except Exception as exc:  # Pillow raises many unrelated types on malformed input
        raise InvalidImage(_UNDECODABLE) from exc


def _scale_16bit_to_8bit(samples: NDArray[np.generic]) -> ImageArray:
    """Map 0..65535 linearly onto 0..255 with rounding (65535 / 255 == 257)."""
    wide: NDArray[np.uint32] = np.clip(samples, 0, _UINT16_MAX).astype(np.uint32)
    wide += 128
    wide //= 257
    return wide.astype(np.uint8)


def declared_pixels(data: bytes) -> int:
    """Pixels the image header of ``data`` declares (headers only, nothing decoded).

    0 for bytes no accepted plugin opens: ``decode_image`` reports those properly.
    """
    try:
        with _open_accepted(data) as image:
            width, height = image.size
    except FaceRecError:
        return 0
    return max(0, width) * max(0, height)
