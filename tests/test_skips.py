"""Skips in CI: only those in tests/allowed_skips.toml pass (tests/skips.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skips import ALLOWED_SKIPS_FILE, load_allowed

REPO = Path(__file__).resolve().parent.parent

SKIPPING_TESTS = """
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("the data is not there")

@pytest.mark.parametrize("value", [])
def test_with_no_cases(value):
    assert value
"""
MODULE_SKIP = """
import pytest
pytest.importorskip("a_module_that_is_not_installed")

def test_never_collected():
    pass
"""


def run_pytest(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in {"CI", "FACEREC_STRICT_SKIPS"}}
    if ci:
        environment["CI"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.skips",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=REPO,  # tests.skips is imported from the repository
        # No third-party plugins: they only slow the inner run down.
        env={**environment, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def skipping_suite(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    return tmp_path


def test_skips_are_listed_and_pass_outside_ci(skipping_suite: Path) -> None:
    result = run_pytest(skipping_suite, ci=False)

    assert result.returncode == 0, result.stdout
    assert "skips: 3, not allowed: 3" in result.stdout
    assert "test_skipping.py::test_skips: Skipped: the data is not there" in result.stdout
    assert "test_with_no_cases" in result.stdout  # an empty parametrization is a skip too
    assert "test_module_skip.py" in result.stdout  # a module-level importorskip too
    assert "CI would fail the run" in result.stdout


def test_a_skip_not_on_the_allow_list_fails_a_ci_run(skipping_suite: Path) -> None:
    result = run_pytest(skipping_suite, ci=True)

    assert result.returncode == 1, result.stdout
    assert "1 passed, 3 skipped" in result.stdout
    assert "3 skip(s) not in tests/allowed_skips.toml: the run fails" in result.stdout


def test_a_ci_run_without_skips_passes(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_fine.py").write_text("def test_runs():\n    assert True\n")
    result = run_pytest(tmp_path, ci=True)

    assert result.returncode == 0, result.stdout
    assert "skips:" not in result.stdout


def test_every_allowed_skip_gives_a_reason_and_names_an_existing_test_file() -> None:
    allowed = load_allowed()
    for entry in allowed:
        assert len(entry.why) > 20, entry
        assert (REPO / entry.test.split("::")[0]).is_file(), entry


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "allowed.toml"
    bad.write_text('[[skip]]\ntest = "tests/x.py::test_y"\n')
    with pytest.raises(pytest.UsageError, match="needs a `test` and a `why`"):
        load_allowed(bad)
    assert ALLOWED_SKIPS_FILE.is_file()
