"""The frozen prefix: when only the last layer groups train (``last:K`` or the head, BatchNorm
frozen), everything before them is a fixed function.

``split_before`` cuts the backbone's fx graph where one tensor is live, ``prefix_features``
computes the prefix's output once for a few views of every face (the crop, its mirror,
random augmentations) and ``FeatureDataset`` serves one of those views per face and
epoch, so the epochs run only the trainable rest: on a CPU, where a MobileFaceNet forward
pass costs ~10 ms a face, this is what makes several epochs affordable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import fx, nn
from tqdm import tqdm

from training.config import AugmentConfig, TrainConfig
from training.data import augment_face
from training.tensors import faces_to_tensor
from training.torch_embed import INFERENCE_BATCH, run_module

FEATURE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class SplitModule:
    """``suffix(prefix(x)) == module(x)``; both share the module's layers (and parameters)."""

    prefix: fx.GraphModule
    suffix: fx.GraphModule


def _live_after(nodes: list[fx.Node], position: int) -> list[fx.Node]:
    """Values defined at or before ``nodes[position]`` and used after it (constants aside)."""
    index = {node: i for i, node in enumerate(nodes)}
    return [
        node
        for node in nodes[: position + 1]
        if node.op != "get_attr" and any(index[user] > position for user in node.users)
    ]


def _copy_nodes(
    module: fx.GraphModule, nodes: list[fx.Node], env: dict[fx.Node, fx.Node], graph: fx.Graph
) -> None:
    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:  # a constant defined on the other side of the cut
            if node.op != "get_attr":
                raise ValueError(f"{node.name} crosses the cut: not a single-tensor boundary")
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    for node in nodes:
        env[node] = graph.node_copy(node, lookup)


def split_before(module: nn.Module, first_trainable: nn.Module) -> SplitModule | None:
    """Cut an fx graph where one tensor is live, as late as possible before the first layer
    of ``first_trainable``; None when ``module`` is not an fx graph (no cache then)."""
    if not isinstance(module, fx.GraphModule):
        return None
    targets = {id(m) for m in first_trainable.modules()}
    nodes = list(module.graph.nodes)
    first = next(
        (
            i
            for i, node in enumerate(nodes)
            if node.op == "call_module" and id(module.get_submodule(str(node.target))) in targets
        ),
        None,
    )
    if first is None:
        raise ValueError("the first trainable group is not called by the backbone graph")
    cut = next((p for p in range(first - 1, -1, -1) if len(_live_after(nodes, p)) == 1), None)
    if cut is None:
        return None
    (boundary,) = _live_after(nodes, cut)
    prefix_graph, suffix_graph = fx.Graph(), fx.Graph()
    prefix_env: dict[fx.Node, fx.Node] = {}
    _copy_nodes(module, nodes[: cut + 1], prefix_env, prefix_graph)
    prefix_graph.output(prefix_env[boundary])
    suffix_env = {boundary: suffix_graph.placeholder("features")}
    _copy_nodes(module, nodes[cut + 1 :], suffix_env, suffix_graph)
    prefix, suffix = fx.GraphModule(module, prefix_graph), fx.GraphModule(module, suffix_graph)
    for part in (prefix, suffix):
        part.graph.eliminate_dead_code()
        part.graph.lint()
        part.recompile()
    return SplitModule(prefix, suffix)


def frozen_split(
    module: nn.Module, trainable: list[nn.Module], config: TrainConfig, *, freeze_last: int | None
) -> SplitModule | None:
    """The prefix to cache and the suffix to train; None (train on images end to end) unless
    the cache is on, BatchNorm frozen and only the last groups (or the head) train."""
    if not config.cache_features or config.batchnorm != "frozen" or freeze_last is None:
        return None
    if not trainable:  # head only: the whole backbone is the frozen prefix
        if not isinstance(module, fx.GraphModule):
            return None
        identity = fx.Graph()
        identity.output(identity.placeholder("features"))
        return SplitModule(module, fx.GraphModule(module, identity))
    return split_before(module, trainable[0])


@torch.no_grad()
def prefix_features(
    prefix: nn.Module,
    crops: NDArray[np.uint8],
    *,
    views: int,
    augment: AugmentConfig,
    seed: int,
    device: torch.device,
    desc: str,
    progress: bool,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(views, N, ...) prefix outputs: view 0 the crop, 1 its mirror, then augmentations
    drawn from (seed, view, index). Kept on the CPU in ``dtype`` (float16 halves the
    cache; its 11-bit mantissa is far finer than the augmentation noise), written into
    one preallocated tensor (no second copy at the end)."""
    prefix.eval()
    cache: torch.Tensor | None = None
    for view in range(views):
        bar = tqdm(
            range(0, crops.shape[0], INFERENCE_BATCH),
            desc=f"{desc} view {view + 1}/{views}",
            unit="batch",
            disable=not progress,
            mininterval=2,
        )
        for start in bar:
            faces = crops[start : start + INFERENCE_BATCH]
            if view == 1:
                faces = faces[:, :, ::-1]
            elif view >= 2:
                faces = np.stack(
                    [
                        augment_face(
                            face, np.random.default_rng((seed, 1_000_000 + view, i)), augment
                        )
                        for i, face in enumerate(faces, start=start)
                    ]
                )
            outputs = run_module(prefix, faces_to_tensor(faces).to(device)).cpu()
            if cache is None:
                cache = torch.empty((views, crops.shape[0], *outputs.shape[1:]), dtype=dtype)
            cache[view, start : start + outputs.shape[0]] = outputs.to(dtype)
    if cache is None:
        raise ValueError("no faces to compute prefix features of")
    return cache
