"""Load the configured detector and recognizer: manifest -> verified file -> session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from app.errors import ManifestInvalid
from app.inference.arcface import ArcFaceEmbedder
from app.inference.catalog import resolve_manifest
from app.inference.manifest import ModelManifest, resolve_model_file
from app.inference.scrfd import ScrfdDetector
from app.inference.session import RuntimeOptions, create_session


@dataclass(frozen=True, slots=True)
class LoadedModel:
    manifest: ModelManifest
    path: Path
    session: ort.InferenceSession

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())


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
    return ScrfdDetector(model.session, model.manifest)


def build_embedder(model: LoadedModel) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(model.session, model.manifest)
