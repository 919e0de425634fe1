"""Hostile clients at the HTTP edge of a real server process with API keys on: keyless and
lying uploads, slow and trickling clients, admission shares and real overload, tenant
isolation from the headers, and what the open endpoints reveal.

Every case asserts the exact status and code, and that the server keeps serving others:
an admin identify of a real photo answered within ``SERVE_CAP_S`` (a generous deadline
for a hang on 2 shared cores, not a performance figure).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.hardening.raw import (
    PART_START,
    Trickler,
    closed_by_server,
    connect,
    read_response,
    request_head,
    wait_until,
)
from tests.serving import Server, server_environment

SERVE_CAP_S = 60.0
BODY_TIMEOUT_S = 8
HEADER_TIMEOUT_S = 2
WORKERS, QUEUE = 1, 2  # three admission slots, two per key
MAX_REQUEST_PIXELS = 60_000_000
FORTY_MIB = 40 << 20
MULTIPART = "multipart/form-data; boundary=hostile"


@dataclass
class Edge:
    server: Server
    admin: str
    alpha: str  # scoped to collection alpha
    beta: str  # scoped to collection beta
    photo: bytes

    def serves_others(self) -> None:
        """The admin's identify of a real face, answered 200 within the cap."""
        with httpx.Client(base_url=self.server.url, timeout=SERVE_CAP_S) as http:
            response = http.post(
                "/identify",
                headers={"X-API-Key": self.admin},
                files={"image": ("face.jpg", self.photo)},
            )
        assert response.status_code == 200, response.text
        assert len(response.json()["faces"]) == 1

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.server.url}/metrics", timeout=SERVE_CAP_S).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no {name} in /metrics")

    def admitted(self) -> float:
        return self.metric("facerec_inference_admitted")

    def trickle(self, key: str | None, path: str = "/identify") -> Trickler:
        headers = {"Content-Type": MULTIPART}
        if key is not None:
            headers["X-API-Key"] = key
        head = request_head("POST", path, headers, content_length=1 << 20)
        return Trickler(self.server.port, head + PART_START, interval_s=0.5).start()


@pytest.fixture(scope="module")
def edge(
    models_dir: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    folder = tmp_path_factory.mktemp("edge")
    environment = server_environment(
        models_dir,
        folder / "gallery",
        auth="on",
        rate_limit_per_second="0",
        inference_workers=str(WORKERS),
        inference_queue=str(QUEUE),
        body_timeout_s=str(BODY_TIMEOUT_S),
        header_timeout_s=str(HEADER_TIMEOUT_S),
        max_request_pixels=str(MAX_REQUEST_PIXELS),
    )
    server = Server(environment, folder / "server.log")
    try:
        server.wait_ready()
        (admin,) = server.printed_keys()
        with server.client(admin) as http:
            alpha, beta = (
                http.post("/keys", json={"name": name, "collections": [name]}).json()["api_key"]
                for name in ("alpha", "beta")
            )
        photo = (data_root / "lfw/images/Donald_Rumsfeld/Donald_Rumsfeld_0039.jpg").read_bytes()
        yield Edge(server, admin, alpha, beta, photo)
    finally:
        server.stop()


def png_of_zeros(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- refused from the headers, before the body ------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/identify"),
        ("POST", "/enroll"),
        ("POST", "/verify"),
        ("POST", "/embed"),
        ("POST", "/keys"),
        ("DELETE", "/subjects/anyone"),
    ],
)
def test_a_keyless_40_mib_upload_is_answered_401_before_its_body(
    edge: Edge, method: str, path: str
) -> None:
    with connect(edge.server.port) as sock:
        sock.sendall(
            request_head(method, path, {"Content-Type": MULTIPART}, content_length=FORTY_MIB)
        )
        response = read_response(sock)  # not one body byte was sent
        assert response.status == 401
        assert b'"code":"unauthorized"' in response.body
        assert response.headers["connection"] == "close"
        assert closed_by_server(sock)
    edge.serves_others()


@pytest.mark.parametrize(
    ("key", "path", "status", "code"),
    [
        ("alpha", "/identify?collection=beta", 403, "forbidden"),
        ("alpha", "/enroll?collection=beta", 403, "forbidden"),
        ("alpha", "/identify", 403, "forbidden"),  # no collection means "default"
        ("alpha", "/keys", 403, "forbidden"),
        ("alpha", "/verify?collection=beta", 403, "forbidden"),
        ("junk", "/identify?collection=alpha", 401, "unauthorized"),
    ],
)
def test_a_wrong_key_with_a_40_mib_upload_is_refused_before_its_body(
    edge: Edge, key: str, path: str, status: int, code: str
) -> None:
    token = {"alpha": edge.alpha, "junk": "frk_0123456789abcdef_" + "A" * 43}[key]
    with connect(edge.server.port) as sock:
        headers = {"Content-Type": MULTIPART, "X-API-Key": token}
        sock.sendall(request_head("POST", path, headers, content_length=FORTY_MIB))
        response = read_response(sock)
        assert response.status == status
        assert f'"code":"{code}"'.encode() in response.body
    edge.serves_others()


def test_a_revoked_key_is_refused_from_the_headers(edge: Edge) -> None:
    with edge.server.client(edge.admin) as http:
        created = http.post("/keys", json={"name": "gone", "collections": ["alpha"]}).json()
        assert http.delete(f"/keys/{created['key_id']}").status_code == 200
    with connect(edge.server.port) as sock:
        headers = {"Content-Type": MULTIPART, "X-API-Key": created["api_key"]}
        sock.sendall(
            request_head("POST", "/identify?collection=alpha", headers, content_length=FORTY_MIB)
        )
        response = read_response(sock)
        assert response.status == 401
        assert b"invalid or revoked" in response.body
    edge.serves_others()


def test_keyless_trickling_uploads_take_no_slot_from_the_admin(edge: Edge) -> None:
    """Issue 11, defect 3: six keyless uploads that declare a body and trickle it."""
    tricklers = [edge.trickle(None) for _ in range(6)]
    try:
        responses = [read_response(trickler.sock) for trickler in tricklers]
        assert [r.status for r in responses] == [401] * 6
        assert edge.admitted() == 0
        edge.serves_others()
    finally:
        for trickler in tricklers:
            trickler.stop()
    assert [t.errors for t in tricklers] == [[]] * 6


def test_a_keyless_chunked_upload_is_answered_401_at_once(edge: Edge) -> None:
    with connect(edge.server.port) as sock:
        head = request_head(
            "POST", "/identify", {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"}
        )
        sock.sendall(head + b"FFFFFF\r\nxx")
        response = read_response(sock)
        assert response.status == 401
    edge.serves_others()


# --- slow and lying clients --------------------------------------------------------------------


def test_an_authenticated_trickling_upload_is_cut_with_408(edge: Edge) -> None:
    trickler = edge.trickle(edge.alpha, "/identify?collection=alpha")
    try:
        assert wait_until(lambda: edge.admitted() == 1)
        edge.serves_others()  # one slot held; the admin's photo still goes through
        response = read_response(trickler.sock)  # after BODY_TIMEOUT_S
        assert response.status == 408
        assert b'"code":"request_timeout"' in response.body
        assert response.headers["connection"] == "close"
        assert wait_until(trickler.cut.is_set)
        assert wait_until(lambda: edge.admitted() == 0)
    finally:
        trickler.stop()
    assert trickler.errors == []
    edge.serves_others()


def test_a_content_length_longer_than_the_body_is_cut_with_408(edge: Edge) -> None:
    with connect(edge.server.port) as sock:
        headers = {"Content-Type": "application/json", "X-API-Key": edge.admin}
        sock.sendall(request_head("POST", "/keys", headers, content_length=1000))
        sock.sendall(b'{"name": "liar"')  # and then nothing
        edge.serves_others()
        response = read_response(sock)
        assert response.status == 408
        assert b'"code":"request_timeout"' in response.body
    edge.serves_others()


def test_a_content_length_shorter_than_the_body_smuggles_nothing(edge: Edge) -> None:
    """The bytes past the declared length parse as a next request, which is garbage: the
    server answers 400 and closes; the truncated JSON creates nothing."""
    body = b'{"name": "short", "collections": ["alpha"]}'
    with connect(edge.server.port) as sock:
        headers = {"Content-Type": "application/json", "X-API-Key": edge.admin}
        sock.sendall(request_head("POST", "/keys", headers, content_length=10) + body)
        response = read_response(sock)
        assert response.status == 400
        assert closed_by_server(sock)
    with edge.server.client(edge.admin) as http:
        names = [key["name"] for key in http.get("/keys").json()["items"]]
    assert "short" not in names
    edge.serves_others()


def test_content_length_together_with_chunked_is_a_400(edge: Edge) -> None:
    with connect(edge.server.port) as sock:
        headers = {"X-API-Key": edge.admin, "Transfer-Encoding": "chunked"}
        sock.sendall(request_head("POST", "/keys", headers, content_length=5) + b"0\r\n\r\n")
        response = read_response(sock)
        assert response.status == 400
    edge.serves_others()


def test_headers_that_trickle_are_cut(edge: Edge) -> None:
    with connect(edge.server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(3):
            edge.serves_others()
        assert closed_by_server(sock)  # after HEADER_TIMEOUT_S, headers never complete


def test_a_connection_that_never_speaks_is_cut(edge: Edge) -> None:
    with connect(edge.server.port) as sock:
        edge.serves_others()
        assert closed_by_server(sock)


def test_a_kept_alive_connection_with_slow_second_headers_is_cut(edge: Edge) -> None:
    with connect(edge.server.port) as sock:
        sock.sendall(request_head("GET", "/health", {}))
        assert read_response(sock).status == 200
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request stalls mid-headers
        assert closed_by_server(sock)
    edge.serves_others()


# --- admission: per-key share and real overload ---------------------------------------------


def test_a_key_holding_its_share_gets_429_while_another_key_is_served(edge: Edge) -> None:
    tricklers = [edge.trickle(edge.alpha, "/identify?collection=alpha") for _ in range(2)]
    try:
        assert wait_until(lambda: edge.admitted() == 2)
        with edge.server.client(edge.alpha) as http:
            third = http.post(
                "/identify", params={"collection": "alpha"}, files={"image": ("f", edge.photo)}
            )
        assert third.status_code == 429
        assert third.json()["code"] == "concurrency_limited"
        assert third.headers["Retry-After"] == "1"
        with edge.server.client(edge.beta) as http:
            other = http.post(
                "/identify", params={"collection": "beta"}, files={"image": ("f", edge.photo)}
            )
        assert other.status_code == 200
    finally:
        for trickler in tricklers:
            trickler.stop()
    assert wait_until(lambda: edge.admitted() == 0)
    edge.serves_others()


@pytest.mark.parametrize("path", ["/identify", "/enroll", "/verify", "/embed"])
def test_a_real_overload_answers_503_server_busy_on_every_inference_route(
    edge: Edge, path: str
) -> None:
    """Every admission slot held by real connections (two keys uploading slowly): the next
    request on each inference route gets 503 at once; when they leave, it is served."""
    tricklers = [
        edge.trickle(edge.alpha, "/identify?collection=alpha"),
        edge.trickle(edge.alpha, "/enroll?collection=alpha"),
        edge.trickle(edge.beta, "/embed"),
    ]
    forms = {
        "/identify": {"files": {"image": ("f.jpg", edge.photo)}},
        "/enroll": {"data": {"subject": "Busy"}, "files": [("images", ("f.jpg", edge.photo))]},
        "/verify": {"files": {"image_a": ("a.jpg", edge.photo), "image_b": ("b.jpg", edge.photo)}},
        "/embed": {"files": {"image": ("f.jpg", edge.photo)}},
    }
    try:
        assert wait_until(lambda: edge.admitted() == WORKERS + QUEUE)
        with edge.server.client(edge.admin) as http:
            busy = http.post(path, **forms[path])  # type: ignore[arg-type]
            listing = http.get("/subjects")  # no inference: never refused for load
        assert busy.status_code == 503
        assert busy.json()["code"] == "server_busy"
        assert busy.headers["Retry-After"] == "1"
        assert listing.status_code == 200
    finally:
        for trickler in tricklers:
            trickler.stop()
    assert wait_until(lambda: edge.admitted() == 0)
    with edge.server.client(edge.admin) as http:
        assert http.post(path, **forms[path]).status_code in (200, 201)  # type: ignore[arg-type]


# --- work per request -----------------------------------------------------------------------


def test_twenty_7000px_pngs_are_refused_by_the_pixel_budget_at_once(edge: Edge) -> None:
    """Issue 11, defect 5: 20 PNGs of 7000x7000 zeros (under every byte limit)."""
    zeros = png_of_zeros(7000)
    files = [("images", (f"zero{i}.png", zeros)) for i in range(20)]
    with edge.server.client(edge.alpha) as http:
        response = http.post(
            "/enroll", params={"collection": "alpha"}, data={"subject": "Zero"}, files=files
        )
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "request_too_large"
    assert body["details"] == {"pixels": 20 * 7000 * 7000, "max_pixels": MAX_REQUEST_PIXELS}
    edge.serves_others()


def test_verify_with_two_images_over_the_pixel_budget_is_refused(edge: Edge) -> None:
    big = png_of_zeros(6000)  # 36 MP each, under the 50 MP image limit; 72 MP together
    with edge.server.client(edge.alpha) as http:
        response = http.post(
            "/verify", files={"image_a": ("a.png", big), "image_b": ("b.png", big)}
        )
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    edge.serves_others()


# --- tenant isolation from the query string --------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("collection=alpha&collection=beta", 403),  # the parameter binds the last value
        ("collection=beta&collection=alpha", 200),
        ("collection=", 422),
        ("collection=ALPHA", 403),  # collections are case-sensitive names
        ("collection=alpha%00", 422),
        ("collection=../alpha", 422),
    ],
)
def test_the_edge_and_the_route_agree_on_which_collection_is_asked(
    edge: Edge, query: str, status: int
) -> None:
    with edge.server.client(edge.alpha) as http:
        response = http.get(f"/subjects?{query}")
    assert response.status_code == status, response.text
    if status != 200:
        assert response.json()["code"] == {403: "forbidden", 422: "invalid_request"}[status]
    edge.serves_others()


def test_unknown_paths_reveal_nothing_without_a_key(edge: Edge) -> None:
    with edge.server.client() as anonymous:
        assert anonymous.get("/admin").status_code == 401
        assert anonymous.get("/keys/../subjects").status_code == 401
        assert anonymous.get("/health", headers={"X-API-Key": "junk"}).status_code == 200
    with edge.server.client(edge.alpha) as scoped:
        assert scoped.get("/admin").status_code == 404


# --- what the open endpoints reveal ----------------------------------------------------------


def test_ready_and_metrics_name_no_collection_without_an_admin_key(edge: Edge) -> None:
    with edge.server.client(edge.alpha) as http:
        enrolled = http.post(
            "/enroll",
            params={"collection": "alpha"},
            data={"subject": "Seen"},
            files=[("images", ("f.jpg", edge.photo))],
        )
        assert enrolled.status_code == 201
    for key in (None, edge.alpha):
        with edge.server.client(key) as http:
            ready = http.get("/ready")
            metrics = http.get("/metrics")
        assert ready.status_code == 200
        assert set(ready.json()) == {
            "status",
            "detector",
            "recognizer",
            "threshold",
            "target_fpir",
            "identify_thresholds",
            "generation",  # the gallery generation's number and model id: no tenant data
        }
        assert set(ready.json()["generation"]) == {"number", "model_id"}
        assert metrics.status_code == 200
        assert "alpha" not in metrics.text
        assert "facerec_gallery_faces" not in metrics.text
    with edge.server.client(edge.admin) as http:
        ready = http.get("/ready").json()
        metrics = http.get("/metrics").text
    assert ready["collections"]["alpha"] >= 1
    assert 'facerec_gallery_faces{collection="alpha"}' in metrics
    with edge.server.client("frk_0123456789abcdef_" + "A" * 43) as http:
        assert http.get("/ready").status_code == 401  # a key that is sent must be valid
