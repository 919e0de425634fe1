"""What runs through onnxruntime runs without PyTorch: the evaluation numerics, the benchmarks
that use them, and ``python -m training evaluate`` / ``reembed`` (their help and their real
code paths), each in a subprocess where importing torch fails and is recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.gallery.embedded import EmbeddedGallery
from app.inference.catalog import resolve_manifest
from app.main import create_app

REPO = Path(__file__).resolve().parents[3]
RECOGNIZER = "w600k_mbf_int8"

# sys.modules[name] = None makes ``import name`` raise ImportError, as if not installed.
PROBE = """
import sys
for blocked in ("torch", "torchvision", "matplotlib"):
    sys.modules[blocked] = None
import training.evaluation
import bench.accuracy, bench.calibration, bench.lfw
assert "torch" not in [name for name, module in sys.modules.items() if module is not None]
print("ok")
"""

# Runs ``python -m training ARGV`` with a finder that refuses (and records) every attempt to
# import torch, even one a caller would catch; prints the attempts as the last line.
REFUSING_TORCH = """
import json, runpy, sys

attempts = []

class RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")
        return None

sys.meta_path.insert(0, RefuseTorch())
sys.argv = ["training", *json.loads(sys.argv[1])]
try:
    runpy.run_module("training", run_name="__main__")
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(json.dumps({"code": code, "torch_imports": attempts}))
"""


def run_without_torch(*argv: str) -> tuple[int, list[str], str]:
    """(exit code, torch import attempts, stdout before the last line) of the command."""
    result = subprocess.run(
        [sys.executable, "-c", REFUSING_TORCH, json.dumps(list(argv))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    *output, last = result.stdout.strip().splitlines() or [""]
    assert last.startswith("{"), result.stdout + result.stderr
    outcome = json.loads(last)
    assert "Traceback" not in result.stderr, result.stderr
    return int(outcome["code"] or 0), list(outcome["torch_imports"]), "\n".join(output)


def test_training_evaluation_and_bench_import_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("command", ["evaluate", "reembed"])
def test_help_of_the_onnxruntime_commands_needs_no_torch(command: str) -> None:
    code, torch_imports, output = run_without_torch(command, "--help")

    assert code == 0
    assert torch_imports == []
    assert output.startswith(f"usage: python -m training {command}")
    assert "--recognizer" in output


def test_evaluate_scores_a_recognizer_without_torch(
    data_root: Path, models_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "cfp"
    for identity in ("021", "022", "023"):
        for pose, count in (("frontal", 2), ("profile", 1)):
            (data / identity / pose).mkdir(parents=True)
            for number in range(1, count + 1):
                source = data_root / "cfp" / "images" / identity / pose / f"{number:02d}.jpg"
                shutil.copy(source, data / identity / pose)
    out = tmp_path / "out"

    code, torch_imports, _ = run_without_torch(
        "evaluate",
        "--recognizer",
        RECOGNIZER,
        "--data",
        str(data),
        "--out",
        str(out),
        *["--models-dir", str(models_dir), "--cache-dir", str(tmp_path / "crops"), "--no-progress"],
    )

    assert code == 0
    assert torch_imports == []
    models = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["models"]
    frontal_profile = models[RECOGNIZER]["verification"]["frontal_profile"]
    assert frontal_profile["genuine_pairs"] == 3 * 2 * 1


def test_reembed_copies_a_gallery_without_torch(
    data_root: Path, models_dir: Path, tmp_path: Path
) -> None:
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    photo = data_root / "cfp" / "images" / "021" / "frontal" / "01.jpg"
    with TestClient(
        create_app(Settings(models_dir=models_dir, data_dir=old_dir, auth=False))
    ) as client:
        response = client.post(
            "/enroll",
            data={"subject": "021"},
            files=[("images", (photo.name, photo.read_bytes()))],
        )
        assert response.status_code == 201, response.text

    code, torch_imports, output = run_without_torch(
        "reembed",
        "--data-dir",
        str(old_dir),
        "--recognizer",
        RECOGNIZER,
        "--out",
        str(new_dir),
        "--models-dir",
        str(models_dir),
    )

    assert code == 0, output
    assert torch_imports == []
    assert "re-embedded 1 of 1 faces" in output
    manifest, _ = resolve_manifest(RECOGNIZER, None)
    with (
        EmbeddedGallery(old_dir, model_id=manifest.model_id, dim=512) as old,
        EmbeddedGallery(new_dir, model_id=manifest.model_id, dim=512) as new,
    ):
        assert new.stats() == old.stats()
        (collection,) = old.stats()
        (before,) = old.export_embeddings(collection, batch_size=8)
        (after,) = new.export_embeddings(collection, batch_size=8)
    # The same recognizer on the same stored crop: the same vector, re-embedded.
    assert after.subjects == before.subjects == ["021"]
    assert float(np.dot(before.embeddings[0], after.embeddings[0])) > 0.999
