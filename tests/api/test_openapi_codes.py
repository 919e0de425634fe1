"""The error-code table behind the OpenAPI document agrees with the one error handler."""

from __future__ import annotations

from app.api.handlers import STATUS_BY_ERROR
from app.api.openapi import ERROR_CODES, error_responses

# Raised while the service starts (the process exits); no route answers with them.
START_UP_ONLY = {"gallery_model_mismatch", "gallery_unavailable"}


def test_every_request_time_code_is_documented_with_the_status_the_handler_sends() -> None:
    for error, status in STATUS_BY_ERROR.items():
        if error.code in START_UP_ONLY:
            continue
        assert ERROR_CODES[error.code][0] == status, error.code


def test_error_responses_group_codes_by_status_and_constrain_the_code() -> None:
    responses = error_responses("no_face", "invalid_request", "unauthorized")

    assert sorted(responses) == [401, 422]
    assert responses[422]["x-error-codes"] == ["no_face", "invalid_request"]
    schema = responses[422]["content"]["application/json"]["schema"]
    assert schema["allOf"][1]["properties"]["code"]["enum"] == ["no_face", "invalid_request"]
    assert "`no_face`" in responses[422]["description"]
