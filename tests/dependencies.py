"""Optional test dependencies: a skip on a developer's machine, a failure in CI.

``pytest.importorskip`` turns a broken or missing install into a skip, and a green CI run
would then hide that whole files never ran. In CI (``CI`` set, as ``.ci/run`` does) every
dependency of the test and train extras is installed, so a missing one fails the run.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(module: str, provided_by: str) -> ModuleType:
    """Import ``module`` for a test file; skip it when absent, except in CI (fail)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        message = f"{module} cannot be imported ({error}); it comes with {provided_by}"
        if in_ci():
            pytest.fail(f"{message}, which CI installs", pytrace=False)
        pytest.skip(message, allow_module_level=True)
