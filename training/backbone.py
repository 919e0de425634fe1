"""Pretrained ArcFace recognizers imported from their ONNX files as trainable PyTorch modules.

Approach: a small, generic ONNX-graph-to-``torch.fx`` converter rather than
hand-written MobileFaceNet / IResNet classes with a weight-name mapping. The
ONNX files carry no layer names we could rely on, BatchNorm is folded into
most convolutions at export, and the dynamically quantised file splits every
bias into a separate ``Reshape -> Add``: a native definition would need a
fragile, per-file mapping, while the graph itself states the network exactly.
The converter rebuilds that graph node for node, so MobileFaceNet and IResNet
exports, INT8 or FP32, import the same way (tested on the shared INT8 MBF, its
FP32 dequantisation, and a small IResNet exported as InsightFace's files are);
a graph with an op outside the supported set is refused up front, naming it.

* Integer graphs (``ConvInteger``/``MatMulInteger``) are first dequantised with
  the service's own ``dequantize_weights``; float files pass through.
* ``Conv`` -> ``nn.Conv2d``, ``Gemm``/``MatMul`` with a constant weight ->
  ``nn.Linear``, ``PRelu`` -> ``nn.PReLU``, ``BatchNormalization`` ->
  ``nn.BatchNorm1d/2d`` (running statistics, eps and momentum kept, so it
  trains with batch statistics and evaluates with the running ones),
  ``Dropout`` -> ``nn.Dropout``. Their weights are ``nn.Parameter``s.
* A constant bias added to a bias-free Conv/Linear output becomes that
  layer's ``bias`` parameter; other constants become buffers (not trained).
* Constant-only subgraphs are evaluated once at import.

Where the export folded BatchNorm into a convolution, that convolution trains
as a plain conv with bias: the folding cannot be undone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, cast

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from onnx import helper, numpy_helper
from torch import fx, nn

from app.inference.manifest import file_sha256
from app.inference.onnx_import import dequantize_weights
from training.tensors import INPUT_SHAPE

_INTEGER_OPS = frozenset({"ConvInteger", "MatMulInteger"})
_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)

_Value: TypeAlias = torch.Tensor | fx.Node  # a constant known at import, or a graph value
_Handler: TypeAlias = Callable[["_Builder", onnx.NodeProto, list[_Value | None]], list[_Value]]


class OnnxImportError(ValueError):
    """The ONNX file cannot be rebuilt as a PyTorch module; the message says why."""


@dataclass(frozen=True)
class ImportedBackbone:
    """A recognizer network rebuilt from an ONNX file.

    ``module`` maps (N, 3, 112, 112) normalised input (see ``training.tensors``) to
    (N, embedding_dim) embeddings, not L2-normalised. It is returned in eval mode.
    """

    module: fx.GraphModule
    embedding_dim: int
    source_sha256: str
    source_name: str
    dequantized: bool  # the source was INT8 and its weights were dequantised on import
    group_names: tuple[tuple[str, ...], ...]  # submodule names of each layer group

    @property
    def source_ref(self) -> str:
        """``file@sha256-prefix``: the base model as manifests name it."""
        return f"{self.source_name}@{self.source_sha256[:16]}"

    def layer_groups(self) -> list[nn.Module]:
        """The network cut into ordered groups, input to output; every parameter in one.

        A cut is placed wherever exactly one tensor is live between two graph
        nodes, so a residual block is never split; pieces without a Conv/Linear
        (activations, BatchNorm, Flatten) join the Conv/Linear they follow, or
        the next group when they follow a residual sum. MobileFaceNet gives a
        group per conv layer and per residual block, IResNet one per residual
        block plus stem and head (final BatchNorm, fc, feature BatchNorm).

        To train only the last K groups: ``requires_grad_(False)`` on the others
        and, after every ``module.train()``, ``.eval()`` on them so their
        BatchNorm statistics stay frozen too.
        """
        return [
            nn.ModuleDict({name: self.module.get_submodule(name) for name in names})
            for names in self.group_names
        ]


def load_backbone(onnx_path: Path) -> ImportedBackbone:
    """Import an ArcFace ONNX recognizer (INT8 or FP32) as a trainable module."""
    model = onnx.load_model(str(onnx_path))
    dequantized = any(node.op_type in _INTEGER_OPS for node in model.graph.node)
    if dequantized:
        model = dequantize_weights(model)
    try:
        module = convert_graph(model)
    except OnnxImportError as exc:
        raise OnnxImportError(f"{onnx_path.name}: {exc}") from exc
    module.eval()
    try:
        with torch.no_grad():
            output = module(torch.zeros(2, *INPUT_SHAPE))
    except RuntimeError as exc:
        raise OnnxImportError(
            f"{onnx_path.name}: the rebuilt network fails on a (2, 3, 112, 112) input: {exc}"
        ) from exc
    if output.dim() != 2 or output.shape[0] != 2:
        raise OnnxImportError(
            f"{onnx_path.name}: expected (N, dim) embeddings, the network gives "
            f"{tuple(output.shape)}"
        )
    return ImportedBackbone(
        module=module,
        embedding_dim=int(output.shape[1]),
        source_sha256=file_sha256(onnx_path),
        source_name=onnx_path.name,
        dequantized=dequantized,
        group_names=layer_group_names(module),
    )


def convert_graph(model: onnx.ModelProto) -> fx.GraphModule:
    """Rebuild a float ONNX graph with one input and one output as an ``fx.GraphModule``."""
    graph = model.graph
    unsupported = sorted(
        {node.op_type for node in graph.node if node.domain not in ("", "ai.onnx")}
        | {node.op_type for node in graph.node if node.op_type not in _HANDLERS}
    )
    if unsupported:
        raise OnnxImportError(
            f"unsupported ONNX ops {unsupported}; the importer handles {sorted(_HANDLERS)}"
        )
    builder = _Builder(model)
    for node in graph.node:
        inputs = [builder.values[name] if name else None for name in node.input]
        outputs = _HANDLERS[node.op_type](builder, node, inputs)
        builder.values.update(zip(node.output, outputs, strict=False))
    if len(graph.output) != 1:
        raise OnnxImportError(f"expected one output, the graph has {len(graph.output)}")
    result = builder.values[graph.output[0].name]
    if not isinstance(result, fx.Node):
        raise OnnxImportError("the graph output does not depend on its input")
    builder.graph.output(result)
    return fx.GraphModule(builder.root, builder.graph, class_name="ImportedRecognizer")


class _Builder:
    """Holds the fx graph under construction and the module its targets live on."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.values: dict[str, _Value] = {
            init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
            for init in graph.initializer
        }
        inputs = [value.name for value in graph.input if value.name not in self.values]
        if len(inputs) != 1:
            raise OnnxImportError(f"expected one image input, the graph has {inputs}")
        self.values[inputs[0]] = self.graph.placeholder("x")
        self.ranks = _tensor_ranks(model)
        self.consumers = Counter(name for node in graph.node for name in node.input)
        self.consumers.update(output.name for output in graph.output)
        # Outputs of Conv/Linear layers created without a bias, each used exactly once.
        self.bias_free: dict[str, nn.Conv2d | nn.Linear] = {}
        self._counts: Counter[str] = Counter()
        # A constant used by several nodes becomes one buffer (the tensor is kept alive
        # here, so its id cannot be reused by another tensor).
        self._buffers: dict[int, tuple[torch.Tensor, fx.Node]] = {}

    def _name(self, prefix: str) -> str:
        self._counts[prefix] += 1
        return f"{prefix}_{self._counts[prefix] - 1}"

    def module(self, prefix: str, module: nn.Module, value: _Value) -> fx.Node:
        name = self._name(prefix)
        self.root.add_module(name, module)
        return self.graph.call_module(name, (self.node(value),))

    def node(self, value: _Value) -> fx.Node:
        """A graph value; a constant is registered as a buffer first."""
        if isinstance(value, fx.Node):
            return value
        if id(value) not in self._buffers:
            name = self._name("constant")
            self.root.register_buffer(name, value)
            self._buffers[id(value)] = (value, self.graph.get_attr(name))
        return self._buffers[id(value)][1]

    def function(self, function: Callable[..., torch.Tensor], *args: object) -> _Value:
        """``function(*args)``: computed now when no argument is a graph value."""
        if not any(isinstance(arg, fx.Node) for arg in args):
            return function(*args)
        graph_args = tuple(self.node(a) if isinstance(a, torch.Tensor) else a for a in args)
        return self.graph.call_function(function, cast("tuple[fx.node.Argument, ...]", graph_args))


def _tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor ONNX shape inference can tell (dimensions may be stale)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    ranks: dict[str, int] = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def _input(node: onnx.NodeProto, inputs: list[_Value | None], index: int = 0) -> _Value:
    value = inputs[index] if index < len(inputs) else None
    if value is None:
        raise OnnxImportError(f"{node.op_type} node {node.name!r}: input {index} is missing")
    return value


def _constant(node: onnx.NodeProto, value: _Value | None, role: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise OnnxImportError(f"{node.op_type} node {node.name!r}: its {role} must be a constant")
    return value


def _channel_vector(value: torch.Tensor, rank: int | None, channels: int) -> torch.Tensor | None:
    """``value`` as a (channels,) vector if it broadcasts along axis 1 of a rank-``rank`` tensor."""
    if rank is None or value.dim() > rank:
        return None
    shape = [1] * (rank - value.dim()) + list(value.shape)
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return value.reshape(-1).expand(channels).float()


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().float().clone())


# --- op handlers ------------------------------------------------------------------


def _conv(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    attrs = _attributes(node)
    weight = _constant(node, inputs[1], "weight")
    bias = _constant(node, inputs[2], "bias") if len(inputs) > 2 and inputs[2] is not None else None
    if weight.dim() != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise OnnxImportError(f"Conv {node.name!r}: only 2-D convolutions with explicit pads")
    groups = int(attrs.get("group", 1))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    symmetric = pads[:2] == pads[2:]
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        (weight.shape[2], weight.shape[3]),
        stride=tuple(attrs.get("strides", [1, 1])),
        padding=(pads[0], pads[1]) if symmetric else 0,
        dilation=tuple(attrs.get("dilations", [1, 1])),
        groups=groups,
        bias=bias is not None,
    )
    conv.weight = _parameter(weight)
    if bias is not None:
        conv.bias = _parameter(bias)
    x = _input(node, inputs)
    if not symmetric:  # F.pad lists the last axis first: (left, right, top, bottom)
        x = builder.function(F.pad, x, (pads[1], pads[3], pads[0], pads[2]))
    output = builder.module("conv", conv, x)
    if bias is None and builder.consumers[node.output[0]] == 1:
        builder.bias_free[node.output[0]] = conv
    return [output]


def _linear(
    builder: _Builder,
    node: onnx.NodeProto,
    x: _Value,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> list[_Value]:
    """``x @ weight.T + bias`` with ``weight`` (out, in), as an ``nn.Linear``."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = _parameter(weight)
    if bias is not None:
        linear.bias = _parameter(bias)
    output = builder.module("linear", linear, x)
    if bias is None and builder.consumers[node.output[0]] == 1:
        builder.bias_free[node.output[0]] = linear
    return [output]


def _gemm(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    attrs = _attributes(node)
    x = _input(node, inputs)
    if attrs.get("transA", 0):
        x = builder.function(torch.t, x)
    weight = _constant(node, inputs[1], "weight") * float(attrs.get("alpha", 1.0))
    weight = weight if attrs.get("transB", 0) else weight.t()
    bias = None
    if len(inputs) > 2 and inputs[2] is not None:
        bias = _channel_vector(_constant(node, inputs[2], "bias"), 2, weight.shape[0])
        if bias is None:
            raise OnnxImportError(f"Gemm {node.name!r}: its C input is not a bias vector")
        bias = bias * float(attrs.get("beta", 1.0))
    return _linear(builder, node, x, weight, bias)


def _matmul(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    x, weight = _input(node, inputs, 0), _input(node, inputs, 1)
    if isinstance(x, fx.Node) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return _linear(builder, node, x, weight.t(), None)
    return [builder.function(torch.matmul, x, weight)]


def _batch_norm(
    builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]
) -> list[_Value]:
    attrs = _attributes(node)
    scale, shift, mean, var = (_constant(node, v, "statistics") for v in inputs[1:5])
    if len([name for name in node.output if name]) > 1 or attrs.get("training_mode", 0):
        raise OnnxImportError(f"BatchNormalization {node.name!r} is exported in training mode")
    rank = builder.ranks.get(node.input[0])
    classes: dict[int, type[nn.BatchNorm1d | nn.BatchNorm2d]] = {
        2: nn.BatchNorm1d,
        3: nn.BatchNorm1d,
        4: nn.BatchNorm2d,
    }
    if rank not in classes:
        raise OnnxImportError(f"BatchNormalization {node.name!r}: input rank {rank} unsupported")
    # ONNX keeps `momentum` of the running statistics, PyTorch the weight of the new batch.
    momentum = 1.0 - float(attrs.get("momentum", 0.9))
    norm = classes[rank](scale.numel(), eps=float(attrs.get("epsilon", 1e-5)), momentum=momentum)
    norm.weight = _parameter(scale)
    norm.bias = _parameter(shift)
    norm.running_mean = mean.detach().float().clone()
    norm.running_var = var.detach().float().clone()
    return [builder.module("batchnorm", norm, _input(node, inputs))]


def _prelu(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    x, slope = _input(node, inputs), _constant(node, inputs[1], "slope")
    channels = slope.numel()
    vector = _channel_vector(slope, builder.ranks.get(node.input[0]), channels)
    if vector is None:
        raise OnnxImportError(f"PRelu {node.name!r}: slope {tuple(slope.shape)} is not per channel")
    prelu = nn.PReLU(channels)
    prelu.weight = _parameter(vector)
    return [builder.module("prelu", prelu, x)]


def _dropout(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    if any(builder.consumers[name] for name in node.output[1:] if name):
        raise OnnxImportError(f"Dropout {node.name!r}: its mask output is used")
    ratio = _attributes(node).get("ratio", 0.5)
    if len(inputs) > 1 and inputs[1] is not None:
        ratio = float(_constant(node, inputs[1], "ratio"))
    return [builder.module("dropout", nn.Dropout(float(ratio)), _input(node, inputs))]


def _add(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    """Addition; a constant per-channel bias on a bias-free Conv/Linear becomes its bias."""
    for layer_side, bias_side in ((0, 1), (1, 0)):
        layer = builder.bias_free.get(node.input[layer_side])
        bias = inputs[bias_side]
        if layer is None or not isinstance(bias, torch.Tensor):
            continue
        rank = 4 if isinstance(layer, nn.Conv2d) else builder.ranks.get(node.input[layer_side])
        channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        vector = _channel_vector(bias, rank, channels)
        if vector is not None:
            layer.bias = _parameter(vector)
            del builder.bias_free[node.input[layer_side]]
            return [_input(node, inputs, layer_side)]
    return _binary(torch.add)(builder, node, inputs)


def _binary(function: Callable[..., torch.Tensor]) -> _Handler:
    def handle(
        builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]
    ) -> list[_Value]:
        return [builder.function(function, *inputs)]

    return handle


def _unary(function: Callable[..., torch.Tensor], **defaults: object) -> _Handler:
    """An op whose attributes (with ONNX defaults) follow its single input."""

    def handle(
        builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]
    ) -> list[_Value]:
        attrs = _attributes(node)
        return [
            builder.function(function, inputs[0], *(attrs.get(k, v) for k, v in defaults.items()))
        ]

    return handle


def _reshape(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    shape = tuple(int(size) for size in _constant(node, inputs[1], "shape").tolist())
    allowzero = int(_attributes(node).get("allowzero", 0))
    return [builder.function(onnx_reshape, inputs[0], shape, allowzero)]


def _constant_node(
    builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]
) -> list[_Value]:
    (attr,) = node.attribute
    if attr.name == "value":
        array = numpy_helper.to_array(attr.t)
    elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
        dtype = np.float32 if "float" in attr.name else np.int64
        array = np.asarray(helper.get_attribute_value(attr), dtype=dtype)
    else:
        raise OnnxImportError(f"Constant {node.name!r}: {attr.name} constants are unsupported")
    return [torch.from_numpy(array.copy())]


def _identity(builder: _Builder, node: onnx.NodeProto, inputs: list[_Value | None]) -> list[_Value]:
    return [_input(node, inputs)]


# ONNX semantics that have no single torch function; module level, so fx code can call them.
def onnx_reshape(x: torch.Tensor, shape: tuple[int, ...], allowzero: int) -> torch.Tensor:
    """ONNX Reshape: a 0 copies the input's size on that axis (unless ``allowzero``)."""
    sizes = [x.shape[i] if size == 0 and not allowzero else size for i, size in enumerate(shape)]
    return x.reshape(sizes)


def onnx_flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Flatten: always 2-D, (prod(shape[:axis]), prod(shape[axis:]))."""
    axis = axis % x.dim() if axis < 0 else axis
    if axis == 0:
        return x.reshape(1, -1)
    flat = x.flatten(axis)
    return flat.flatten(0, axis - 1) if axis > 1 else flat


def onnx_transpose(x: torch.Tensor, perm: list[int] | None) -> torch.Tensor:
    return x.permute(perm if perm is not None else list(range(x.dim()))[::-1])


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


_HANDLERS: dict[str, _Handler] = {
    "Add": _add,
    "BatchNormalization": _batch_norm,
    "Constant": _constant_node,
    "Conv": _conv,
    "Div": _binary(torch.div),
    "Dropout": _dropout,
    "Flatten": _unary(onnx_flatten, axis=1),
    "Gemm": _gemm,
    "GlobalAveragePool": _unary(global_average_pool),
    "Identity": _identity,
    "LeakyRelu": _unary(F.leaky_relu, alpha=0.01),
    "MatMul": _matmul,
    "Mul": _binary(torch.mul),
    "PRelu": _prelu,
    "Relu": _unary(torch.relu),
    "Reshape": _reshape,
    "Sigmoid": _unary(torch.sigmoid),
    "Sub": _binary(torch.sub),
    "Transpose": _unary(onnx_transpose, perm=None),
}


# --- layer groups -----------------------------------------------------------------


def layer_group_names(module: fx.GraphModule) -> tuple[tuple[str, ...], ...]:
    """Submodule names of each layer group (see ``ImportedBackbone.layer_groups``)."""
    nodes = [node for node in module.graph.nodes if node.op != "get_attr"]
    position = {node: index for index, node in enumerate(nodes)}
    # live[i]: values defined at or before node i and still used after it.
    live = [0] * len(nodes)
    for node in nodes:
        last_use = max((position[user] for user in node.users), default=position[node])
        for index in range(position[node], last_use):
            live[index] += 1
    segments: list[list[fx.Node]] = [[]]
    for index, node in enumerate(nodes):
        segments[-1].append(node)
        if live[index] == 1:
            segments.append([])

    def is_layer(node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(
            module.get_submodule(str(node.target)), _WEIGHT_LAYERS
        )

    groups: list[list[fx.Node]] = []
    pending: list[fx.Node] = []
    follows_layer = False  # the last group ends with a Conv/Linear (and its activations)
    for segment in segments:
        if any(is_layer(node) for node in segment):
            groups.append(pending + segment)
            pending = []
            follows_layer = is_layer(segment[-1])
        elif follows_layer:
            groups[-1].extend(segment)
        else:
            pending.extend(segment)
    if pending and groups:
        groups[-1].extend(pending)
    elif pending:
        groups.append(pending)
    named = (
        tuple(str(node.target) for node in group if node.op == "call_module") for group in groups
    )
    return tuple(names for names in named if names)
