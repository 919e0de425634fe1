"""The API's requests, one function per endpoint; both clients send these."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from app.client.requests import Call, ImageInput, form, image_file


def enroll(
    collection: str, subject: str, images: Sequence[ImageInput], face_policy: str, strict: bool
) -> Call:
    files = [("images", image_file(image, f"images[{i}]")) for i, image in enumerate(images)]
    return Call(
        "POST",
        "/enroll",
        {"collection": collection},
        data=form({"subject": subject, "face_policy": face_policy, "strict": strict}),
        files=files,
    )


def identify(
    collection: str, image: ImageInput, top_k: int | None, threshold: float | None
) -> Call:
    return Call(
        "POST",
        "/identify",
        {"collection": collection},
        data=form({"top_k": top_k, "threshold": threshold}),
        files=[("image", image_file(image, "image"))],
    )


def verify(first: ImageInput, second: ImageInput, threshold: float | None) -> Call:
    return Call(
        "POST",
        "/verify",
        data=form({"threshold": threshold}),
        files=[
            ("image_a", image_file(first, "image_a")),
            ("image_b", image_file(second, "image_b")),
        ],
    )


def verify_subject(
    collection: str, image: ImageInput, subject: str, threshold: float | None
) -> Call:
    return Call(
        "POST",
        "/verify",
        {"collection": collection},
        data=form({"subject": subject, "threshold": threshold}),
        files=[("image", image_file(image, "image"))],
    )


def embed(image: ImageInput) -> Call:
    return Call("POST", "/embed", files=[("image", image_file(image, "image"))])


def subjects(collection: str, limit: int, offset: int) -> Call:
    return Call("GET", "/subjects", {"collection": collection, "limit": limit, "offset": offset})


def subject(collection: str, name: str) -> Call:
    return Call("GET", f"/subjects/{_segment(name)}", {"collection": collection})


def delete_subject(collection: str, name: str) -> Call:
    return Call("DELETE", f"/subjects/{_segment(name)}", {"collection": collection})


def delete_face(collection: str, face_id: str) -> Call:
    return Call("DELETE", f"/faces/{_segment(face_id)}", {"collection": collection})


def face_crop(collection: str, face_id: str) -> Call:
    return Call("GET", f"/faces/{_segment(face_id)}/crop", {"collection": collection})


def collections() -> Call:
    return Call("GET", "/collections")


def ready() -> Call:
    return Call("GET", "/ready")


def _segment(value: str) -> str:
    """A path segment: names may hold spaces, '?', '#' and any script."""
    return quote(value, safe="")
