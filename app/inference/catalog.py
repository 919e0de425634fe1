"""The model catalog: shipped manifests and official packs under ``models/``.

Layout of a catalog directory::

    manifests/<name>.json   one ModelManifest per model file (app.inference.manifest)
    packs/<name>.json       one ModelPack per downloadable archive (app.inference.fetch)

A reference to a manifest or pack is either a catalog name (``scrfd_500m``) or a
path to a JSON file (``training/out/manifest.json``), so a fine-tuned model is
selected exactly like a shipped one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import app
from app.errors import ManifestInvalid, ModelNotFound
from app.inference.manifest import ModelManifest, load_manifest

MANIFESTS_SUBDIR = "manifests"
PACKS_SUBDIR = "packs"

# Catalog names become file names: no separators, no leading dot, nothing that
# could climb out of the catalog directory.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_SHA256_PATTERN = r"^[0-9a-f]{64}$"


# Where an installed wheel keeps the catalog: setup.py packages models/ as app/_catalog.
PACKAGED_CATALOG = "_catalog"


def default_catalog_dir() -> Path:
    """The shipped catalog: ``app/_catalog`` in an installed wheel, else ``models/``
    at the repository root next to the ``app`` package (checkouts, editable installs)."""
    package_dir = Path(app.__file__).resolve().parent
    packaged = package_dir / PACKAGED_CATALOG
    return packaged if packaged.is_dir() else package_dir.parent / "models"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PackMember(_Frozen):
    """One file to take out of a pack's archive."""

    name: str = Field(description="file name inside the archive (matched by basename)")
    sha256: str | None = Field(
        pattern=_SHA256_PATTERN, description="null: not pinned, installed only on request"
    )
    manifest: str | None = Field(
        None, pattern=_NAME_PATTERN, description="catalog name of its manifest"
    )

    @model_validator(mode="after")
    def _plain_file_name(self) -> PackMember:
        if not _is_plain_name(self.name):
            raise ValueError(f"member name {self.name!r} must be a plain file name")
        return self


class ModelPack(_Frozen):
    """A downloadable archive, its pinned hash and the members to install from it."""

    name: str = Field(pattern=_NAME_PATTERN)
    url: str = Field(min_length=1)
    archive_sha256: str | None = Field(pattern=_SHA256_PATTERN)
    target_dir: str = Field(description="members land in <models dir>/<target_dir>/<name>")
    members: tuple[PackMember, ...] = Field(min_length=1)
    licence: str
    notes: str | None = None

    @model_validator(mode="after")
    def _safe_layout(self) -> ModelPack:
        if not _is_plain_name(self.target_dir):
            raise ValueError(f"target_dir {self.target_dir!r} must be a plain directory name")
        names = [member.name for member in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names repeat: {names}")
        return self

    def member_file(self, member: PackMember) -> str:
        """Where ``member`` is installed, relative to the models directory."""
        return f"{self.target_dir}/{member.name}"

    def unpinned(self) -> list[str]:
        """What has no pinned sha256 (the archive and/or member names)."""
        missing = [] if self.archive_sha256 else [f"archive {self.url}"]
        return missing + [member.name for member in self.members if member.sha256 is None]


def list_manifests(catalog_dir: Path | None = None) -> dict[str, Path]:
    """Catalog manifest names -> manifest paths, sorted by name."""
    return _list_json(_catalog(catalog_dir) / MANIFESTS_SUBDIR)


def list_packs(catalog_dir: Path | None = None) -> dict[str, Path]:
    """Catalog pack names -> pack paths, sorted by name."""
    return _list_json(_catalog(catalog_dir) / PACKS_SUBDIR)


def resolve_manifest(ref: str, catalog_dir: Path | None = None) -> tuple[ModelManifest, Path]:
    """Load the manifest ``ref`` names: a catalog name or a path to a JSON file.

    Returns the validated manifest and its path; the model file is then found with
    ``resolve_model_file(manifest, [path.parent, models_dir])``.
    """
    path = _resolve_ref(ref, _catalog(catalog_dir) / MANIFESTS_SUBDIR, "manifest")
    return load_manifest(path), path


def resolve_pack(ref: str, catalog_dir: Path | None = None) -> tuple[ModelPack, Path]:
    """Load the pack ``ref`` names: a catalog name or a path to a JSON file."""
    path = _resolve_ref(ref, _catalog(catalog_dir) / PACKS_SUBDIR, "pack")
    return load_pack(path), path


def load_pack(path: Path) -> ModelPack:
    """Read and validate a pack file; errors say which file and what is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestInvalid(f"pack file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestInvalid(f"pack {path} is not valid JSON: {exc}") from exc
    try:
        return ModelPack.model_validate(raw)
    except ValidationError as exc:
        raise ManifestInvalid(f"pack {path} is invalid: {exc}") from exc


def pack_of(manifest: ModelManifest, catalog_dir: Path | None = None) -> str | None:
    """Name of the catalog pack that installs ``manifest``'s file, if there is one."""
    packs = list_packs(catalog_dir)
    pack_name = manifest.source.pack
    return pack_name if pack_name in packs else None


def _catalog(catalog_dir: Path | None) -> Path:
    return default_catalog_dir() if catalog_dir is None else catalog_dir


def _list_json(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.json")) if path.is_file()}


def _is_plain_name(name: str) -> bool:
    return bool(re.match(_NAME_PATTERN, name)) and PurePosixPath(name).name == name


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".json") or "/" in ref or "\\" in ref or ref.startswith("~")


def _resolve_ref(ref: str, directory: Path, what: str) -> Path:
    if _looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"{what} file not found: {path.resolve()}", file=str(path))
        return path
    available = _list_json(directory)
    if ref in available:
        return available[ref]
    names = ", ".join(available) or "(none)"
    raise ModelNotFound(
        f"no {what} named {ref!r} in {directory}; available: {names}; "
        f"or give a path to a {what} JSON file",
        name=ref,
    )
