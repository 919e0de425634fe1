"""Skips are visible, and in CI only the allowed ones pass (tests/allowed_skips.toml).

Every skip is listed at the end of the run with its reason. With ``CI`` set (``.ci/run``)
or ``FACEREC_STRICT_SKIPS=1``, a skip whose node id matches no entry of the allow-list
fails the run: a missing dependency, a data file that is not there or an empty
parametrization must not turn a green CI run into a run where those tests never ran.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWED_SKIPS_FILE = Path(__file__).with_name("allowed_skips.toml")


@dataclass(frozen=True)
class AllowedSkip:
    test: str  # node id or fnmatch pattern
    why: str


def load_allowed(path: Path = ALLOWED_SKIPS_FILE) -> list[AllowedSkip]:
    """The allow-list; every entry must name its test and say why."""
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("skip", [])
    allowed = []
    for number, entry in enumerate(entries, 1):
        test, why = str(entry.get("test", "")).strip(), str(entry.get("why", "")).strip()
        if not test or not why:
            raise pytest.UsageError(f"{path}: skip entry {number} needs a `test` and a `why`")
        allowed.append(AllowedSkip(test, why))
    return allowed


def strict() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("FACEREC_STRICT_SKIPS") == "1"


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


class SkipLedger:
    """A pytest plugin: notes every skip, lists them, fails a strict run on unlisted ones."""

    def __init__(self, allowed: list[AllowedSkip], *, enforce: bool) -> None:
        self.allowed = allowed
        self.enforce = enforce
        self.skips: dict[str, str] = {}  # node id -> reason

    def unlisted(self) -> dict[str, str]:
        return {
            node: reason
            for node, reason in self.skips.items()
            if not any(fnmatch.fnmatchcase(node, entry.test) for entry in self.allowed)
        }

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.setdefault(report.nodeid, skip_reason(report))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)  # module-level skips (importorskip, allow_module_level)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.skips:
            return
        unlisted = self.unlisted()
        terminalreporter.section(f"skips: {len(self.skips)}, not allowed: {len(unlisted)}")
        for node, reason in sorted(self.skips.items()):
            mark = "NOT ALLOWED" if node in unlisted else "allowed"
            terminalreporter.line(f"{mark:<11} {node}: {reason}")
        if unlisted:
            consequence = "the run fails" if self.enforce else "CI would fail the run"
            terminalreporter.line(
                f"{len(unlisted)} skip(s) not in tests/{ALLOWED_SKIPS_FILE.name}: {consequence}"
            )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.enforce and self.unlisted():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipLedger(load_allowed(), enforce=strict()), "facerec-skips")
