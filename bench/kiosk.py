"""The kiosk sequence: people stepping up one after another to a door or kiosk camera.

Five people are enrolled from two LFW photos each; the stream shows *other*
photos of them, and of two people who are not enrolled, one photo per visit,
each held for ``HOLD_FRAMES`` frames at nearly the same place of a 640x480
frame (drifting a few pixels, as a person standing still does), with 0, 1, 2 or
3 empty frames between visits in turn: the next person takes the last one's
place, often with no frame between (a cut). Consecutive visits are always of
different people, and two of the non-enrolled people come back later.

Used by bench/stream.py (the figures) and tests/stream (the guarantees).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
HOLD_FRAMES = 10
GAPS = (0, 1, 2, 3)  # empty frames before each visit, in turn
PHOTO_LEFT, PHOTO_TOP = 195, 115  # LFW photos are 250x250, the face in the middle
BACKGROUND = 24

# (subject, LFW person, photos enrolled, photos streamed); subject None: not enrolled.
ENROLLED = (
    ("George W. Bush", "George_W_Bush", (7, 16), (65, 145, 203)),
    ("Colin Powell", "Colin_Powell", (40, 49), (71, 95, 133)),
    ("Tony Blair", "Tony_Blair", (18, 32), (48, 53, 64)),
    ("Donald Rumsfeld", "Donald_Rumsfeld", (39, 60), (51, 67, 83)),
    ("Gerhard Schroeder", "Gerhard_Schroeder", (5, 17), (25, 27, 32)),
)
STRANGERS = (("Vladimir_Putin", (16, 21)), ("Serena_Williams", (1, 3)))
# Visit order: (person, photo); consecutive visits are different people.
VISITS = (
    ("George_W_Bush", 65),
    ("Colin_Powell", 71),
    ("Tony_Blair", 48),
    ("Donald_Rumsfeld", 51),
    ("Gerhard_Schroeder", 25),
    ("Vladimir_Putin", 16),
    ("George_W_Bush", 145),
    ("Colin_Powell", 95),
    ("Serena_Williams", 1),
    ("Tony_Blair", 53),
    ("Donald_Rumsfeld", 67),
    ("Gerhard_Schroeder", 27),
    ("Vladimir_Putin", 21),
    ("George_W_Bush", 203),
    ("Colin_Powell", 133),
    ("Tony_Blair", 64),
    ("Serena_Williams", 3),
    ("Donald_Rumsfeld", 83),
    ("Gerhard_Schroeder", 32),
)


@dataclass(frozen=True, slots=True)
class Visit:
    person: str  # LFW name
    subject: str | None  # the enrolled name; None: should be unknown
    frames: range  # indices of the visit's frames in the sequence


@dataclass(frozen=True, slots=True)
class Kiosk:
    frames: list[bytes]  # JPEG
    visits: list[Visit]

    def visit_at(self, frame_index: int) -> Visit | None:
        """The visit a frame belongs to; None for the empty frames between visits."""
        for visit in self.visits:
            if frame_index in visit.frames:
                return visit
        return None


def lfw_path(data_root: Path, person: str, number: int) -> Path:
    return data_root / "lfw" / "images" / person / f"{person}_{number:04d}.jpg"


def enrollments(data_root: Path) -> list[tuple[str, list[Path]]]:
    """(subject, photos) of the enrolled people."""
    return [
        (subject, [lfw_path(data_root, person, n) for n in numbers])
        for subject, person, numbers, _ in ENROLLED
    ]


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _frame(photo: np.ndarray | None, step: int) -> np.ndarray:
    canvas = np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), BACKGROUND, dtype=np.uint8)
    if photo is not None:
        dx = round(4 * math.sin(step / 3))
        dy = round(3 * math.cos(step / 4))
        top, left = PHOTO_TOP + dy, PHOTO_LEFT + dx
        canvas[top : top + photo.shape[0], left : left + photo.shape[1]] = photo
    return canvas


def kiosk_sequence(data_root: Path, visits: int | None = None) -> Kiosk:
    """The sequence (all its visits, or the first ``visits``)."""
    subjects = {person: subject for subject, person, _, _ in ENROLLED}
    frames: list[bytes] = []
    out: list[Visit] = []
    empty = encode_jpeg(_frame(None, 0))
    for number, (person, photo_number) in enumerate(VISITS[:visits]):
        frames.extend([empty] * GAPS[number % len(GAPS)])
        with Image.open(lfw_path(data_root, person, photo_number)) as image:
            photo = np.asarray(image.convert("RGB"))
        start = len(frames)
        frames.extend(encode_jpeg(_frame(photo, step)) for step in range(HOLD_FRAMES))
        out.append(Visit(person, subjects.get(person), range(start, len(frames))))
    return Kiosk(frames=frames, visits=out)
