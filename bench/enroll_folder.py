"""Enroll a folder of identity subfolders through a running service's HTTP API.

``python -m bench.enroll_folder --url http://127.0.0.1:8000 --collection cfp DIR``

One ``POST /enroll`` per identity with all its photos (at most ``--per-request`` at a
time, largest face of each photo): the faces land in the gallery exactly as an API
user's would, aligned crops included, ready for ``python -m training finetune
--gallery``. Rejections are counted by their stable code. Re-runs are safe (enrolment
is idempotent per subject and image).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from app.client import FaceRecClient

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def identity_photos(root: Path) -> dict[str, list[Path]]:
    """``root/<identity>/**/<photo>`` grouped by identity, sorted by path."""
    grouped: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if len(parts) > 1 and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            grouped.setdefault(parts[0], []).append(path)
    return grouped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--collection", default="default")
    parser.add_argument("--api-key")
    parser.add_argument("--identities", help="first:last identity names (inclusive) to enroll")
    parser.add_argument("--per-request", type=int, default=20)
    args = parser.parse_args(argv)
    grouped = identity_photos(args.directory)
    if args.identities:
        first, last = args.identities.split(":")
        grouped = {name: paths for name, paths in grouped.items() if first <= name <= last}
    added = 0
    rejected: Counter[str] = Counter()
    with FaceRecClient(args.url, api_key=args.api_key, collection=args.collection) as client:
        for number, (subject, paths) in enumerate(grouped.items(), 1):
            for start in range(0, len(paths), args.per_request):
                answer = client.enroll(
                    subject, paths[start : start + args.per_request], face_policy="largest"
                )
                added += len(answer.faces)
                rejected.update(item.code for item in answer.rejected)
            if number % 25 == 0:
                print(f"{number}/{len(grouped)} subjects, {added} faces", flush=True)
    print(f"{len(grouped)} subjects, {added} faces enrolled, rejected: {dict(rejected)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
