"""Property-based tests of the service against its own OpenAPI schema (schemathesis).

Whatever schemathesis generates (valid and invalid requests), the service answers
without a 5xx and every response conforms to the schema: documented status code,
content type and body shape. One test per operation and generation mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from app.main import create_app

if TYPE_CHECKING:
    from tests.hardening.conftest import SettingsFactory

# Examples per operation and mode; FACEREC_SCHEMATHESIS_EXAMPLES=500 for a deep run.
MAX_EXAMPLES = int(os.environ.get("FACEREC_SCHEMATHESIS_EXAMPLES", "25"))
# The schema's operations, read from an app that is never started (cheap, no models).
# Operations without parameters or body have no invalid input to generate.
_PATHS = create_app().openapi()["paths"]
OPERATIONS = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, item in sorted(_PATHS.items())
    for method, operation in sorted(item.items())
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or operation.get("parameters")
    or operation.get("requestBody")
]
# An image API rejects schema-valid requests by design (no face, undecodable bytes,
# verify's two modes): 4xx for them is correct, so "positive data acceptance" is off.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def api(
    secure_settings: SettingsFactory,
    admin_token: Callable[[Path], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Any, str]:
    """The service's schema bound to a live app (auth on, no rate limit), and an admin key."""
    data_dir = tmp_path_factory.mktemp("gallery")
    token = admin_token(data_dir)
    app = create_app(secure_settings(data_dir, rate_limit_per_second=0, log_level="ERROR"))
    config = schemathesis.Config()
    # Unknown query parameters are ignored, as HTTP APIs usually do; and the key is
    # sent on every call below, so schemathesis should not generate (or omit) it.
    config.projects.default.generation.update(
        allow_extra_parameters=False, with_security_parameters=False
    )
    # schemathesis starts the app lifespan itself, once, and keeps it until the process exits.
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config), token


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_operation_conforms_to_its_schema_and_never_answers_5xx(
    api: tuple[Any, str], method: str, path: str, mode: GenerationMode
) -> None:
    schema, token = api
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers={"X-API-Key": token}, excluded_checks=EXCLUDED_CHECKS)

    check()
