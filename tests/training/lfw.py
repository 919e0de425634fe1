"""A small LFW View 2 (real images) for the training tests that run the promotion gate."""

from __future__ import annotations

import shutil
from pathlib import Path


def mini_lfw(data_root: Path, root: Path) -> Path:
    """LFW View 2 cut to 2 same + 2 different pairs per fold, copied under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = (data_root / "lfw" / "pairs.txt").read_text(encoding="utf-8").splitlines()
    per_fold = int(lines[0].split()[1])
    kept = []
    for fold in range(10):
        start = 1 + fold * 2 * per_fold
        kept += lines[start : start + 2] + lines[start + per_fold : start + per_fold + 2]
    (root / "pairs.txt").write_text("10 2\n" + "\n".join(kept) + "\n", encoding="utf-8")
    (root / "images").mkdir()
    for line in kept:
        fields = line.split()
        names = [fields[0]] if len(fields) == 3 else [fields[0], fields[2]]
        for name in names:
            target = root / "images" / name
            if not target.exists():
                shutil.copytree(data_root / "lfw" / "images" / name, target)
    return root
