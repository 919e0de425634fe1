"""Close-up identification on CFP frontal photos (faces filling the frame), through HTTP.

Protocol: for each of the first ``identities`` CFP identities (by folder name),
``frontal/01.jpg`` is enrolled (``POST /enroll``, face_policy=largest, the
service's quality gates apply) into a fresh collection; ``frontal/02..10.jpg``
go to ``POST /identify`` (top_k 1, threshold -1). Rank-1 counts a probe right
when its largest face's best candidate is its identity; refused enrollments and
probes without a face count as errors and are reported apart. CFP faces fill
70-100% of the frame: the case SCRFD's anchors handle worst.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

PROBES = tuple(f"{n:02d}.jpg" for n in range(2, 11))


@dataclass(slots=True)
class CloseupResult:
    collection: str
    identities: int = 0
    enrolled: int = 0
    refused_enrollments: dict[str, str] = field(default_factory=dict)  # identity -> code
    probes: int = 0
    correct: int = 0
    probes_without_face: int = 0
    seconds: float = 0.0
    misses: list[dict[str, object]] = field(default_factory=list)

    @property
    def rank1(self) -> float:
        return self.correct / self.probes if self.probes else float("nan")


def run_cfp(client: httpx.Client, cfp_dir: Path, collection: str, identities: int) -> CloseupResult:
    from bench.accuracy import enroll_identity, identify_best

    folders = sorted(p for p in (cfp_dir / "images").iterdir() if p.is_dir())[:identities]
    result = CloseupResult(collection=collection, identities=len(folders))
    start = time.perf_counter()
    for folder in tqdm(folders, desc="CFP /enroll", unit="id", mininterval=2.0):
        faces, codes = enroll_identity(
            client, collection, folder.name, [folder / "frontal" / "01.jpg"]
        )
        if faces:
            result.enrolled += 1
        else:
            result.refused_enrollments[folder.name] = Counter(codes).most_common(1)[0][0]
    probes = [(folder.name, folder / "frontal" / name) for folder in folders for name in PROBES]
    for identity, photo in tqdm(probes, desc="CFP /identify", unit="img", mininterval=2.0):
        best = identify_best(client, collection, photo)
        result.probes += 1
        name = str(photo.relative_to(cfp_dir / "images"))
        if best is None:
            result.probes_without_face += 1
            result.misses.append({"probe": name, "expected": identity, "best": None})
        elif best[0] == identity:
            result.correct += 1
        else:
            result.misses.append(
                {"probe": name, "expected": identity, "best": best[0], "similarity": best[1]}
            )
    result.seconds = time.perf_counter() - start
    return result


def print_cfp(result: CloseupResult) -> None:
    print(
        f"\nCFP frontal close-ups ({result.identities} identities, 01.jpg enrolled, "
        f"02..10 identified): rank-1 {result.rank1 * 100:.2f}% ({result.correct}/{result.probes});"
        f" enrollments refused: {len(result.refused_enrollments)} "
        f"{result.refused_enrollments or ''}; probes without a face: {result.probes_without_face}"
    )
    for miss in result.misses[:10]:
        best = f"best {miss['best']} ({miss['similarity']:.3f})" if miss["best"] else "no face"
        print(f"  miss: {miss['probe']} (identity {miss['expected']}): {best}")


def delete_cfp_subjects(
    client: httpx.Client, collection: str, result: CloseupResult, cfp_dir: Path
) -> None:
    from bench.accuracy import delete_subjects

    folders = sorted(p.name for p in (cfp_dir / "images").iterdir() if p.is_dir())
    delete_subjects(client, collection, folders[: result.identities])
