"""Model import: graph rewrites applied in memory when a model file is loaded.

* ``dequantize_weights``: an onnxruntime ``quantize_dynamic`` model computes
  ``DynamicQuantizeLinear(x) -> ConvInteger/MatMulInteger -> Cast -> Mul(scale)``.
  We fold that back to a float ``Conv``/``MatMul`` whose weight is
  ``(q - zero_point) * scale``. Activations stay in float, so the result runs on
  any execution provider (CUDA has no ConvInteger kernel) and is about twice as
  fast on CPU. The weights are exactly those of the quantised file.
* ``make_batch_dims_dynamic``: exported files often declare output shapes of the
  size they were traced with (640x640 detector, batch 1 recognizer).
  onnxruntime then logs a ``VerifyOutputSizes`` warning on every run with
  another size. We replace the leading output dimension by a symbolic one.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper

from app.errors import ModelError

_INTEGER_OPS = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}


class _Graph:
    """Index of a graph's producers, consumers and initializers."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)

    def constant(self, name: str) -> NDArray[np.generic]:
        if name not in self.initializers:
            raise ModelError(f"expected {name!r} to be a constant initializer")
        return numpy_helper.to_array(self.initializers[name])

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type:
            found = [user.op_type for user in users]
            raise ModelError(f"{name!r} should feed exactly one {op_type}, feeds {found}")
        return users[0]


def _weight_scale(scale_mul: onnx.NodeProto, activation_scale: str) -> str:
    """The scale-product Mul multiplies the activation scale by the weight scale."""
    others = [name for name in scale_mul.input if name != activation_scale]
    if len(others) != 1:
        raise ModelError(f"unexpected scale multiplication {scale_mul.name!r}")
    return str(others[0])


def _dequantized_weight(
    quantized: NDArray[np.generic],
    zero_point: NDArray[np.generic],
    scale: NDArray[np.generic],
    op_type: str,
) -> NDArray[np.float32]:
    weight = quantized.astype(np.float32)
    zero = zero_point.astype(np.float32)
    factor = scale.astype(np.float32)
    if op_type == "ConvInteger":  # per-channel parameters index axis 0 (O of OIHW)
        per_channel = (-1,) + (1,) * (weight.ndim - 1)
        zero = zero.reshape(per_channel) if zero.size > 1 else zero
        factor = factor.reshape(per_channel) if factor.size > 1 else factor
    return ((weight - zero) * factor).astype(np.float32)


def dequantize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a float copy of a dynamically quantised model (see module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    index = _Graph(model.graph)
    removed: set[int] = set()
    replacements: dict[int, onnx.NodeProto] = {}
    new_initializers: list[onnx.TensorProto] = []

    integer_nodes = [node for node in model.graph.node if node.op_type in _INTEGER_OPS]
    if not integer_nodes:
        raise ModelError("dequantize requested, but the model has no ConvInteger/MatMulInteger")
    for node in integer_nodes:
        x_quantized, w_name, _, w_zero = node.input[:4]
        quantize = index.producer[x_quantized]
        if quantize.op_type != "DynamicQuantizeLinear":
            raise ModelError(f"{node.name!r}: input is not produced by DynamicQuantizeLinear")
        x_float, x_scale = quantize.input[0], quantize.output[1]
        cast = index.only_consumer(node.output[0], "Cast")
        rescale = index.only_consumer(cast.output[0], "Mul")
        scale_product_name = next(name for name in rescale.input if name != cast.output[0])
        scale_mul = index.producer[scale_product_name]
        w_scale = _weight_scale(scale_mul, x_scale)
        weight = _dequantized_weight(
            index.constant(w_name), index.constant(w_zero), index.constant(w_scale), node.op_type
        )
        weight_name = f"{w_name}_dequantized"
        new_initializers.append(numpy_helper.from_array(weight, weight_name))
        float_node = helper.make_node(
            _INTEGER_OPS[node.op_type],
            [x_float, weight_name],
            [rescale.output[0]],
            name=f"{node.name or w_name}_float",
        )
        float_node.attribute.extend(node.attribute)
        replacements[id(node)] = float_node
        removed.update({id(cast), id(rescale), id(scale_mul)})

    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if id(node) in replacements:
            kept.append(replacements[id(node)])
        elif id(node) not in removed:
            kept.append(node)
    # DynamicQuantizeLinear nodes are now unused: drop them with other dead nodes.
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new_initializers)
    _remove_dead_nodes(model.graph)
    onnx.checker.check_model(model)
    return model


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    needed = {output.name for output in graph.output}
    alive: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            alive.append(node)
            needed.update(node.input)
    alive.reverse()
    del graph.node[:]
    graph.node.extend(alive)
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


def make_batch_dims_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make the leading dimension of every graph output symbolic (in place).

    Intermediate shapes recorded at export (``value_info``) are dropped too:
    onnxruntime would otherwise carry their traced batch size into the outputs.
    """
    del model.graph.value_info[:]
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = f"{output.name}_rows"
    return model


def import_model(raw: bytes, *, dequantize: bool, fix_dynamic_shapes: bool) -> bytes:
    """Apply the manifest's import steps to a serialised model; returns serialised bytes."""
    if not dequantize and not fix_dynamic_shapes:
        return raw
    model = onnx.load_model_from_string(raw)
    if dequantize:
        model = dequantize_weights(model)
    if fix_dynamic_shapes:
        model = make_batch_dims_dynamic(model)
    serialized: bytes = model.SerializeToString()
    return serialized
