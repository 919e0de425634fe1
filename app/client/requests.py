"""What the sync and async clients share: images to upload, requests, answers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel

from app.client.errors import raise_for_error

# A photo: a path, its bytes, or an open binary file.
ImageInput: TypeAlias = str | os.PathLike[str] | bytes | IO[bytes]
ModelT = TypeVar("ModelT", bound=BaseModel)
KEY_ENV = "FACEREC_KEY"
KEY_HEADER = "X-API-Key"


def image_file(image: ImageInput, fallback: str) -> tuple[str, bytes]:
    """(file name, bytes) of an image input; the name is what ``rejected`` reports."""
    if isinstance(image, bytes):
        return fallback, image
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.name, path.read_bytes()
    name = getattr(image, "name", None)
    return (Path(name).name if isinstance(name, str) else fallback), image.read()


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request, built once and sent by either client."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes]]] | None = None
    json: dict[str, Any] | None = None


def headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(KEY_ENV)
    return {KEY_HEADER: key} if key else {}


def form(values: dict[str, Any]) -> dict[str, str]:
    """Form fields that were given, as the strings a form carries."""
    return {
        name: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for name, value in values.items()
        if value is not None
    }


def parse(response: httpx.Response, model: type[ModelT]) -> ModelT:
    raise_for_error(response)
    return model.model_validate(response.json())


def content(response: httpx.Response) -> bytes:
    raise_for_error(response)
    return response.content
