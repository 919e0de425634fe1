"""Embeddings through a PyTorch module, the way the service embeds: aligned crops ->
unit-norm (optionally flip-sum) vectors; and the class centroids a margin head starts from."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from app.core.types import FloatArray
from app.inference.arcface import l2_normalize
from training.tensors import faces_to_tensor, sum_views, views

# Faces per forward pass outside training: small batches stay in the CPU caches
# (measured ~10 ms a face at 8-16, several times slower at 64 on a 2-core CPU).
INFERENCE_BATCH = 16


def run_module(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward in small chunks; channels-last input on CPU (faster convolutions)."""
    outputs = []
    for start in range(0, batch.shape[0], INFERENCE_BATCH):
        chunk = batch[start : start + INFERENCE_BATCH]
        if chunk.device.type == "cpu" and chunk.dim() == 4:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        outputs.append(module(chunk).float())
    return torch.cat(outputs)


class TorchEmbedder:
    """The service's ``Embedder`` shape over a PyTorch backbone: crops -> unit-norm vectors,
    optionally flip-sum (the embedding of a crop plus that of its mirror image)."""

    def __init__(
        self, module: nn.Module, dim: int, *, device: torch.device, flip: bool = True
    ) -> None:
        self.module = module
        self.dim = dim
        self.device = device
        self.flip = flip

    @torch.no_grad()
    def embed(self, aligned_faces: NDArray[np.uint8]) -> FloatArray:
        if aligned_faces.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        was_training = self.module.training
        self.module.eval()
        try:
            batch = faces_to_tensor(aligned_faces).to(self.device)
            embeddings = sum_views([run_module(self.module, v) for v in views(batch, self.flip)])
        finally:
            self.module.train(was_training)
        return l2_normalize(embeddings.cpu().numpy().astype(np.float32))


def class_centroids(
    embeddings: FloatArray, labels: NDArray[np.int64], classes: int
) -> torch.Tensor:
    """Mean unit-norm embedding of each class (the head's starting weights)."""
    sums = np.zeros((classes, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, embeddings)
    return torch.from_numpy(l2_normalize(sums.astype(np.float32)))


# --- the frozen prefix --------------------------------------------------------------------


@torch.no_grad()
def suffix_embeddings(
    suffix: nn.Module, features: torch.Tensor, device: torch.device
) -> FloatArray:
    """Unit-norm sum over the views of cached prefix ``features`` (views, N, ...) of the
    suffix's outputs: views 0 and 1 (the crop and its mirror) give flip-sum embeddings."""
    was_training = suffix.training
    suffix.eval()
    try:
        total = torch.zeros(0)
        for view in features:
            outputs = torch.cat(
                [
                    run_module(suffix, view[start : start + 256].float().to(device)).cpu()
                    for start in range(0, view.shape[0], 256)
                ]
            )
            total = outputs if total.numel() == 0 else total + outputs
    finally:
        suffix.train(was_training)
    return l2_normalize(total.numpy().astype(np.float32))


@torch.no_grad()
def embed_twice(
    crops: NDArray[np.uint8],
    *,
    prefix: nn.Module | None,
    first: nn.Module,
    second: nn.Module,
    device: torch.device,
    flip: bool,
    desc: str,
    progress: bool,
) -> tuple[FloatArray, FloatArray]:
    """(Flip-sum) unit-norm embeddings of ``crops`` by two modules that share ``prefix``
    (run once for both; None: the modules take the crops themselves)."""
    first_parts: list[FloatArray] = []
    second_parts: list[FloatArray] = []
    chunk = INFERENCE_BATCH * 8
    for start in tqdm(
        range(0, crops.shape[0], chunk), desc=desc, unit="chunk", disable=not progress
    ):
        faces = crops[start : start + chunk]
        inputs = views(faces_to_tensor(faces).to(device), flip)
        if prefix is not None:
            prefix.eval()
            inputs = [run_module(prefix, batch) for batch in inputs]
        for module, parts in ((first, first_parts), (second, second_parts)):
            was_training = module.training
            module.eval()
            outputs = [run_module(module, batch) for batch in inputs]
            module.train(was_training)
            parts.append(sum_views(outputs).cpu().numpy().astype(np.float32))
    return l2_normalize(np.concatenate(first_parts)), l2_normalize(np.concatenate(second_parts))
