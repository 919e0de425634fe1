"""Dequantisation checked independently of our import code.

``import_model(dequantize=True)`` rewrites the INT8 recognizer (onnxruntime
``quantize_dynamic``: ``DynamicQuantizeLinear -> ConvInteger/MatMulInteger -> Cast ->
Mul(activation scale x weight scale)``) into float ``Conv``/``MatMul`` nodes. Here the
expected weights are computed with numpy straight from the INT8 file's initializers, found
by quantize_dynamic's naming (``W_quantized``, ``W_zero_point``, ``W_scale``), and the
rewritten model's outputs are compared with the INT8 file's own outputs through a plain
onnxruntime session on the unmodified file. tests/inference/test_reference_parity.py
compares the pipeline around the network with insightface; it feeds insightface our
import, so it cannot catch a dequantisation bug: these tests can.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import numpy_helper

from app.inference.align import align_face
from app.inference.loader import build_detector, load_model
from app.inference.onnx_import import import_model
from app.inference.session import RuntimeOptions

INT8_FILE = "w600k_mbf_int8.onnx"
INTEGER_TO_FLOAT = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}
# The quantisation machinery the rewrite removes; every other node must survive as is.
QUANTIZATION_OPS = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "Cast"}
# LFW photos besides the shared photos: the first photo of every 3rd person, 20 in all.
LFW_FACES = 20
# Outputs: the rewrite keeps activations in float where the INT8 graph rounds every layer's
# input to 8 bits (per tensor, scale from its range), so the two models agree only up to
# that rounding noise. Measured on these 42 faces: cosine min 0.983, mean 0.995 (the INT8
# file's own answer to a crop changing by one grey level here and there is ~0.997,
# test_reference_parity.py). A real dequantisation bug is far outside it: dropping the zero
# point of a single layer gives cosines from -0.12 to 0.32. Subtle weight errors (a scale
# 2% off moves the cosine by < 0.001) are what the element-wise weight test is for.
MIN_COSINE = 0.98
MIN_MEAN_COSINE = 0.99
# And the noise is small against what recognition depends on: each face's INT8 embedding
# is nearer its own dequantized embedding than any other face's by at least this much
# (measured: the most similar other faces here are at 0.76).
MIN_IDENTITY_MARGIN = 0.15


@pytest.fixture(scope="module")
def int8_bytes(models_dir: Path) -> bytes:
    return (models_dir / INT8_FILE).read_bytes()


@pytest.fixture(scope="module")
def int8_graph(int8_bytes: bytes) -> onnx.GraphProto:
    return onnx.load_model_from_string(int8_bytes).graph


@pytest.fixture(scope="module")
def imported_graph(int8_bytes: bytes) -> onnx.GraphProto:
    imported = import_model(int8_bytes, dequantize=True, fix_dynamic_shapes=True)
    return onnx.load_model_from_string(imported).graph


def arrays(graph: onnx.GraphProto) -> dict[str, NDArray[np.generic]]:
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def expected_weight(int8: dict[str, NDArray[np.generic]], quantized_name: str) -> NDArray:
    """(q - zero_point) * scale, with quantize_dynamic's initializer names."""
    base = quantized_name.removesuffix("_quantized")
    q = int8[f"{base}_quantized"].astype(np.float32)
    zero_point = int8[f"{base}_zero_point"].astype(np.float32)
    scale = int8[f"{base}_scale"].astype(np.float32)
    assert zero_point.size == 1, "this file quantises per tensor"
    assert scale.size == 1
    return (q - zero_point) * scale


def test_every_integer_layer_became_a_float_layer_with_the_dequantized_weight(
    int8_graph: onnx.GraphProto, imported_graph: onnx.GraphProto
) -> None:
    integer_nodes = [n for n in int8_graph.node if n.op_type in INTEGER_TO_FLOAT]
    float_nodes = [n for n in imported_graph.node if n.op_type in {"Conv", "MatMul"}]
    int8, imported = arrays(int8_graph), arrays(imported_graph)
    producers = {output: node for node in int8_graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in int8_graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    assert len(integer_nodes) == len(float_nodes) == 50  # 49 ConvInteger + 1 MatMulInteger
    for integer, rewritten in zip(integer_nodes, float_nodes, strict=True):
        assert rewritten.op_type == INTEGER_TO_FLOAT[integer.op_type]
        assert attributes(rewritten) == attributes(integer)  # strides, pads, group, ...
        # Wired where the integer node was: its float input is what DynamicQuantizeLinear
        # quantised, and its output is what the rescaling Mul produced.
        quantize = producers[integer.input[0]]
        assert quantize.op_type == "DynamicQuantizeLinear"
        assert rewritten.input[0] == quantize.input[0]
        (cast,) = consumers[integer.output[0]]
        (rescale,) = consumers[cast.output[0]]
        assert rewritten.output[0] == rescale.output[0]
        # The weight scale the INT8 graph multiplies by is the one the names point to.
        scale_product = producers[next(n for n in rescale.input if n != cast.output[0])]
        base = integer.input[1].removesuffix("_quantized")
        assert sorted(scale_product.input) == sorted([quantize.output[1], f"{base}_scale"])
        # Element-wise: the float weight is (q - zero_point) * scale, computed here.
        weight = imported[rewritten.input[1]]
        assert weight.dtype == np.float32
        np.testing.assert_array_equal(weight, expected_weight(int8, integer.input[1]))


def test_the_rest_of_the_graph_is_untouched(
    int8_graph: onnx.GraphProto, imported_graph: onnx.GraphProto
) -> None:
    def kept_ops(graph: onnx.GraphProto) -> Counter[str]:
        # Of the INT8 graph's Muls, one per integer layer multiplies the two scales and one
        # rescales its output: 2 x 50 of 100, so none is left in the rewrite.
        return Counter(n.op_type for n in graph.node if n.op_type not in QUANTIZATION_OPS)

    int8_ops, imported_ops = kept_ops(int8_graph), kept_ops(imported_graph)
    assert int8_ops.pop("Mul") == 100
    assert "Mul" not in imported_ops
    assert imported_ops - Counter({"Conv": 49, "MatMul": 1}) == int8_ops
    assert [i.name for i in imported_graph.input] == [i.name for i in int8_graph.input]
    assert [o.name for o in imported_graph.output] == [o.name for o in int8_graph.output]
    # Biases, PReLU slopes, batch-norm parameters, reshape targets: the same values.
    int8, imported = arrays(int8_graph), arrays(imported_graph)
    quantization = {name for name in int8 if name.endswith(("_quantized", "_zero_point", "_scale"))}
    for name in sorted(set(int8) - quantization):
        if name in imported:
            np.testing.assert_array_equal(imported[name], int8[name], err_msg=name)
    float_parameters = {n.input[1] for n in imported_graph.node if n.op_type in {"Conv", "MatMul"}}
    assert set(imported) - float_parameters <= set(int8) - quantization


@pytest.fixture(scope="module")
def faces(models_dir: Path, data_root: Path) -> NDArray[np.uint8]:
    """Every face of the shared photos and the largest of 20 LFW photos (RGB crops)."""
    detector = build_detector(
        load_model(
            "scrfd_500m",
            "detector",
            models_dir=models_dir,
            catalog_dir=None,
            options=RuntimeOptions(),
        )
    )
    lfw = sorted((data_root / "lfw" / "images").glob("*/*_0001.jpg"))[: 3 * LFW_FACES : 3]
    crops = []
    for path in [*sorted((data_root / "photos").iterdir()), *lfw]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        detections = detector.detect(rgb)
        crops += [align_face(rgb, d.landmarks) for d in detections[: 1 if path in lfw else None]]
    return np.stack(crops)


def embed_one_by_one(model: bytes, faces: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Unit-norm outputs of a plain onnxruntime session, one face per run: the INT8
    graph computes its activation scales over the whole batch. Preprocessing as the
    file's documentation says (shared/README.md): RGB, (x - 127.5) / 127.5, NCHW."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the file's declared output batch of 1 is stale
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    tensors = ((faces.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    outputs = np.concatenate([session.run(None, {"input.1": t[None]})[0] for t in tensors])
    return outputs / np.linalg.norm(outputs, axis=1, keepdims=True)


def test_dequantized_outputs_match_the_int8_file_run_as_is(
    int8_bytes: bytes, faces: NDArray[np.uint8]
) -> None:
    int8 = embed_one_by_one(int8_bytes, faces)
    dequantized = embed_one_by_one(
        import_model(int8_bytes, dequantize=True, fix_dynamic_shapes=True), faces
    )
    cosines = np.sum(int8 * dequantized, axis=1)
    print(
        f"\nINT8 as is vs dequantized, {len(faces)} faces: cosine min {cosines.min():.5f}, "
        f"mean {cosines.mean():.5f}"
    )

    assert len(faces) == 22 + LFW_FACES
    assert cosines.min() >= MIN_COSINE
    assert cosines.mean() >= MIN_MEAN_COSINE
    cross = int8 @ dequantized.T
    np.fill_diagonal(cross, -np.inf)
    assert np.all(cosines - cross.max(axis=1) >= MIN_IDENTITY_MARGIN)
