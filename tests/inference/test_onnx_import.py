"""Model import: dequantising dynamically quantised graphs and freeing stale batch dims."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from app.errors import ModelError
from app.inference.align import align_face
from app.inference.arcface import ArcFaceEmbedder
from app.inference.engines.ort_session import OrtSession
from app.inference.loader import LoadedModel, build_detector, load_model
from app.inference.manifest import ModelManifest
from app.inference.onnx_import import import_model, make_batch_dims_dynamic
from app.inference.session import RuntimeOptions, create_session

INTEGER_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
OPSET = 13
IR_VERSION = 8


def float_session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the tiny model's declared batch of 1 is stale on purpose
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(model: bytes, inputs: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray(float_session(model).run(None, {"x": inputs})[0])


def tiny_model(conv_weight: NDArray[np.float32], matmul_weight: NDArray[np.float32]) -> bytes:
    """x [N,3,8,8] -> Conv(4, 3x3) + bias -> Relu -> Flatten -> MatMul -> y, declared [1,10]."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "matmul_w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(conv_weight, "conv_w"),
            numpy_helper.from_array(np.linspace(-0.1, 0.1, 4, dtype=np.float32), "conv_b"),
            numpy_helper.from_array(matmul_weight, "matmul_w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


RNG = np.random.default_rng(0)
CONV_WEIGHT = RNG.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
MATMUL_WEIGHT = RNG.normal(0, 0.1, (256, 10)).astype(np.float32)
INPUTS = RNG.normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
FLOAT_MODEL = tiny_model(CONV_WEIGHT, MATMUL_WEIGHT)


def op_types(model: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_model_from_string(model).graph.node}


def initializers(model: bytes) -> dict[str, NDArray[np.generic]]:
    graph = onnx.load_model_from_string(model).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


QUANTIZATIONS = {
    "qint8": {"weight_type": QuantType.QInt8},
    "qint8-per-channel": {"weight_type": QuantType.QInt8, "per_channel": True},
    "quint8": {"weight_type": QuantType.QUInt8},
}


@pytest.fixture(scope="module", params=list(QUANTIZATIONS))
def quantized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The tiny model through onnxruntime's quantize_dynamic, as a file would hold it."""
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "float.onnx").write_bytes(FLOAT_MODEL)
    quantize_dynamic(folder / "float.onnx", folder / "int8.onnx", **QUANTIZATIONS[request.param])
    model = (folder / "int8.onnx").read_bytes()
    assert {"ConvInteger", "MatMulInteger"} <= op_types(model)
    return model


def dequantized_by_hand(quantized: bytes) -> bytes:
    """The float model again, with every weight replaced by (q - zero_point) * scale."""
    values = initializers(quantized)
    weights = []
    for name in ("conv_w", "matmul_w"):
        q = values[f"{name}_quantized"].astype(np.float32)
        zero = values[f"{name}_zero_point"].astype(np.float32)
        scale = values[f"{name}_scale"].astype(np.float32)
        weights.append((q - zero) * scale)  # per-channel parameters of MatMul index its columns
    return tiny_model(*weights)


def test_dequantized_graph_has_only_float_ops_and_passes_the_checker(quantized: bytes) -> None:
    model = import_model(quantized, dequantize=True, fix_dynamic_shapes=False)

    assert not op_types(model) & (INTEGER_OPS | {"Cast"})
    assert {"Conv", "MatMul"} <= op_types(model)
    onnx.checker.check_model(onnx.load_model_from_string(model), full_check=True)


def test_dequantized_weights_are_exactly_those_of_the_quantized_file(quantized: bytes) -> None:
    model = import_model(quantized, dequantize=True, fix_dynamic_shapes=False)

    np.testing.assert_allclose(
        run(model, INPUTS), run(dequantized_by_hand(quantized), INPUTS), rtol=1e-5, atol=1e-5
    )


def test_dequantized_outputs_are_as_close_to_the_float_model_as_the_quantized_file(
    quantized: bytes,
) -> None:
    reference = run(FLOAT_MODEL, INPUTS)
    quantization_error = np.abs(run(quantized, INPUTS) - reference).max()

    model = import_model(quantized, dequantize=True, fix_dynamic_shapes=True)
    error = np.abs(run(model, INPUTS) - reference).max()

    # Only the weights carry quantisation error now (activations stay float): a few
    # percent of the output range at 8 bits, and no worse than the INT8 file itself.
    assert error <= 0.05 * np.abs(reference).max()
    assert error <= 1.5 * quantization_error


def test_per_channel_conv_weights_are_dequantized_per_output_channel() -> None:
    """A hand-built ConvInteger with per-channel weights (quantize_dynamic makes per-tensor)."""
    quantized_weight = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    zero_points = np.array([0, 1, -2, 3], dtype=np.int8)
    scales = np.array([0.01, 0.02, 0.005, 0.04], dtype=np.float32)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zero"]),
        helper.make_node(
            "ConvInteger", ["x_q", "w_q", "x_zero", "w_zero"], ["acc"], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Cast", ["acc"], ["acc_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_scale", "w_scale"], ["scale"]),
        helper.make_node("Mul", ["acc_float", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "per_channel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [
            numpy_helper.from_array(quantized_weight, "w_q"),
            numpy_helper.from_array(zero_points, "w_zero"),
            numpy_helper.from_array(scales, "w_scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION

    dequantized = import_model(model.SerializeToString(), dequantize=True, fix_dynamic_shapes=False)

    (weight,) = initializers(dequantized).values()
    expected = (quantized_weight.astype(np.float32) - zero_points[:, None, None, None]) * scales[
        :, None, None, None
    ]
    np.testing.assert_allclose(weight, expected, rtol=1e-6)
    assert [node.op_type for node in onnx.load_model_from_string(dequantized).graph.node] == [
        "Conv"
    ]


def test_dequantizing_a_model_without_integer_ops_is_an_error() -> None:
    with pytest.raises(ModelError, match="no ConvInteger/MatMulInteger"):
        import_model(FLOAT_MODEL, dequantize=True, fix_dynamic_shapes=True)


def test_import_without_steps_returns_the_bytes_untouched() -> None:
    assert import_model(FLOAT_MODEL, dequantize=False, fix_dynamic_shapes=False) is FLOAT_MODEL


def test_make_batch_dims_dynamic_makes_the_leading_output_dim_symbolic() -> None:
    model = make_batch_dims_dynamic(onnx.load_model_from_string(FLOAT_MODEL))

    (output,) = model.graph.output
    batch, features = output.type.tensor_type.shape.dim
    assert not batch.HasField("dim_value")
    assert batch.dim_param
    assert features.dim_value == 10


def test_fixing_shapes_keeps_the_graph_and_runs_any_batch() -> None:
    fixed = import_model(FLOAT_MODEL, dequantize=False, fix_dynamic_shapes=True)

    assert op_types(fixed) == op_types(FLOAT_MODEL)
    np.testing.assert_array_equal(run(fixed, INPUTS), run(FLOAT_MODEL, INPUTS))
    assert float_session(fixed).get_outputs()[0].shape[0] == "y_rows"


def test_fixing_shapes_frees_the_batch_even_when_intermediate_shapes_are_stale() -> None:
    # Exporters and quantize_dynamic also record traced shapes of inner tensors in
    # graph.value_info; onnxruntime's shape inference carries their batch of 1 on to
    # the output, and then warns on every run with another batch.
    model = onnx.load_model_from_string(FLOAT_MODEL)
    model.graph.value_info.append(
        helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 256])
    )

    fixed = import_model(model.SerializeToString(), dequantize=False, fix_dynamic_shapes=True)

    assert float_session(fixed).get_outputs()[0].shape[0] == "y_rows"


# --- the shared INT8 recognizer ---------------------------------------------------

PHOTO_SUFFIXES = {".jpg", ".png"}


def run_as_is(manifest: ModelManifest) -> ModelManifest:
    """The manifest with the file run in INT8, one face per run (see RecognizerInput)."""
    return manifest.model_copy(
        update={
            "import_steps": manifest.import_steps.model_copy(update={"dequantize": False}),
            "input": manifest.input.model_copy(update={"max_batch": 1}),
        }
    )


def load(name: str, kind: str, models_dir: Path) -> LoadedModel:
    return load_model(name, kind, models_dir=models_dir, catalog_dir=None, options=RuntimeOptions())


@pytest.fixture(scope="module")
def recognizer(models_dir: Path) -> LoadedModel:
    return load("w600k_mbf_int8", "recognizer", models_dir)


@pytest.fixture(scope="module")
def aligned_faces(models_dir: Path, photos: Path) -> NDArray[np.uint8]:
    """Every face of the shared photos, found by the real detector and aligned."""
    detector = build_detector(load("scrfd_500m", "detector", models_dir))
    faces = []
    for path in sorted(p for p in photos.iterdir() if p.suffix in PHOTO_SUFFIXES):
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces += [align_face(image, d.landmarks) for d in detector.detect(image)]
    assert len(faces) == 22
    return np.stack(faces)


def test_the_real_int8_recognizer_dequantizes_to_a_float_graph(
    recognizer: LoadedModel,
) -> None:
    model = import_model(recognizer.path.read_bytes(), dequantize=True, fix_dynamic_shapes=True)

    assert "ConvInteger" in op_types(recognizer.path.read_bytes())
    assert not op_types(model) & INTEGER_OPS


def test_the_imported_recognizer_declares_a_free_batch_to_onnxruntime(
    recognizer: LoadedModel,
) -> None:
    # The file declares an output batch of 1 (shared/README.md); the import step is
    # there so that batches of other sizes run without onnxruntime's VerifyOutputSizes
    # warning. The file's value_info holds batch-1 shapes of inner tensors too.
    assert isinstance(recognizer.session, OrtSession)  # RuntimeOptions() = onnxruntime
    assert recognizer.session.session.get_outputs()[0].shape[0] != 1


def test_dequantized_recognizer_embeddings_agree_with_the_int8_file(
    recognizer: LoadedModel, aligned_faces: NDArray[np.uint8]
) -> None:
    as_is = run_as_is(recognizer.manifest)
    int8 = ArcFaceEmbedder(create_session(as_is, recognizer.path, RuntimeOptions()), as_is)
    dequantized = ArcFaceEmbedder(recognizer.session, recognizer.manifest)

    cosines = np.sum(int8.embed(aligned_faces) * dequantized.embed(aligned_faces), axis=1)

    print(f"\ndequantized vs INT8 on {len(cosines)} real faces: min cosine {cosines.min():.4f}")
    assert cosines.min() >= 0.98
