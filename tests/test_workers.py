"""Failures inside threads fail the test: tests/workers.py and the pytest configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.workers import Workers

REPO = Path(__file__).resolve().parent.parent


def test_join_returns_every_result_in_start_order() -> None:
    workers = Workers()
    for value in (3, 1, 2):
        workers.start(lambda v: v * 10, value)

    assert workers.join(timeout_s=10) == [30, 10, 20]


def test_one_failing_worker_fails_join_with_its_traceback() -> None:
    def fail() -> None:
        assert 1 + 1 == 3, "a 5xx inside a client thread"

    workers = Workers()
    workers.start(lambda: "fine", name="client 0")
    workers.start(fail, name="client 1")
    workers.start(lambda: "fine", name="client 2")

    with pytest.raises(AssertionError) as failure:
        workers.join(timeout_s=10)
    report = str(failure.value)
    assert report.startswith("1 of 3 workers failed")
    assert "client 1 raised" in report
    assert "a 5xx inside a client thread" in report
    assert "client 0" not in report
    assert "client 2" not in report


def test_a_stuck_worker_fails_join_and_is_counted_as_running() -> None:
    release = threading.Event()
    workers = Workers()
    workers.start(release.wait, name="stuck client")
    try:
        assert workers.running() == 1
        with pytest.raises(AssertionError, match="stuck client: still running"):
            workers.join(timeout_s=0.05)
    finally:
        release.set()
    assert workers.join(timeout_s=10) == [True]
    assert workers.running() == 0


BARE_THREAD_TEST = """
import threading

def test_assertion_in_a_bare_thread():
    thread = threading.Thread(target=lambda: [][0])
    thread.start()
    thread.join()
"""


def test_an_exception_in_a_bare_thread_fails_the_test_under_the_project_configuration(
    tmp_path: Path,
) -> None:
    """pytest alone only warns about it (the test would pass); pyproject.toml makes it an
    error, so a thread body nobody wrapped in Workers cannot fail silently either."""
    (tmp_path / "test_bare.py").write_text(BARE_THREAD_TEST)

    def run(*config: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *config],
            cwd=tmp_path,
            env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    (tmp_path / "none.ini").write_text("[pytest]\n")
    without = run("-c", str(tmp_path / "none.ini"), "test_bare.py")
    with_project = run(
        "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "test_bare.py"
    )

    assert without.returncode == 0, without.stdout
    assert "PytestUnhandledThreadExceptionWarning" in without.stdout
    assert with_project.returncode == 1, with_project.stdout
    assert "1 failed" in with_project.stdout
    assert "IndexError" in with_project.stdout
