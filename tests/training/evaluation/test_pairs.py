"""LFW pairs.txt parsing and the even subset of its folds."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.evaluation import (
    LfwPair,
    lfw_identity,
    pair_images,
    read_lfw_pairs,
    select_pairs,
)

# 2 folds of 1 same + 1 different pair each.
TINY = "2 1\nA\t1\t2\nB\t1\tC\t3\nD\t4\t10\nE\t1\tF\t1\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    return path


def test_pairs_file_is_parsed_fold_by_fold(tmp_path: Path) -> None:
    assert read_lfw_pairs(write(tmp_path, TINY)) == [
        LfwPair("A/A_0001.jpg", "A/A_0002.jpg", True, 0),
        LfwPair("B/B_0001.jpg", "C/C_0003.jpg", False, 0),
        LfwPair("D/D_0004.jpg", "D/D_0010.jpg", True, 1),
        LfwPair("E/E_0001.jpg", "F/F_0001.jpg", False, 1),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("ten 300\n", "header"),
        ("2 1\nA\t1\t2\n", "expected 4 pairs, got 1"),
        # A different pair where fold 0's same pair belongs (line 2).
        ("2 1\nB\t1\tC\t3\nA\t1\t2\nD\t4\t10\nE\t1\tF\t1\n", r":2: expected a same pair"),
        ("2 1\nA\t1\t2\nB\t1\tC\tx\nD\t4\t10\nE\t1\tF\t1\n", r":3: expected a different pair"),
    ],
)
def test_malformed_pairs_files_are_refused_with_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        read_lfw_pairs(write(tmp_path, text))


def test_the_shared_lfw_pairs_are_ten_balanced_folds(data_root: Path) -> None:
    pairs = read_lfw_pairs(data_root / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    for fold in range(10):
        in_fold = [p for p in pairs if p.fold == fold]
        assert sum(p.same for p in in_fold) == 300
        assert sum(not p.same for p in in_fold) == 300
    images = pair_images(pairs)
    assert len(images) == 7701  # shared/README.md: the 7,701 images of View 2
    assert all((data_root / "lfw" / "images" / name).is_file() for name in images[::500])
    assert all(lfw_identity(p.first) == lfw_identity(p.second) for p in pairs if p.same)
    assert not any(lfw_identity(p.first) == lfw_identity(p.second) for p in pairs if not p.same)


def test_select_pairs_takes_the_first_of_each_fold_and_kind(tmp_path: Path) -> None:
    pairs = read_lfw_pairs(write(tmp_path, TINY))
    assert select_pairs(pairs, None) == pairs
    assert select_pairs(pairs, 100) == pairs
    # 2 pairs over 2 folds x 2 kinds: at least one of each.
    assert select_pairs(pairs, 2) == pairs


def test_select_pairs_keeps_the_lfw_protocol_balanced(data_root: Path) -> None:
    pairs = read_lfw_pairs(data_root / "lfw" / "pairs.txt")
    chosen = select_pairs(pairs, 200)
    assert len(chosen) == 200
    for fold in range(10):
        same = [p for p in chosen if p.fold == fold and p.same]
        different = [p for p in chosen if p.fold == fold and not p.same]
        assert same == [p for p in pairs if p.fold == fold and p.same][:10]
        assert different == [p for p in pairs if p.fold == fold and not p.same][:10]


def test_lfw_identity_is_the_folder() -> None:
    assert lfw_identity("George_W_Bush/George_W_Bush_0007.jpg") == "George_W_Bush"
