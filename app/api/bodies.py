"""Request bodies of the image endpoints: multipart forms or JSON with base64 images.

Every image endpoint takes the same fields either way, under the same names:

* ``multipart/form-data``: images as file parts, other fields as form fields;
* ``application/json``: one object; images as base64 strings (a ``data:image/...;base64,``
  prefix is allowed), ``images`` as a list of them, other fields as JSON values.

Both end in one ``ParsedBody``: the images (name, bytes) per field and the other fields,
validated by the route's pydantic model. The limits are the same: the whole body is
bounded before parsing by ``BodySizeLimitMiddleware`` (``request_too_large``); each image
is bounded by ``max_image_bytes`` after reading, for base64 on its *decoded* size
(``image_too_large``), checked on the encoded length first so nothing oversized is
decoded. Errors are the service's: 400 ``malformed_request`` for a body that cannot be
parsed, 415 ``unsupported_media_type`` for another content type, 422
``invalid_request`` for missing, unknown or invalid fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from app.errors import ImageTooLarge, InvalidRequest, MalformedRequest, UnsupportedImageType

ModelT = TypeVar("ModelT", bound=BaseModel)

MULTIPART = "multipart/form-data"
JSON = "application/json"
URLENCODED = "application/x-www-form-urlencoded"  # a form without files: fields only
# Browsers and curl send "data:image/jpeg;base64,..." when asked for a data URL.
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.ASCII)
_WHITESPACE = re.compile(rb"\s+")
# Form fields other than files are small; refuse long ones before they are buffered.
MAX_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    """One image of a request: a name to report it by (file name or JSON path) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ImageFields:
    """Which fields of a route carry images: one image each, or a list (``images``)."""

    single: tuple[str, ...] = ()
    multiple: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.single + self.multiple)


@dataclass(frozen=True, slots=True)
class ParsedBody:
    images: dict[str, list[Upload]]  # only the image fields that were sent
    values: dict[str, Any]  # every other field, as sent (strings from a form)

    def one(self, field: str) -> Upload | None:
        uploads = self.images.get(field)
        return uploads[0] if uploads else None

    def many(self, field: str) -> list[Upload]:
        return self.images.get(field, [])


async def read_body(
    request: Request, fields: ImageFields, *, max_image_bytes: int, max_images: int
) -> ParsedBody:
    """The request's images and fields, from a multipart form or a JSON object."""
    try:
        return await _read(request, fields, max_image_bytes, max_images)
    except ClientDisconnect:
        # Nobody is left to answer; end the request quietly instead of logging a 500.
        raise MalformedRequest("the client left before sending the whole body") from None


async def _read(
    request: Request, fields: ImageFields, max_image_bytes: int, max_images: int
) -> ParsedBody:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in (MULTIPART, URLENCODED):
        return await _read_form(request, fields, max_image_bytes, max_images)
    if media_type == JSON or media_type.endswith("+json"):
        raw = await request.body()
        # Parsing and base64-decoding megabytes is CPU work: keep it off the event loop.
        return await anyio.to_thread.run_sync(
            partial(_read_json, raw, fields, max_image_bytes, max_images)
        )
    if not media_type and not await request.body():
        return ParsedBody(images={}, values={})  # nothing sent: the fields say what is missing
    raise UnsupportedImageType(
        f"send the request as {MULTIPART} or {JSON}, not {media_type or 'no content type'}",
        content_type=media_type or None,
        accepted=[MULTIPART, JSON],
    )


def validate_fields(model: type[ModelT], body: ParsedBody) -> ModelT:
    """The non-image fields as ``model`` (unknown fields refused), or a 422 naming each."""
    try:
        return model.model_validate(body.values)
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors()]
        ) from None


def require_images(body: ParsedBody, field: str) -> list[Upload]:
    """The uploads of a required image field; 422 when it is missing or empty."""
    uploads = body.many(field)
    if not uploads:
        raise InvalidRequest(f"{field} is required: send at least one image", field=field)
    return uploads


# --- multipart ----------------------------------------------------------------------------


async def _read_form(
    request: Request, fields: ImageFields, max_image_bytes: int, max_images: int
) -> ParsedBody:
    images: dict[str, list[Upload]] = {}
    values: dict[str, Any] = {}
    # One file over the limit reaches _check_count (422 naming the field); more is a 400.
    limit = max_images + len(fields.single) + 1
    async with request.form(max_files=limit, max_fields=64, max_part_size=MAX_FIELD_BYTES) as form:
        for name, value in form.multi_items():
            if name in fields.names:
                if not isinstance(value, UploadFile):
                    raise InvalidRequest(f"{name} must be a file part (an image)", field=name)
                uploads = images.setdefault(name, [])
                _check_count(name, uploads, fields, max_images)
                fallback = f"{name}[{len(uploads)}]" if name in fields.multiple else name
                uploads.append(
                    Upload(value.filename or fallback, await _read_file(value, max_image_bytes))
                )
            elif isinstance(value, UploadFile):
                raise InvalidRequest(f"{name} is not an image field of this endpoint", field=name)
            elif name in values:
                raise InvalidRequest(f"{name} was sent more than once", field=name)
            else:
                values[name] = value
    return ParsedBody(images=images, values=values)


async def _read_file(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"{upload.filename or 'image'} is larger than {max_bytes} bytes", max_bytes=max_bytes
        )
    return data


# --- JSON ---------------------------------------------------------------------------------


def _read_json(
    raw: bytes, fields: ImageFields, max_image_bytes: int, max_images: int
) -> ParsedBody:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the JSON body must be an object of fields")
    images: dict[str, list[Upload]] = {}
    values: dict[str, Any] = {}
    for name, value in document.items():
        if name in fields.single:
            if value is not None:
                images[name] = [_decode_base64(name, value, max_image_bytes)]
        elif name in fields.multiple:
            if not isinstance(value, list):
                raise InvalidRequest(f"{name} must be a list of base64 images", field=name)
            if len(value) > max_images:
                raise InvalidRequest(
                    f"at most {max_images} images per request", field=name, limit=max_images
                )
            images[name] = [
                _decode_base64(f"{name}[{index}]", item, max_image_bytes)
                for index, item in enumerate(value)
            ]
        else:
            values[name] = value
    return ParsedBody(images=images, values=values)


def _decode_base64(name: str, value: object, max_bytes: int) -> Upload:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a base64 string", field=name)
    encoded = _WHITESPACE.sub(b"", _DATA_URL.sub("", value, count=1).encode("ascii", "replace"))
    # 4 characters carry 3 bytes: refuse what would decode to too many before decoding it.
    if len(encoded) // 4 * 3 - encoded[-2:].count(b"=") > max_bytes:
        raise ImageTooLarge(f"{name} is larger than {max_bytes} bytes", max_bytes=max_bytes)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{name} is not valid base64", field=name) from None
    return Upload(name, data)


def _check_count(name: str, uploads: list[Upload], fields: ImageFields, max_images: int) -> None:
    if name in fields.single and uploads:
        raise InvalidRequest(f"{name} takes one image", field=name)
    if len(uploads) >= max_images:
        raise InvalidRequest(
            f"at most {max_images} images per request", field=name, limit=max_images
        )
