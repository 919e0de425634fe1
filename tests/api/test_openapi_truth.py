"""The OpenAPI document tells the truth: every response it documents (route, status, body
schema) is driven on real server processes and what comes back is checked against it.

Three servers: ``main`` (API keys on, no rate limit, one inference slot so that a held
request makes the next one 503, a short body timeout for 408), ``limited`` (a burst of
one request per key, for 429) and ``open`` (API keys off, crops off: ``auth_disabled``
and ``crop_not_found``).
``SCENARIOS`` has at least one request for every documented (method, path, status); a
route or status added to the schema without a scenario fails the first test.
"""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema_rs
import pytest

from tests.serving import Server, server_environment

if TYPE_CHECKING:
    from conftest import LfwPhoto

pytestmark = pytest.mark.slow

COLLECTION = "truth"
OTHER = "elsewhere"  # the scoped key's only collection
MAX_IMAGE_BYTES = 100_000
MAX_REQUEST_BYTES = 400_000
BODY_TIMEOUT_S = 3.0
README = (Path(__file__).resolve().parents[2] / "README.md").read_bytes()


@dataclass
class World:
    main: httpx.Client  # admin key
    scoped: httpx.Client  # a key for OTHER only
    anonymous: httpx.Client  # no key
    limited: httpx.Client  # admin key of the rate-limited server
    open: httpx.Client  # auth off, crops off
    main_url: str
    photo: bytes  # Rumsfeld, enrolled as "Rumsfeld" in COLLECTION
    other_photo: bytes  # another photo of Rumsfeld
    bush: bytes
    face_id: str  # of Rumsfeld's face
    open_face_id: str  # a face on the open server (no crop kept)
    spare_key_id: str  # a key the admin may revoke


Scenario = Callable[[World], httpx.Response]


def files(**uploads: bytes) -> dict[str, tuple[str, bytes]]:
    return {name: (f"{name}.jpg", data) for name, data in uploads.items()}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextmanager
def inference_slot_taken(world: World) -> Iterator[None]:
    """Hold the main server's only inference slot: a POST /embed whose body never ends."""
    host, port = world.main_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as held:
        key = world.main.headers["X-API-Key"]
        held.sendall(
            f"POST /embed HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
        )
        while _in_flight(world) < 2:  # the held request, and the metrics request itself
            time.sleep(0.05)
        yield
    while _in_flight(world) > 1:  # the server has seen the held request go
        time.sleep(0.05)


def _in_flight(world: World) -> float:
    text = world.anonymous.get("/metrics").text
    found = re.search(r"^facerec_http_requests_in_flight (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def slow_body(path: str) -> Scenario:
    """A body that stops arriving: the server answers 408 after its body timeout."""

    def scenario(world: World) -> httpx.Response:
        host, port = world.main_url.removeprefix("http://").split(":")
        key = world.main.headers["X-API-Key"]
        with socket.create_connection((host, int(port)), timeout=30) as held:
            held.sendall(
                f"POST {path}?collection={COLLECTION} HTTP/1.1\r\nHost: {host}\r\n"
                f"X-API-Key: {key}\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n{".encode()
            )
            raw = b""
            while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
                chunk = held.recv(65536)
                if not chunk:
                    break
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(": ", 1)) for line in header_lines]
        return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)

    return scenario


def _length(raw: bytes) -> int:
    found = re.search(rb"(?im)^content-length: *(\d+)", raw)
    return int(found.group(1)) if found else 0


def busy(request: Scenario) -> Scenario:
    def scenario(world: World) -> httpx.Response:
        with inference_slot_taken(world):
            return request(world)

    return scenario


def rate_limited(request: Callable[[httpx.Client], httpx.Response]) -> Scenario:
    def scenario(world: World) -> httpx.Response:
        world.limited.get("/collections")  # spends the key's burst of one, if still there
        return request(world.limited)

    return scenario


params = {"collection": COLLECTION}
SETTINGS = "/collections/{collection}/settings"
MANIFESTS = Path(__file__).resolve().parents[2] / "models" / "manifests"
# The main server switches between these two real recognizers (same ONNX file).
RECOGNIZERS = (MANIFESTS / "w600k_mbf_int8.json", MANIFESTS / "w600k_mbf_int8_fast.json")


def swap_finished(world: World) -> None:
    """Wait for the main server's model swap job to end (it must end done)."""
    while True:
        swap = world.main.get("/ready").json().get("swap") or {}
        if swap.get("state") not in ("loading", "copying", "switching"):
            assert swap.get("state") in (None, "done"), swap
            return
        time.sleep(0.1)


def activate_other(world: World) -> httpx.Response:
    """Activate whichever of ``RECOGNIZERS`` is not serving on the main server."""
    swap_finished(world)
    serving = world.main.get("/ready").json()["recognizer"]["name"]
    manifest = next(path for path in RECOGNIZERS if path.stem != serving)
    return world.main.post("/admin/models/activate", json={"manifest": str(manifest)})


def activated(world: World) -> httpx.Response:
    response = activate_other(world)
    swap_finished(world)
    return response


def activated_twice(world: World) -> httpx.Response:
    """The second of two activations: 409 while the first runs."""
    first = activate_other(world)
    assert first.status_code == 202, first.text
    second = world.main.post("/admin/models/activate", json={"manifest": str(RECOGNIZERS[0])})
    swap_finished(world)
    return second


def rolled_back(world: World) -> httpx.Response:
    if world.main.get("/admin/models").json()["previous"] is None:
        assert activated(world).status_code == 202
    swap_finished(world)
    response = world.main.post("/admin/models/rollback")
    swap_finished(world)
    return response


def rollback_while_activating(world: World) -> httpx.Response:
    """409: an activation is still loading its model when the rollback arrives."""
    first = activate_other(world)
    assert first.status_code == 202, first.text
    response = world.main.post("/admin/models/rollback")
    swap_finished(world)
    return response


LOOKALIKES = "/collections/{collection}/lookalikes"


def post_image(path: str, **form: str) -> Callable[[httpx.Client, bytes], httpx.Response]:
    field = "images" if path == "/enroll" else "image"

    def send(client: httpx.Client, data: bytes) -> httpx.Response:
        return client.post(path, params=params, data=form, files=files(**{field: data}))

    return send


ENROLL = post_image("/enroll", subject="Someone")
IDENTIFY = post_image("/identify")
EMBED = post_image("/embed")


def verify_pair(client: httpx.Client, first: bytes, second: bytes) -> httpx.Response:
    return client.post("/verify", files=files(image_a=first, image_b=second))


def malformed(path: str) -> Scenario:
    return lambda w: w.main.post(
        path, params=params, content=b"{oops", headers={"content-type": "application/json"}
    )


def too_large(path: str) -> Scenario:
    field = {"/enroll": "images", "/verify": "image_a"}.get(path, "image")
    return lambda w: w.main.post(
        path, params=params, files=files(**{field: bytes(MAX_IMAGE_BYTES + 1)})
    )


SCENARIOS: dict[tuple[str, str, int], list[Scenario]] = {
    # --- enroll --------------------------------------------------------------------------
    ("post", "/enroll", 201): [
        lambda w: w.main.post(
            "/enroll", params=params, data={"subject": "Bush"}, files=files(images=w.bush)
        ),
        lambda w: w.main.post(
            "/enroll", params=params, json={"subject": "Bush", "images": [b64(w.bush)]}
        ),
    ],
    ("post", "/enroll", 400): [malformed("/enroll")],
    ("post", "/enroll", 401): [lambda w: ENROLL(w.anonymous, w.photo)],
    ("post", "/enroll", 403): [lambda w: ENROLL(w.scoped, w.photo)],
    ("post", "/enroll", 404): [
        lambda w: w.main.post(
            "/enroll", params=params, json={"subject": "Someone", "unknown_id": "unk_0"}
        )
    ],
    ("post", "/enroll", 408): [slow_body("/enroll")],
    ("post", "/enroll", 409): [
        lambda w: w.main.post(
            "/enroll",
            params=params,
            json={"subject": "Impostor", "images": [b64(w.other_photo)], "strict": True},
        ),
        lambda w: w.main.post(  # a look-alike of "Rumsfeld"
            "/enroll", params=params, json={"subject": "RUMSFELD", "images": [b64(w.bush)]}
        ),
    ],
    ("post", "/enroll", 413): [too_large("/enroll")],
    ("post", "/enroll", 415): [lambda w: ENROLL(w.main, README)],
    ("post", "/enroll", 422): [
        lambda w: w.main.post("/enroll", params=params, files=files(images=w.photo)),
        lambda w: w.main.post(
            "/enroll", params=params, data={"subject": "Nobody"}, files=files(images=grey())
        ),
    ],
    ("post", "/enroll", 429): [rate_limited(lambda c: ENROLL(c, b"x"))],
    ("post", "/enroll", 503): [busy(lambda w: ENROLL(w.main, w.photo))],
    # --- identify ------------------------------------------------------------------------
    ("post", "/identify", 200): [
        lambda w: IDENTIFY(w.main, w.other_photo),
        lambda w: w.main.post("/identify", params=params, json={"image": b64(w.photo)}),
    ],
    ("post", "/identify", 400): [malformed("/identify"), lambda w: IDENTIFY(w.main, b"")],
    ("post", "/identify", 401): [lambda w: IDENTIFY(w.anonymous, w.photo)],
    ("post", "/identify", 403): [lambda w: IDENTIFY(w.scoped, w.photo)],
    ("post", "/identify", 408): [slow_body("/identify")],
    ("post", "/identify", 413): [
        too_large("/identify"),
        lambda w: w.main.post("/identify", params=params, json={"image": "A" * MAX_REQUEST_BYTES}),
    ],
    ("post", "/identify", 415): [
        lambda w: IDENTIFY(w.main, README),
        lambda w: w.main.post(
            "/identify", params=params, content=b"hi", headers={"content-type": "text/plain"}
        ),
    ],
    ("post", "/identify", 422): [
        lambda w: w.main.post("/identify", params=params, json={"image": "not base64!"}),
        lambda w: w.main.post(
            "/identify", params=params, data={"top_k": "0"}, files=files(image=w.photo)
        ),
    ],
    ("post", "/identify", 429): [rate_limited(lambda c: IDENTIFY(c, b"x"))],
    ("post", "/identify", 503): [busy(lambda w: IDENTIFY(w.main, w.photo))],
    # --- verify --------------------------------------------------------------------------
    ("post", "/verify", 200): [
        lambda w: verify_pair(w.main, w.photo, w.other_photo),
        lambda w: w.main.post(
            "/verify", params=params, json={"image": b64(w.other_photo), "subject": "Rumsfeld"}
        ),
    ],
    ("post", "/verify", 400): [malformed("/verify")],
    ("post", "/verify", 401): [lambda w: verify_pair(w.anonymous, w.photo, w.photo)],
    ("post", "/verify", 403): [
        lambda w: w.scoped.post(
            "/verify", params=params, data={"subject": "Rumsfeld"}, files=files(image=w.photo)
        )
    ],
    ("post", "/verify", 404): [
        lambda w: w.main.post(
            "/verify", params=params, data={"subject": "Nobody"}, files=files(image=w.photo)
        )
    ],
    ("post", "/verify", 408): [slow_body("/verify")],
    ("post", "/verify", 413): [too_large("/verify")],
    ("post", "/verify", 415): [lambda w: verify_pair(w.main, w.photo, README)],
    ("post", "/verify", 422): [
        lambda w: w.main.post("/verify", files=files(image_a=w.photo)),
        lambda w: verify_pair(w.main, w.photo, grey()),
    ],
    ("post", "/verify", 429): [rate_limited(lambda c: verify_pair(c, b"x", b"y"))],
    ("post", "/verify", 503): [busy(lambda w: verify_pair(w.main, w.photo, w.photo))],
    # --- embed ---------------------------------------------------------------------------
    ("post", "/embed", 200): [lambda w: EMBED(w.main, w.photo)],
    ("post", "/embed", 400): [malformed("/embed")],
    ("post", "/embed", 401): [lambda w: EMBED(w.anonymous, w.photo)],
    ("post", "/embed", 408): [slow_body("/embed")],
    ("post", "/embed", 413): [too_large("/embed")],
    ("post", "/embed", 415): [lambda w: EMBED(w.main, README)],
    ("post", "/embed", 422): [lambda w: w.main.post("/embed", json={})],
    ("post", "/embed", 429): [rate_limited(lambda c: EMBED(c, b"x"))],
    ("post", "/embed", 503): [busy(lambda w: EMBED(w.main, w.photo))],
    # --- gallery -------------------------------------------------------------------------
    ("get", "/subjects", 200): [lambda w: w.main.get("/subjects", params=params)],
    ("get", "/subjects", 401): [lambda w: w.anonymous.get("/subjects", params=params)],
    ("get", "/subjects", 403): [lambda w: w.scoped.get("/subjects", params=params)],
    ("get", "/subjects", 422): [lambda w: w.main.get("/subjects", params={"limit": "0"})],
    ("get", "/subjects", 429): [rate_limited(lambda c: c.get("/subjects"))],
    ("get", "/subjects/{subject}", 200): [
        lambda w: w.main.get("/subjects/Rumsfeld", params=params)
    ],
    ("get", "/subjects/{subject}", 401): [lambda w: w.anonymous.get("/subjects/Rumsfeld")],
    ("get", "/subjects/{subject}", 403): [
        lambda w: w.scoped.get("/subjects/Rumsfeld", params=params)
    ],
    ("get", "/subjects/{subject}", 404): [lambda w: w.main.get("/subjects/Nobody", params=params)],
    ("get", "/subjects/{subject}", 422): [
        lambda w: w.main.get("/subjects/Rumsfeld", params={"collection": "../x"})
    ],
    ("get", "/subjects/{subject}", 429): [rate_limited(lambda c: c.get("/subjects/Rumsfeld"))],
    ("delete", "/subjects/{subject}", 200): [
        lambda w: (ENROLL(w.main, w.bush), w.main.delete("/subjects/Someone", params=params))[1]
    ],
    ("delete", "/subjects/{subject}", 401): [lambda w: w.anonymous.delete("/subjects/Rumsfeld")],
    ("delete", "/subjects/{subject}", 403): [
        lambda w: w.scoped.delete("/subjects/Rumsfeld", params=params)
    ],
    ("delete", "/subjects/{subject}", 404): [
        lambda w: w.main.delete("/subjects/Nobody", params=params)
    ],
    ("delete", "/subjects/{subject}", 422): [
        lambda w: w.main.delete("/subjects/a%0Ab", params=params)
    ],
    ("delete", "/subjects/{subject}", 429): [rate_limited(lambda c: c.delete("/subjects/X"))],
    ("delete", "/faces/{face_id}", 200): [
        lambda w: w.main.delete(
            f"/faces/{ENROLL(w.main, w.bush).json()['faces'][0]['face_id']}", params=params
        )
    ],
    ("delete", "/faces/{face_id}", 401): [lambda w: w.anonymous.delete(f"/faces/{w.face_id}")],
    ("delete", "/faces/{face_id}", 403): [
        lambda w: w.scoped.delete(f"/faces/{w.face_id}", params=params)
    ],
    ("delete", "/faces/{face_id}", 404): [lambda w: w.main.delete("/faces/0", params=params)],
    ("delete", "/faces/{face_id}", 422): [lambda w: w.main.delete("/faces/" + "f" * 65)],
    ("delete", "/faces/{face_id}", 429): [rate_limited(lambda c: c.delete("/faces/0"))],
    ("get", "/faces/{face_id}/crop", 200): [
        lambda w: w.main.get(f"/faces/{w.face_id}/crop", params=params)
    ],
    ("get", "/faces/{face_id}/crop", 401): [
        lambda w: w.anonymous.get(f"/faces/{w.face_id}/crop", params=params)
    ],
    ("get", "/faces/{face_id}/crop", 403): [
        lambda w: w.scoped.get(f"/faces/{w.face_id}/crop", params=params)
    ],
    ("get", "/faces/{face_id}/crop", 404): [
        lambda w: w.main.get(f"/faces/{w.face_id}/crop", params={"collection": OTHER}),
        lambda w: w.open.get(f"/faces/{w.open_face_id}/crop", params=params),
    ],
    ("get", "/faces/{face_id}/crop", 422): [
        lambda w: w.main.get("/faces/" + "f" * 65 + "/crop", params=params)
    ],
    ("get", "/faces/{face_id}/crop", 429): [rate_limited(lambda c: c.get("/faces/0/crop"))],
    ("get", "/collections", 200): [
        lambda w: w.main.get("/collections"),
        lambda w: w.scoped.get("/collections"),
    ],
    ("get", "/collections", 401): [lambda w: w.anonymous.get("/collections")],
    ("get", "/collections", 429): [rate_limited(lambda c: c.get("/collections"))],
    # --- open-set settings and look-alikes ---------------------------------------------------
    ("get", SETTINGS, 200): [
        lambda w: w.main.get(f"/collections/{COLLECTION}/settings"),
        lambda w: w.scoped.get(f"/collections/{OTHER}/settings"),
    ],
    ("get", SETTINGS, 401): [lambda w: w.anonymous.get(f"/collections/{COLLECTION}/settings")],
    ("get", SETTINGS, 403): [lambda w: w.scoped.get(f"/collections/{COLLECTION}/settings")],
    ("get", SETTINGS, 422): [lambda w: w.main.get("/collections/-bad/settings")],
    ("get", SETTINGS, 429): [rate_limited(lambda c: c.get(f"/collections/{OTHER}/settings"))],
    ("put", SETTINGS, 200): [
        lambda w: w.scoped.put(f"/collections/{OTHER}/settings", json={"target_fpir": 0.01}),
        lambda w: w.scoped.put(f"/collections/{OTHER}/settings", json={"target_fpir": None}),
    ],
    ("put", SETTINGS, 400): [
        lambda w: w.main.put(
            f"/collections/{COLLECTION}/settings",
            content=b"\x00",
            headers={"Content-Type": "application/json"},
        )
    ],
    ("put", SETTINGS, 401): [
        lambda w: w.anonymous.put(f"/collections/{OTHER}/settings", json={"target_fpir": 0.01})
    ],
    ("put", SETTINGS, 403): [
        lambda w: w.scoped.put(f"/collections/{COLLECTION}/settings", json={"target_fpir": 0.1})
    ],
    ("put", SETTINGS, 422): [
        lambda w: w.main.put(f"/collections/{COLLECTION}/settings", json={"target_fpir": 1.5}),
        lambda w: w.main.put(f"/collections/{COLLECTION}/settings", json={"other": 1}),
    ],
    ("put", SETTINGS, 429): [
        rate_limited(lambda c: c.put(f"/collections/{OTHER}/settings", json={"target_fpir": 0.1}))
    ],
    ("get", LOOKALIKES, 200): [lambda w: w.main.get(f"/collections/{COLLECTION}/lookalikes")],
    ("get", LOOKALIKES, 401): [lambda w: w.anonymous.get(f"/collections/{COLLECTION}/lookalikes")],
    ("get", LOOKALIKES, 403): [lambda w: w.scoped.get(f"/collections/{COLLECTION}/lookalikes")],
    ("get", LOOKALIKES, 422): [
        lambda w: w.main.get(f"/collections/{COLLECTION}/lookalikes", params={"limit": "0"})
    ],
    ("get", LOOKALIKES, 429): [rate_limited(lambda c: c.get(f"/collections/{OTHER}/lookalikes"))],
    # --- health --------------------------------------------------------------------------
    ("get", "/health", 200): [lambda w: w.anonymous.get("/health")],
    ("get", "/ready", 200): [lambda w: w.anonymous.get("/ready")],
    # --- model swap ----------------------------------------------------------------------
    ("post", "/admin/models/activate", 202): [activated],
    ("post", "/admin/models/activate", 400): [malformed("/admin/models/activate")],
    ("post", "/admin/models/activate", 401): [
        lambda w: w.anonymous.post("/admin/models/activate", json={"manifest": "/x.json"})
    ],
    ("post", "/admin/models/activate", 403): [
        lambda w: w.scoped.post("/admin/models/activate", json={"manifest": "/x.json"})
    ],
    ("post", "/admin/models/activate", 409): [activated_twice],
    ("post", "/admin/models/activate", 422): [
        lambda w: w.main.post("/admin/models/activate", json={}),
        lambda w: w.main.post("/admin/models/activate", json={"manifest": "relative.json"}),
        lambda w: w.main.post("/admin/models/activate", json={"manifest": "/etc/hostname"}),
    ],
    ("post", "/admin/models/activate", 429): [
        rate_limited(lambda c: c.post("/admin/models/activate", json={"manifest": "/x.json"}))
    ],
    ("post", "/admin/models/rollback", 202): [rolled_back],
    ("post", "/admin/models/rollback", 401): [lambda w: w.anonymous.post("/admin/models/rollback")],
    ("post", "/admin/models/rollback", 403): [lambda w: w.scoped.post("/admin/models/rollback")],
    ("post", "/admin/models/rollback", 409): [rollback_while_activating],
    ("post", "/admin/models/rollback", 422): [lambda w: w.open.post("/admin/models/rollback")],
    ("post", "/admin/models/rollback", 429): [
        rate_limited(lambda c: c.post("/admin/models/rollback"))
    ],
    ("get", "/admin/models", 200): [lambda w: w.main.get("/admin/models")],
    ("get", "/admin/models", 401): [lambda w: w.anonymous.get("/admin/models")],
    ("get", "/admin/models", 403): [lambda w: w.scoped.get("/admin/models")],
    ("get", "/admin/models", 429): [rate_limited(lambda c: c.get("/admin/models"))],
    # --- keys ----------------------------------------------------------------------------
    ("post", "/keys", 201): [
        lambda w: w.main.post("/keys", json={"name": "truth", "collections": [OTHER]})
    ],
    ("post", "/keys", 400): [
        lambda w: w.main.post("/keys", content=b"{", headers={"content-type": "application/json"})
    ],
    ("post", "/keys", 401): [lambda w: w.anonymous.post("/keys", json={"name": "x"})],
    ("post", "/keys", 403): [lambda w: w.scoped.post("/keys", json={"name": "x"})],
    ("post", "/keys", 409): [lambda w: w.open.post("/keys", json={"name": "x"})],
    ("post", "/keys", 422): [lambda w: w.main.post("/keys", json={"name": ""})],
    ("post", "/keys", 429): [rate_limited(lambda c: c.post("/keys", json={"name": "x"}))],
    ("get", "/keys", 200): [lambda w: w.main.get("/keys")],
    ("get", "/keys", 401): [lambda w: w.anonymous.get("/keys")],
    ("get", "/keys", 403): [lambda w: w.scoped.get("/keys")],
    ("get", "/keys", 409): [lambda w: w.open.get("/keys")],
    ("get", "/keys", 429): [rate_limited(lambda c: c.get("/keys"))],
    ("delete", "/keys/{key_id}", 200): [lambda w: w.main.delete(f"/keys/{w.spare_key_id}")],
    ("delete", "/keys/{key_id}", 401): [lambda w: w.anonymous.delete("/keys/0")],
    ("delete", "/keys/{key_id}", 403): [lambda w: w.scoped.delete("/keys/0")],
    ("delete", "/keys/{key_id}", 404): [lambda w: w.main.delete("/keys/0000000000000000")],
    ("delete", "/keys/{key_id}", 409): [
        lambda w: w.main.delete(f"/keys/{w.main.headers['X-API-Key'].split('_')[1]}"),
        lambda w: w.open.delete("/keys/0000000000000000"),
    ],
    ("delete", "/keys/{key_id}", 422): [lambda w: w.main.delete("/keys/" + "0" * 65)],
    ("delete", "/keys/{key_id}", 429): [rate_limited(lambda c: c.delete("/keys/0"))],
}


def grey() -> bytes:
    """A valid PNG without a face."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- servers and the world --------------------------------------------------------------


def start(models_dir: Path, data_dir: Path, log: Path, **settings: str) -> Server:
    server = Server(server_environment(models_dir, data_dir, **settings), log)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def world(
    models_dir: Path, lfw_photo: LfwPhoto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("truth")
    servers = [
        start(
            models_dir,
            root / "main",
            root / "main.log",
            rate_limit_per_second="0",
            inference_workers="1",
            inference_queue="0",
            body_timeout_s=str(BODY_TIMEOUT_S),
            max_image_bytes=str(MAX_IMAGE_BYTES),
            max_request_bytes=str(MAX_REQUEST_BYTES),
        ),
        start(
            models_dir,
            root / "limited",
            root / "limited.log",
            rate_limit_per_second="0.001",
            rate_limit_burst="1",
        ),
        start(
            models_dir, root / "open", root / "open.log", auth="off", store_aligned_crops="false"
        ),
    ]
    main_server, limited_server, open_server = servers
    try:
        (admin,) = main_server.printed_keys()
        (limited_admin,) = limited_server.printed_keys()
        main = main_server.client(admin)
        scoped_key = main.post("/keys", json={"name": "scoped", "collections": [OTHER]})
        spare = main.post("/keys", json={"name": "spare", "collections": [OTHER]})
        photo = lfw_photo("Donald_Rumsfeld", 39).read_bytes()
        enrolled = main.post(
            "/enroll", params=params, data={"subject": "Rumsfeld"}, files=files(images=photo)
        )
        open_client = open_server.client()
        open_enrolled = open_client.post(
            "/enroll", params=params, data={"subject": "Rumsfeld"}, files=files(images=photo)
        )
        for response in (scoped_key, spare, enrolled, open_enrolled):
            assert response.status_code == 201, response.text
        yield World(
            main=main,
            scoped=main_server.client(scoped_key.json()["api_key"]),
            anonymous=main_server.client(),
            limited=limited_server.client(limited_admin),
            open=open_client,
            main_url=main_server.url,
            photo=photo,
            other_photo=lfw_photo("Donald_Rumsfeld", 60).read_bytes(),
            bush=lfw_photo("George_W_Bush", 7).read_bytes(),
            face_id=enrolled.json()["faces"][0]["face_id"],
            open_face_id=open_enrolled.json()["faces"][0]["face_id"],
            spare_key_id=spare.json()["key_id"],
        )
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def document(world: World) -> dict[str, Any]:
    response = world.anonymous.get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def documented(document: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {
        (method, path, int(status))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }


# --- the checks -----------------------------------------------------------------------------


def test_every_documented_response_has_a_scenario(document: dict[str, Any]) -> None:
    assert documented(document) == set(SCENARIOS)


def test_no_fastapi_validation_error_shape_is_documented(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    assert "HTTPValidationError" not in schemas
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["x-error-codes"], (method, path, status)


@pytest.mark.parametrize(
    "key", sorted(SCENARIOS), ids=[f"{m.upper()} {p} {s}" for m, p, s in sorted(SCENARIOS)]
)
def test_the_server_sends_what_the_schema_documents(
    world: World, document: dict[str, Any], key: tuple[str, str, int]
) -> None:
    method, path, status = key
    documented_response = document["paths"][path][method]["responses"][str(status)]
    for scenario in SCENARIOS[key]:
        response = scenario(world)

        assert response.status_code == status, response.text
        media_type = response.headers["content-type"].split(";")[0]
        content = documented_response.get("content", {})
        assert media_type in content, (media_type, list(content))
        schema = content[media_type].get("schema")
        if media_type == "application/json":
            assert schema is not None
            validator = jsonschema_rs.validator_for(
                {**schema, "components": document["components"]}
            )
            errors = [str(error) for error in validator.iter_errors(response.json())]
            assert not errors, (errors, response.text)
        elif media_type == "image/png":
            assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
