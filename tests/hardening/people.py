"""LFW people for the load tests: a deterministic pick of persons with several photos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Person:
    name: str
    photos: tuple[Path, ...]  # sorted; at least ``min_photos``

    def upload(self, *indexes: int) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [
            ("images", (self.photos[i].name, self.photos[i].read_bytes(), "image/jpeg"))
            for i in indexes
        ]


def lfw_people(data_root: Path, count: int, *, min_photos: int = 3, skip: int = 0) -> list[Person]:
    """``count`` persons with at least ``min_photos`` photos, in name order after ``skip``."""
    people: list[Person] = []
    for folder in sorted((data_root / "lfw" / "images").iterdir()):
        photos = tuple(sorted(folder.glob("*.jpg")))
        if len(photos) >= min_photos:
            people.append(Person(folder.name, photos))
    selected = people[skip : skip + count]
    assert len(selected) == count, f"only {len(selected)} LFW persons with {min_photos} photos"
    return selected
