"""Hand-made hostile and unusual image files for the hostile-input tests."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG from raw filtered scanlines (each row starts with its filter byte)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def rgb16_png(face: Image.Image) -> bytes:
    """16 bits per channel RGB (Pillow cannot write these itself)."""
    pixels = np.asarray(face.convert("RGB"), dtype=np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return png(face.width, face.height, 16, 2, rows)


def gray16_png(face: Image.Image) -> bytes:
    pixels = np.asarray(face.convert("L"), dtype=np.uint16) * 257
    image = Image.fromarray(pixels)  # uint16 -> mode "I;16"
    assert image.mode == "I;16"
    return encode(image, "PNG")


def declared_size_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (CRC fixed) declares another size."""
    return png(width, height, 8, 0, b"\x00\x00")


def zero_bomb_png(side: int) -> bytes:
    """A real side x side grayscale PNG of zeros: tiny file, huge decoded size."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def text_bomb_png(face: Image.Image) -> bytes:
    """A face PNG carrying a zTXt chunk that inflates to 64 MB."""
    plain = encode(face.convert("RGB"), "PNG")
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    return plain[:33] + bomb + plain[33:]  # after the signature and IHDR


def bad_crc_png(face: Image.Image) -> bytes:
    data = bytearray(encode(face.convert("RGB"), "PNG"))
    data[29] ^= 0xFF  # the IHDR CRC
    return bytes(data)


def declared_size_jpeg(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 frame header claiming another size."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def corrupt_header_jpeg(jpeg: bytes) -> bytes:
    return jpeg[:2] + bytes((i * 37) % 256 for i in range(200)) + jpeg[202:]


def rotated_with_exif(face: Image.Image) -> bytes:
    """Stored on its side, with EXIF orientation 6 (rotate 90 clockwise to display)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return encode(face.rotate(90, expand=True), "JPEG", exif=exif.tobytes())


def animated(face: Image.Image, image_format: str) -> bytes:
    grey = Image.new("RGB", face.size, (128, 128, 128))
    return encode(
        face.convert("RGB"), image_format, save_all=True, append_images=[grey], duration=100
    )


def gif_bomb() -> bytes:
    """A GIF whose logical screen and frame claim 65535 x 65535."""
    small = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    small[6:10] = struct.pack("<HH", 65535, 65535)
    at = small.index(b"\x2c")  # image descriptor
    small[at + 5 : at + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(small)


def with_alpha(face: Image.Image) -> bytes:
    rgba = face.convert("RGBA")
    alpha = Image.new("L", face.size, 255)
    alpha.paste(0, (0, 0, face.width // 4, face.height // 4))
    rgba.putalpha(alpha)
    return encode(rgba, "PNG")


def palette_with_transparency(face: Image.Image) -> bytes:
    palette = face.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    return encode(palette, "PNG", transparency=0)


ImageMaker = Callable[[Image.Image, bytes], bytes]
