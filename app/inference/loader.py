"""Load the configured detector and recognizer: manifest -> verified file -> session.

The model class is chosen by the manifest's ``family``; the engine by the
``RuntimeOptions``. Neither knows about the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.errors import ManifestInvalid
from app.inference.arcface import ArcFaceEmbedder
from app.inference.catalog import resolve_manifest
from app.inference.engines.base import EngineName, EngineSession
from app.inference.manifest import ModelManifest, resolve_model_file
from app.inference.scrfd import ScrfdDetector
from app.inference.session import RuntimeOptions, create_session


@dataclass(frozen=True, slots=True)
class LoadedModel:
    manifest: ModelManifest
    path: Path
    session: EngineSession

    @property
    def engine(self) -> EngineName:
        return self.session.engine

    @property
    def providers(self) -> list[str]:
        """onnxruntime providers or OpenVINO devices actually in use."""
        return list(self.session.devices)


def load_model(
    ref: str, kind: str, *, models_dir: Path, catalog_dir: Path | None, options: RuntimeOptions
) -> LoadedModel:
    manifest, manifest_path = resolve_manifest(ref, catalog_dir)
    if manifest.kind != kind:
        raise ManifestInvalid(f"{ref!r} is a {manifest.kind} manifest, a {kind} is needed here")
    path = resolve_model_file(manifest, [manifest_path.parent, models_dir])
    return LoadedModel(
        manifest=manifest, path=path, session=create_session(manifest, path, options)
    )


def build_detector(model: LoadedModel) -> ScrfdDetector:
    match model.manifest.family:
        case "scrfd":
            return ScrfdDetector(model.session, model.manifest)
        case other:
            raise ManifestInvalid(f"{model.manifest.name}: no detector class for family {other!r}")


def build_embedder(model: LoadedModel) -> ArcFaceEmbedder:
    match model.manifest.family:
        case "arcface":
            return ArcFaceEmbedder(model.session, model.manifest)
        case other:
            raise ManifestInvalid(
                f"{model.manifest.name}: no recognizer class for family {other!r}"
            )
