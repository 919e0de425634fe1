"""ArcFace recognizer: aligned crops in, L2-normalised embeddings out."""

from __future__ import annotations

import numpy as np

from app.core.types import FloatArray, ImageArray
from app.errors import ModelError
from app.inference.engines.base import EngineSession
from app.inference.manifest import ModelManifest, RecognizerInput


def l2_normalize(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized


class ArcFaceEmbedder:
    def __init__(self, session: EngineSession, manifest: ModelManifest) -> None:
        if not isinstance(manifest.input, RecognizerInput) or manifest.embedding_dim is None:
            raise ModelError(f"{manifest.name} is not a recognizer manifest")
        self.manifest = manifest
        self.dim = manifest.embedding_dim
        self.input_size = manifest.input.size
        self._session = session
        self._input_name = manifest.input.name
        self.max_batch = manifest.input.max_batch
        self._flip = manifest.augment.flip
        self._mean = np.asarray(manifest.preprocess.mean, dtype=np.float32)
        self._std = np.asarray(manifest.preprocess.std, dtype=np.float32)
        self._bgr = manifest.preprocess.color_order == "BGR"

    def embed(self, aligned_faces: ImageArray) -> FloatArray:
        """(N, H, W, 3) uint8 RGB crops -> (N, dim) unit-norm float32 embeddings."""
        count = aligned_faces.shape[0]
        if count == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if self._flip:
            aligned_faces = np.concatenate([aligned_faces, aligned_faces[:, :, ::-1]])
        chunks = [
            self._run(aligned_faces[start : start + self.max_batch])
            for start in range(0, aligned_faces.shape[0], self.max_batch)
        ]
        embeddings = np.concatenate(chunks)
        if self._flip:
            embeddings = embeddings[:count] + embeddings[count:]
        if embeddings.shape[1] != self.dim:
            raise ModelError(
                f"{self.manifest.name}: manifest says dim {self.dim}, model gives "
                f"{embeddings.shape[1]}"
            )
        return l2_normalize(embeddings)

    def _run(self, batch: ImageArray) -> FloatArray:
        pixels = batch[..., ::-1] if self._bgr else batch
        tensor = ((pixels.astype(np.float32) - self._mean) * (1.0 / self._std)).transpose(
            0, 3, 1, 2
        )
        output = self._session.run({self._input_name: np.ascontiguousarray(tensor)})[0]
        return np.asarray(output, dtype=np.float32).reshape(batch.shape[0], -1)
