"""The evaluation numerics and the benchmarks that use them import without PyTorch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

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
