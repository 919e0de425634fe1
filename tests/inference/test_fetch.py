"""fetch_pack against a real HTTP server on 127.0.0.1 serving a zip built here."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from app.errors import ModelChecksumMismatch, ModelError, ModelNotFound
from app.inference.catalog import ModelPack
from app.inference.fetch import archive_url, fetch_pack

DETECTOR_BYTES = bytes(range(256)) * 40 + b"detector"
RECOGNIZER_BYTES = bytes(reversed(range(256))) * 60 + b"recognizer"
UNUSED_BYTES = b"an upstream file we do not install"


@dataclass
class Server:
    root: Path
    base_url: str
    requests: list[str] = field(default_factory=list)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        self.requests.append(self.path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_zip(path: Path, entries: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path.read_bytes()


def make_pack(server: Server, entries: dict[str, bytes], **overrides: Any) -> ModelPack:
    """A pack for det.onnx + rec.onnx served as tiny.zip, hashes pinned from the fixture."""
    archive = write_zip(server.root / "tiny.zip", entries)
    spec: dict[str, Any] = {
        "name": "tiny",
        "url": f"{server.base_url}/tiny.zip",
        "archive_sha256": sha256(archive),
        "target_dir": "tiny",
        "members": [
            {"name": "det.onnx", "sha256": sha256(DETECTOR_BYTES)},
            {"name": "rec.onnx", "sha256": sha256(RECOGNIZER_BYTES)},
        ],
        "licence": "test data",
    }
    spec.update(overrides)
    return ModelPack.model_validate(spec)


STANDARD_ENTRIES = {
    "det.onnx": DETECTOR_BYTES,
    "rec.onnx": RECOGNIZER_BYTES,
    "genderage.onnx": UNUSED_BYTES,
}


def all_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_fetch_downloads_verifies_and_installs_only_listed_members(
    server: Server, tmp_path: Path
) -> None:
    pack = make_pack(server, STANDARD_ENTRIES)
    models_dir = tmp_path / "models"

    result = fetch_pack(pack, models_dir, progress=False)

    assert result.downloaded is True
    assert (models_dir / "tiny" / "det.onnx").read_bytes() == DETECTOR_BYTES
    assert (models_dir / "tiny" / "rec.onnx").read_bytes() == RECOGNIZER_BYTES
    assert all_files(models_dir) == [
        models_dir / "tiny" / "det.onnx",
        models_dir / "tiny" / "rec.onnx",
    ]
    assert [(f.path.name, f.sha256) for f in result.files] == [
        ("det.onnx", sha256(DETECTOR_BYTES)),
        ("rec.onnx", sha256(RECOGNIZER_BYTES)),
    ]


def test_fetch_finds_members_inside_a_subfolder_by_basename(server: Server, tmp_path: Path) -> None:
    entries = {"tiny/": b"", "tiny/det.onnx": DETECTOR_BYTES, "tiny/rec.onnx": RECOGNIZER_BYTES}
    pack = make_pack(server, entries)

    fetch_pack(pack, tmp_path / "models", progress=False)

    assert (tmp_path / "models" / "tiny" / "det.onnx").read_bytes() == DETECTOR_BYTES


def test_second_fetch_is_a_no_op(server: Server, tmp_path: Path) -> None:
    pack = make_pack(server, STANDARD_ENTRIES)
    fetch_pack(pack, tmp_path / "models", progress=False)
    requests_after_first = len(server.requests)

    result = fetch_pack(pack, tmp_path / "models", progress=False)

    assert result.downloaded is False
    assert len(server.requests) == requests_after_first
    assert [f.path.name for f in result.files] == ["det.onnx", "rec.onnx"]


def test_fetch_replaces_a_corrupt_installed_file(server: Server, tmp_path: Path) -> None:
    pack = make_pack(server, STANDARD_ENTRIES)
    fetch_pack(pack, tmp_path / "models", progress=False)
    (tmp_path / "models" / "tiny" / "rec.onnx").write_bytes(b"truncated")

    result = fetch_pack(pack, tmp_path / "models", progress=False)

    assert result.downloaded is True
    assert (tmp_path / "models" / "tiny" / "rec.onnx").read_bytes() == RECOGNIZER_BYTES


def test_archive_with_wrong_sha256_is_refused_and_nothing_is_left_behind(
    server: Server, tmp_path: Path
) -> None:
    pack = make_pack(server, STANDARD_ENTRIES, archive_sha256="0" * 64)
    models_dir = tmp_path / "models"

    with pytest.raises(ModelChecksumMismatch, match="archive sha256"):
        fetch_pack(pack, models_dir, progress=False)

    assert all_files(models_dir) == []


def test_member_with_wrong_sha256_is_refused_and_no_member_is_installed(
    server: Server, tmp_path: Path
) -> None:
    members = [
        {"name": "det.onnx", "sha256": sha256(DETECTOR_BYTES)},
        {"name": "rec.onnx", "sha256": "f" * 64},
    ]
    pack = make_pack(server, STANDARD_ENTRIES, members=members)
    models_dir = tmp_path / "models"

    with pytest.raises(ModelChecksumMismatch, match=r"rec\.onnx"):
        fetch_pack(pack, models_dir, progress=False)

    assert all_files(models_dir) == []
    assert list(models_dir.iterdir()) == []


@pytest.mark.parametrize(
    "hostile_name",
    ["../det.onnx", "tiny/../../det.onnx", "/tmp/det.onnx", "..\\det.onnx", "C:/det.onnx"],
)
def test_zip_slip_entry_is_refused(server: Server, tmp_path: Path, hostile_name: str) -> None:
    entries = {hostile_name: DETECTOR_BYTES, "rec.onnx": RECOGNIZER_BYTES}
    pack = make_pack(server, entries)
    models_dir = tmp_path / "models"

    with pytest.raises(ModelError, match="unsafe entry names"):
        fetch_pack(pack, models_dir, progress=False)

    assert all_files(models_dir) == []
    assert not (tmp_path / "det.onnx").exists()


def test_missing_member_is_refused_with_the_archive_listing(server: Server, tmp_path: Path) -> None:
    pack = make_pack(server, {"det.onnx": DETECTOR_BYTES, "other.onnx": UNUSED_BYTES})
    models_dir = tmp_path / "models"

    with pytest.raises(ModelNotFound, match=r"no member 'rec.onnx'.*other.onnx"):
        fetch_pack(pack, models_dir, progress=False)

    assert all_files(models_dir) == []


def test_ambiguous_member_is_refused(server: Server, tmp_path: Path) -> None:
    entries = {"a/det.onnx": DETECTOR_BYTES, "b/det.onnx": DETECTOR_BYTES, "rec.onnx": b"x"}
    pack = make_pack(server, entries)

    with pytest.raises(ModelError, match="ambiguous"):
        fetch_pack(pack, tmp_path / "models", progress=False)


def test_http_404_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    pack = make_pack(server, STANDARD_ENTRIES, url=f"{server.base_url}/no-such.zip")
    models_dir = tmp_path / "models"

    with pytest.raises(ModelNotFound, match=r"no-such.zip: HTTP 404"):
        fetch_pack(pack, models_dir, progress=False)

    assert all_files(models_dir) == []


def test_unreachable_host_is_a_model_error(tmp_path: Path) -> None:
    pack = ModelPack.model_validate(
        {
            "name": "tiny",
            "url": "http://127.0.0.1:9/tiny.zip",  # port 9 (discard): nothing listens
            "archive_sha256": "0" * 64,
            "target_dir": "tiny",
            "members": [{"name": "det.onnx", "sha256": "0" * 64}],
            "licence": "test data",
        }
    )

    with pytest.raises(ModelError, match="could not download"):
        fetch_pack(pack, tmp_path / "models", progress=False)

    assert all_files(tmp_path / "models") == []


def test_archive_that_is_not_a_zip_is_refused(server: Server, tmp_path: Path) -> None:
    pack = make_pack(server, STANDARD_ENTRIES)
    (server.root / "tiny.zip").write_bytes(b"not a zip at all")
    pack = pack.model_copy(update={"archive_sha256": sha256(b"not a zip at all")})

    with pytest.raises(ModelError, match="not a readable zip"):
        fetch_pack(pack, tmp_path / "models", progress=False)

    assert all_files(tmp_path / "models") == []


def test_unpinned_pack_is_refused_unless_allowed(server: Server, tmp_path: Path) -> None:
    members = [{"name": "det.onnx", "sha256": None}, {"name": "rec.onnx", "sha256": None}]
    pack = make_pack(server, STANDARD_ENTRIES, archive_sha256=None, members=members)

    with pytest.raises(ModelError, match="allow-unpinned"):
        fetch_pack(pack, tmp_path / "models", progress=False)
    assert server.requests == []

    result = fetch_pack(pack, tmp_path / "models", progress=False, allow_unpinned=True)

    assert result.downloaded is True
    assert (tmp_path / "models" / "tiny" / "det.onnx").read_bytes() == DETECTOR_BYTES
    assert result.files[1].sha256 == sha256(RECOGNIZER_BYTES)


def test_url_base_replaces_where_the_archive_is_downloaded_from(
    server: Server, tmp_path: Path
) -> None:
    pack = make_pack(server, STANDARD_ENTRIES, url="https://example.invalid/releases/tiny.zip")

    fetch_pack(pack, tmp_path / "models", url_base=server.base_url + "/", progress=False)

    assert server.requests == ["/tiny.zip"]


def test_url_override_wins_over_url_base(server: Server, tmp_path: Path) -> None:
    pack = make_pack(server, STANDARD_ENTRIES, url="https://example.invalid/tiny.zip")

    fetch_pack(
        pack,
        tmp_path / "models",
        url_override=f"{server.base_url}/tiny.zip",
        url_base="https://mirror.invalid/",
        progress=False,
    )

    assert (tmp_path / "models" / "tiny" / "rec.onnx").is_file()


@pytest.mark.parametrize(
    ("url_override", "url_base", "expected"),
    [
        (None, None, "https://host/r/v0.7/pack.zip"),
        (None, "http://mirror/m", "http://mirror/m/pack.zip"),
        (None, "http://mirror/m/", "http://mirror/m/pack.zip"),
        ("file:///srv/pack.zip", "http://mirror/m", "file:///srv/pack.zip"),
    ],
)
def test_archive_url(url_override: str | None, url_base: str | None, expected: str) -> None:
    pack = ModelPack.model_validate(
        {
            "name": "pack",
            "url": "https://host/r/v0.7/pack.zip",
            "archive_sha256": None,
            "target_dir": "pack",
            "members": [{"name": "m.onnx", "sha256": None}],
            "licence": "test data",
        }
    )

    assert archive_url(pack, url_override=url_override, url_base=url_base) == expected


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("target_dir", "../escape"),
        ("target_dir", "a/b"),
        ("members", [{"name": "../m", "sha256": None}]),
    ],
)
def test_pack_with_unsafe_layout_does_not_validate(field_name: str, value: Any) -> None:
    spec: dict[str, Any] = {
        "name": "pack",
        "url": "https://host/pack.zip",
        "archive_sha256": None,
        "target_dir": "pack",
        "members": [{"name": "m.onnx", "sha256": None}],
        "licence": "test data",
    }
    spec[field_name] = value

    with pytest.raises(ValueError, match="plain"):
        ModelPack.model_validate(spec)


def test_fetch_shows_a_progress_bar_on_stderr_when_asked(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = make_pack(server, STANDARD_ENTRIES)

    fetch_pack(pack, tmp_path / "models", progress=True)

    assert "tiny.zip" in capsys.readouterr().err
