"""Pure pieces of the hardening: key format and hashing, token buckets, the admission gate,
the largest-faces cap, and the JSON log formatter. No models, no HTTP."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import numpy as np
import pytest

from app.api.limits import Admission, AdmissionGate
from app.auth.guard import Guard, require_collection
from app.auth.keys import ApiKey, hash_token, key_id_of, new_token, token_matches
from app.auth.ratelimit import RateLimiter
from app.core.pipeline import keep_largest
from app.core.types import Detection
from app.errors import Forbidden, RateLimited, Unauthorized
from app.observability.logging import JsonFormatter, RequestIdFilter, request_id_var


def test_new_tokens_name_their_key_id_and_are_unique() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for key_id, token in tokens:
        assert key_id_of(token) == key_id
        assert len(token) == len("frk_") + 16 + 1 + 43


@pytest.mark.parametrize(
    "token",
    ["", "frk_", "frk_0123456789abcdef", "FRK_0123456789abcdef_" + "a" * 43, "x" * 64],
)
def test_malformed_tokens_have_no_key_id(token: str) -> None:
    assert key_id_of(token) is None


def test_hashes_match_only_their_own_token() -> None:
    _, token = new_token()
    _, other = new_token()
    stored = hash_token(token)
    assert stored.startswith("sha256:")
    assert token not in stored
    assert token_matches(token, stored)
    assert not token_matches(other, stored)


def test_scopes_admit_exact_collections_wildcards_and_admins() -> None:
    now = datetime.now(UTC)
    scoped = ApiKey("a" * 16, "scoped", admin=False, collections=("x",), created_at=now)
    wildcard = ApiKey("b" * 16, "all", admin=False, collections=("*",), created_at=now)
    admin = ApiKey("c" * 16, "admin", admin=True, collections=("*",), created_at=now)
    assert scoped.can_access("x")
    assert not scoped.can_access("y")
    assert not scoped.can_access("X")
    assert wildcard.can_access("y")
    assert admin.can_access("y")
    with pytest.raises(Forbidden):
        require_collection(scoped, "y")
    require_collection(None, "y")  # auth off


def test_a_guard_without_store_lets_everyone_in() -> None:
    assert Guard(None).authorize(None, collection="x", admin=True) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") == pytest.approx(0.5)
    clock.now += 100  # refills, but never above the burst
    assert [limiter.acquire("k") for _ in range(4)][-1] > 0
    assert limiter.acquire("other") == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_rate_limiter_refuses_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimiter(rate_per_s=rate, burst=burst)


def test_guard_errors_carry_their_codes_and_retry_after() -> None:
    assert Unauthorized("x").code == "unauthorized"
    assert RateLimited("x", retry_after_s=3).details["retry_after_s"] == 3


def test_the_admission_gate_admits_up_to_its_capacity() -> None:
    gate = AdmissionGate(2)
    assert [gate.try_enter(), gate.try_enter(), gate.try_enter()] == [
        Admission.ADMITTED,
        Admission.ADMITTED,
        Admission.BUSY,
    ]
    gate.leave()
    assert gate.try_enter() is Admission.ADMITTED
    with pytest.raises(ValueError, match="capacity"):
        AdmissionGate(0)


def detection(x: float, size: float) -> Detection:
    return Detection(
        bbox=(x, 0.0, x + size, size),
        score=0.9,
        landmarks=np.zeros((5, 2), dtype=np.float32),
    )


def test_the_face_cap_keeps_the_largest_in_their_original_order() -> None:
    faces = [detection(0, 10), detection(100, 50), detection(200, 20), detection(300, 40)]
    kept = keep_largest(faces, 2)
    assert [face.bbox[0] for face in kept] == [100, 300]
    assert keep_largest(faces, 10) == faces
    assert keep_largest(faces, None) == faces


def test_json_log_lines_carry_the_request_id_and_only_known_fields() -> None:
    record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.status = 200
    record.embedding = [0.1, 0.2]  # not a field the formatter emits
    token = request_id_var.set("req-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello world"
    assert entry["request_id"] == "req-1"
    assert entry["status"] == 200
    assert "embedding" not in entry
