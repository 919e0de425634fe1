"""Liveness, readiness and the published API description."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastapi.testclient import TestClient

from app.inference.catalog import resolve_manifest
from app.inference.engines.openvino_session import cpu_computes_bf16

if TYPE_CHECKING:
    from conftest import ClientFactory, Enroll, Identify, LfwPhoto

MODEL_ID = re.compile(r"^(?P<name>[\w.-]+)@(?P<hash>[0-9a-f]{16})(\+dq)?(\+flip)?$")


def test_health_is_ok(client: TestClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_describes_the_loaded_models(client: TestClient) -> None:
    response = client.get("/ready")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    for role, name in (("detector", "scrfd_500m"), ("recognizer", "w600k_mbf_int8")):
        model = body[role]
        manifest, _ = resolve_manifest(name)
        assert model["name"] == name
        assert model["sha256"] == manifest.sha256
        assert model["model_id"] == manifest.model_id
        found = MODEL_ID.match(model["model_id"])
        assert found is not None
        assert found["name"] == name
        assert model["sha256"].startswith(found["hash"])
        # FACEREC_ENGINE=auto on a CPU install with OpenVINO: its CPU device.
        assert model["engine"] == "openvino"
        assert model["providers"] == ["CPU"]
    # FACEREC_OPENVINO_PRECISION=auto: the recognizer in bf16 where this CPU computes it
    # natively, the detector in f32.
    assert body["recognizer"]["precision"] == ("bf16" if cpu_computes_bf16() else "f32")
    assert body["detector"]["precision"] == "f32"


def test_ready_reports_the_recognizer_threshold(client: TestClient) -> None:
    manifest, _ = resolve_manifest("w600k_mbf_int8")
    assert manifest.thresholds is not None

    assert client.get("/ready").json()["threshold"] == manifest.thresholds.match


def test_a_configured_match_threshold_overrides_the_manifest(
    build_client: ClientFactory, identify: Identify, lfw_photo: LfwPhoto
) -> None:
    overridden = build_client(match_threshold=0.55)

    assert overridden.get("/ready").json()["threshold"] == 0.55
    response = identify(overridden, "default", lfw_photo("Donald_Rumsfeld", 39))
    assert response.json()["threshold"] == 0.55


def test_ready_counts_gallery_faces_per_collection(
    client: TestClient, collection: str, enroll: Enroll, lfw_photo: LfwPhoto
) -> None:
    before = client.get("/ready").json()
    assert collection not in before["collections"]

    response = enroll(
        client,
        collection,
        "Rumsfeld",
        lfw_photo("Donald_Rumsfeld", 39),
        lfw_photo("Donald_Rumsfeld", 51),
    )
    assert response.status_code == 201, response.text

    after = client.get("/ready").json()
    assert after["gallery_faces"] == before["gallery_faces"] + 2
    assert after["collections"][collection] == 2
    assert after["gallery_faces"] == sum(after["collections"].values())


def test_interactive_docs_are_served(client: TestClient) -> None:
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


def test_openapi_lists_the_public_endpoints(client: TestClient) -> None:
    response = client.get("/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    for path, method in [
        ("/enroll", "post"),
        ("/identify", "post"),
        ("/verify", "post"),
        ("/embed", "post"),
        ("/subjects", "get"),
        ("/subjects/{subject}", "get"),
        ("/subjects/{subject}", "delete"),
        ("/faces/{face_id}", "delete"),
        ("/health", "get"),
        ("/ready", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from OpenAPI"
