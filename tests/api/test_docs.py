"""/docs and /redoc work without internet: every asset they load comes from the service."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

# src="..." / href="..." / url: '...' references in the pages' HTML and inline script.
_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\s*:\s*['"]([^'"]+)['"]""")
_EXPECTED_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def references(html: str) -> list[str]:
    return [first or second for first, second in _REFERENCE.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside_the_service(client: TestClient, page: str) -> None:
    response = client.get(page)

    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    found = references(response.text)
    assert found, response.text
    assert not re.search(r"https?://", response.text), "the page names an outside URL"
    for reference in found:
        asset = client.get(reference)
        assert asset.status_code == 200, reference
        suffix = reference[reference.rfind(".") :]
        if suffix in _EXPECTED_TYPES:
            assert _EXPECTED_TYPES[suffix] in asset.headers["content-type"], reference
            assert len(asset.content) > 1000, reference


def test_swagger_ui_reads_this_services_schema(client: TestClient) -> None:
    page = client.get("/docs").text

    assert "'/openapi.json'" in page or '"/openapi.json"' in page
    assert client.get("/openapi.json").json()["info"]["title"] == "facerec"
