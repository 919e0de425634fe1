"""What a new user meets first: the version, the one models folder, and one-line answers
when an optional extra is missing (exit 2), in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import app
from app.config import Settings

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def hiding(module: str, then: str) -> str:
    """Python code that runs ``then`` as if ``module`` were not installed."""
    return f"import sys; sys.modules[{module!r}] = None\n{then}"


def test_version_is_the_packages_version() -> None:
    result = run_python("from app.cli import main; raise SystemExit(main(['--version']))")

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"facerec {declared}"
    assert app.__version__ == declared


def test_help_names_the_one_default_models_folder() -> None:
    default = Settings.model_fields["models_dir"].default
    for args in (["--help"], ["serve", "--help"], ["models", "list", "--help"]):
        result = run_python(f"from app.cli import main; raise SystemExit(main({args!r}))")

        assert result.returncode == 0, result.stderr
        assert f"FACEREC_MODELS_DIR, else ./{default}" in " ".join(result.stdout.split())


def test_serve_script_uses_the_same_default_models_folder() -> None:
    script = (REPO / "scripts" / "serve.sh").read_text()

    assert "../shared" not in script
    assert "FACEREC_MODELS_DIR=" not in script


def test_serve_without_an_inference_engine_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    result = run_python(
        hiding("onnxruntime", "from app.cli import main; raise SystemExit(main(['serve']))"),
        env={"FACEREC_DATA_DIR": str(tmp_path)},
    )

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("facerec: error: onnxruntime is not installed")
    assert "pip install 'facerec[cpu]'" in lines[0]
    assert not (tmp_path / "gallery.sqlite3").exists()


def test_training_without_torch_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    argv = ["training", "finetune", "--base", "b", "--data", str(tmp_path), "--out", str(tmp_path)]
    result = run_python(
        hiding(
            "torch",
            f"import runpy; sys.argv = {argv!r}\nrunpy.run_module('training', run_name='__main__')",
        )
    )

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'facerec[train]'" in lines[0]
    assert "Traceback" not in result.stderr
