"""A gallery write that waited at a model swap's barrier runs again on the new runtime."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from app.api.deps import on_serving_runtime
from app.errors import GenerationRetired


def request_serving(runtime: object) -> Any:
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(runtime=runtime)))


def test_a_write_refused_by_a_retired_generation_lands_on_the_serving_one() -> None:
    old, new = object(), object()
    calls: list[object] = []

    async def write(runtime: Any) -> str:
        calls.append(runtime)
        if runtime is old:
            raise GenerationRetired("switched", retry_after_s=1)
        return "written"

    result = anyio.run(on_serving_runtime, request_serving(new), old, write)

    assert result == "written"
    assert calls == [old, new]


def test_without_a_switch_the_refusal_is_the_answer() -> None:
    same = object()

    async def write(runtime: Any) -> str:
        raise GenerationRetired("switched", retry_after_s=1)

    with pytest.raises(GenerationRetired):
        anyio.run(on_serving_runtime, request_serving(same), same, write)
