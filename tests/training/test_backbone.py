"""load_backbone: ONNX recognizers rebuilt as trainable PyTorch modules, checked on real faces."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.dependencies import require

torch = require("torch", "the [train] extra")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from app.inference.onnx_import import import_model  # noqa: E402
from tests.training.faces import aligned_faces, service_detector  # noqa: E402
from training.backbone import (  # noqa: E402
    ImportedBackbone,
    OnnxImportError,
    convert_graph,
    load_backbone,
)
from training.tensors import faces_to_tensor as normalize_faces  # noqa: E402

INT8_MODEL = "w600k_mbf_int8.onnx"
# A few LFW photos besides the 7 shared photos: one face each, the largest.
LFW_PHOTOS = (
    "George_W_Bush_0007",
    "Colin_Powell_0040",
    "Serena_Williams_0001",
    "Jennifer_Lopez_0001",
)


def detect_and_align(models_dir: Path, data_root: Path) -> NDArray[np.uint8]:
    """Every face of the shared photos and the largest of a few LFW photos, aligned by the
    service's own detector (scrfd_500m) and ArcFace alignment: (N, 112, 112, 3) RGB."""
    detector = service_detector(models_dir)
    photos = sorted((data_root / "photos").iterdir())
    lfw = [data_root / "lfw" / "images" / n.rsplit("_", 1)[0] / f"{n}.jpg" for n in LFW_PHOTOS]
    faces = []
    for path in photos + lfw:
        faces += aligned_faces(detector, path, 1 if path in lfw else None)
    return np.stack(faces)


def onnx_session(model: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def torch_embeddings(backbone: ImportedBackbone, faces: NDArray[np.uint8]) -> NDArray[np.float32]:
    backbone.module.eval()
    with torch.no_grad():
        return backbone.module(normalize_faces(faces)).numpy()


def cosines(first: NDArray[np.float32], second: NDArray[np.float32]) -> NDArray[np.float32]:
    first = first / np.linalg.norm(first, axis=1, keepdims=True)
    second = second / np.linalg.norm(second, axis=1, keepdims=True)
    return (first * second).sum(axis=1)


@pytest.fixture(scope="module")
def faces(models_dir: Path, data_root: Path) -> NDArray[np.uint8]:
    aligned = detect_and_align(models_dir, data_root)
    assert len(aligned) >= 20
    return aligned


@pytest.fixture(scope="module")
def int8_backbone(models_dir: Path) -> ImportedBackbone:
    return load_backbone(models_dir / INT8_MODEL)


@pytest.fixture(scope="module")
def int8_embeddings(int8_backbone: ImportedBackbone, faces: NDArray[np.uint8]) -> NDArray:
    return torch_embeddings(int8_backbone, faces)


# --- the shared INT8 MobileFaceNet ------------------------------------------------


def test_int8_import_describes_its_source(
    int8_backbone: ImportedBackbone, models_dir: Path
) -> None:
    assert int8_backbone.embedding_dim == 512
    assert int8_backbone.dequantized
    assert int8_backbone.source_name == INT8_MODEL
    assert int8_backbone.source_sha256 == (
        "7caa7fb0ad6c37b33e6c59f6411084b487aaabd596bba645d2cce391a5871120"
    )
    assert not int8_backbone.module.training  # imported in eval mode
    convs = [m for m in int8_backbone.module.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 49
    assert all(conv.bias is not None for conv in convs)  # the split-off biases folded back
    assert not [name for name, _ in int8_backbone.module.named_buffers() if "constant" in name]


def test_int8_import_agrees_with_the_int8_file_run_one_face_at_a_time(
    models_dir: Path, faces: NDArray[np.uint8], int8_embeddings: NDArray
) -> None:
    # As the service runs it with max_batch 1: a dynamically quantised graph computes
    # activation scales over the whole batch, so each face must run alone.
    session = onnx_session(
        import_model(
            (models_dir / INT8_MODEL).read_bytes(), dequantize=False, fix_dynamic_shapes=True
        )
    )
    pixels = normalize_faces(faces).numpy()
    reference = np.concatenate(
        [session.run(None, {"input.1": pixels[i : i + 1]})[0] for i in range(len(pixels))]
    )

    similarity = cosines(int8_embeddings, reference)

    print(
        f"imported vs INT8 onnxruntime on {len(faces)} real faces: "
        f"min cosine {similarity.min():.5f}, mean {similarity.mean():.5f}"
    )
    assert similarity.min() >= 0.98


@pytest.fixture(scope="module")
def float_file(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The INT8 network with its weights dequantised, saved as an FP32 ONNX file."""
    path = tmp_path_factory.mktemp("fp32") / "w600k_mbf_fp32.onnx"
    raw = (models_dir / INT8_MODEL).read_bytes()
    path.write_bytes(import_model(raw, dequantize=True, fix_dynamic_shapes=True))
    return path


def test_int8_import_matches_the_dequantized_float_graph(
    float_file: Path, faces: NDArray[np.uint8], int8_embeddings: NDArray
) -> None:
    reference = onnx_session(str(float_file)).run(
        None, {"input.1": normalize_faces(faces).numpy()}
    )[0]

    similarity = cosines(int8_embeddings, reference)

    print(f"imported vs dequantized FP32 onnxruntime: min cosine {similarity.min():.7f}")
    assert similarity.min() >= 0.9999


def test_a_float_file_imports_as_is(
    float_file: Path, faces: NDArray[np.uint8], int8_embeddings: NDArray
) -> None:
    backbone = load_backbone(float_file)

    assert not backbone.dequantized
    assert backbone.embedding_dim == 512
    assert cosines(torch_embeddings(backbone, faces[:4]), int8_embeddings[:4]).min() > 0.99999


def test_layer_groups_hold_every_parameter_once_in_graph_order(
    int8_backbone: ImportedBackbone,
) -> None:
    groups = int8_backbone.layer_groups()
    grouped = [id(p) for group in groups for p in group.parameters()]

    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in int8_backbone.module.parameters()}
    names = [name for group in groups for name in group]
    submodules = [name for name, _ in int8_backbone.module.named_children()]
    assert names == submodules  # created in graph order, so input to output
    first, last = dict(groups[0].named_children()), dict(groups[-1].named_children())
    assert isinstance(first["conv_0"], nn.Conv2d)
    assert [type(m) for m in last.values()] == [nn.Linear, nn.BatchNorm1d]  # fc + features


# --- a synthetic IResNet: pre-activation BatchNorm, residual blocks, Gemm, BatchNorm1d --


class Block(nn.Module):
    """IResNet's IBasicBlock: BN -> conv -> BN -> PReLU -> conv -> BN, plus shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(inputs),
            nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.PReLU(outputs),
            nn.Conv2d(outputs, outputs, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
        )
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )
            if stride != 1 or inputs != outputs
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


def tiny_iresnet() -> nn.Module:
    network = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.PReLU(8),
        Block(8, 16, 2),
        Block(16, 16, 2),
        Block(16, 16, 1),
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Dropout(0.0),
        nn.Linear(16 * 14 * 14, 32),
        nn.BatchNorm1d(32),
    )
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):  # trained-looking statistics
            size = module.num_features
            module.weight.data = 1 + 0.2 * torch.randn(size, generator=generator)
            module.bias.data = 0.1 * torch.randn(size, generator=generator)
            module.running_mean = 0.1 * torch.randn(size, generator=generator)
            module.running_var = 0.5 + torch.rand(size, generator=generator)
    return network.eval()


@pytest.fixture(scope="module")
def iresnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("iresnet") / "tiny_iresnet.onnx"
    # The TorchScript exporter, as InsightFace's files were made; initializers listed
    # as graph inputs too, as older exports do.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            tiny_iresnet(),
            (torch.zeros(1, 3, 112, 112),),
            str(path),
            input_names=["input.1"],
            dynamic_axes={"input.1": {0: "N"}},
            opset_version=11,
            keep_initializers_as_inputs=True,
            dynamo=False,
        )
    return path


@pytest.fixture(scope="module")
def iresnet(iresnet_file: Path) -> ImportedBackbone:
    return load_backbone(iresnet_file)


def test_a_float_iresnet_imports_with_matching_embeddings(
    iresnet: ImportedBackbone, iresnet_file: Path, faces: NDArray[np.uint8]
) -> None:
    reference = onnx_session(str(iresnet_file)).run(
        None, {"input.1": normalize_faces(faces).numpy()}
    )[0]

    similarity = cosines(torch_embeddings(iresnet, faces), reference)

    assert iresnet.embedding_dim == 32
    assert not iresnet.dequantized
    assert similarity.min() >= 0.9999


def test_unfolded_batchnorms_become_trainable_batchnorm_modules(iresnet: ImportedBackbone) -> None:
    norms = [m for m in iresnet.module.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]

    # Three pre-activation BNs, the final BN2d and the features BN1d; the others fold into convs.
    assert [type(m) for m in norms] == [nn.BatchNorm2d] * 4 + [nn.BatchNorm1d]
    assert all(m.momentum == pytest.approx(0.1) and m.weight.requires_grad for m in norms)


def test_batchnorm_uses_running_statistics_in_eval_and_batch_statistics_in_train(
    iresnet: ImportedBackbone, faces: NDArray[np.uint8]
) -> None:
    module = copy.deepcopy(iresnet.module)
    inputs = normalize_faces(faces[:8])
    features = next(m for m in module.modules() if isinstance(m, nn.BatchNorm1d))
    running_mean = features.running_mean.clone()
    with torch.no_grad():
        alone = module.eval()(inputs[:1])
        in_batch = module(inputs)
        trained = module.train()(inputs)

    assert torch.allclose(alone[0], in_batch[0], atol=1e-5)  # eval: a face is its own
    assert torch.allclose(trained.mean(dim=0), features.bias, atol=1e-4)  # train: this batch's
    assert not torch.allclose(features.running_mean, running_mean)  # ...and stats updated


def test_iresnet_groups_are_stem_residual_blocks_and_head(iresnet: ImportedBackbone) -> None:
    kinds = [[type(m).__name__ for m in group.children()] for group in iresnet.layer_groups()]

    assert kinds[0] == ["Conv2d", "PReLU"]  # stem (its BN folded into the conv)
    assert kinds[1] == ["BatchNorm2d", "Conv2d", "PReLU", "Conv2d", "Conv2d"]  # block + shortcut
    assert kinds[3] == ["BatchNorm2d", "Conv2d", "PReLU", "Conv2d"]  # identity shortcut
    assert kinds[4] == ["BatchNorm2d", "Linear", "BatchNorm1d"]  # head
    assert len(kinds) == 5


# --- op semantics, case by case, against onnxruntime ------------------------------


def const(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def weights(name: str, *shape: int) -> onnx.TensorProto:
    return const(name, np.random.default_rng(len(name)).normal(0, 0.3, shape))


node = helper.make_node
OP_CASES = {
    "arithmetic with constants": (
        [
            node("Sub", ["x", "mean"], ["a"]),
            node("Mul", ["a", "scale"], ["b"]),
            node("Div", ["b", "two"], ["y"]),
        ],
        [const("mean", [[[[0.1]], [[0.2]], [[0.3]]]]), const("scale", [1.5]), const("two", 2.0)],
    ),
    "activations": (
        [
            node("LeakyRelu", ["x"], ["a"], alpha=0.2),
            node("Sigmoid", ["a"], ["b"]),
            node("Sub", ["b", "half"], ["c"]),
            node("Relu", ["c"], ["y"]),
        ],
        [const("half", 0.5)],
    ),
    "transpose then reshape keeping the batch": (
        [
            node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]),
            node("Reshape", ["a", "shape"], ["y"]),
        ],
        [numpy_helper.from_array(np.array([0, -1], np.int64), "shape")],
    ),
    "global average pool and flatten": (
        [node("GlobalAveragePool", ["x"], ["a"]), node("Flatten", ["a"], ["y"])],
        [],
    ),
    "flatten at axis 2": ([node("Flatten", ["x"], ["y"], axis=2)], []),
    "strided conv with asymmetric pads": (
        [node("Conv", ["x", "w"], ["y"], pads=[0, 0, 1, 1], strides=[2, 2])],
        [weights("w", 4, 3, 3, 3)],
    ),
    "dilated depthwise conv with bias": (
        [node("Conv", ["x", "w", "b"], ["y"], group=3, pads=[1, 1, 1, 1], dilations=[2, 2])],
        [weights("w", 3, 1, 3, 3), weights("b", 3)],
    ),
    "gemm with alpha, beta and an untransposed weight": (
        [
            node("Flatten", ["x"], ["a"]),
            node("Gemm", ["a", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=0),
        ],
        [weights("w", 192, 5), weights("c", 1, 5)],
    ),
    "gemm with a transposed input": (
        [
            node("Flatten", ["x"], ["a"]),
            node("Transpose", ["a"], ["t"]),
            node("Gemm", ["t", "w"], ["y"], transA=1, transB=1),
        ],
        [weights("w", 5, 192)],
    ),
    "matmul of two graph values": (
        [
            node("Flatten", ["x"], ["a"]),
            node("Transpose", ["a"], ["t"]),
            node("MatMul", ["a", "t"], ["y"]),
        ],
        [],
    ),
    "constant, identity, dropout and a scalar prelu": (
        [
            node("Constant", [], ["c"], value=const("v", [[[[1.0]], [[-2.0]], [[0.5]]]])),
            node("Add", ["x", "c"], ["a"]),
            node("Identity", ["a"], ["b"]),
            node("Dropout", ["b", "ratio"], ["d"]),
            node("PRelu", ["d", "slope"], ["y"]),
        ],
        [const("ratio", 0.3), const("slope", [0.25])],
    ),
}


@pytest.mark.parametrize("case", OP_CASES)
def test_each_supported_op_computes_what_onnxruntime_computes(case: str) -> None:
    nodes, initializers = OP_CASES[case]
    graph = helper.make_graph(
        nodes,
        case,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)

    expected = onnx_session(model.SerializeToString()).run(None, {"x": x})[0]
    with torch.no_grad():
        actual = convert_graph(model).eval()(torch.from_numpy(x)).numpy()

    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# --- refusals ---------------------------------------------------------------------


def test_a_graph_with_an_unsupported_op_is_refused_naming_it(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "weight"], ["features"]),
            helper.make_node("Erf", ["features"], ["embedding"]),
        ],
        "unsupported",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)],
        [weight],
    )
    path = tmp_path / "unsupported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))

    with pytest.raises(OnnxImportError, match=r"unsupported\.onnx: unsupported ONNX ops \['Erf'\]"):
        load_backbone(path)


def test_a_training_step_changes_only_the_unfrozen_last_groups(
    iresnet: ImportedBackbone, faces: NDArray[np.uint8]
) -> None:
    module = copy.deepcopy(iresnet.module).train()
    groups = dataclasses.replace(iresnet, module=module).layer_groups()
    frozen, trainable = groups[:-2], groups[-2:]
    for group in frozen:
        group.requires_grad_(False).eval()  # BN statistics frozen too
    before = copy.deepcopy(module.state_dict())

    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    module(normalize_faces(faces[:8])).pow(2).mean().backward()
    optimizer.step()

    after = module.state_dict()
    for group in frozen:
        for name in group.state_dict():
            assert torch.equal(before[name], after[name]), name
    changed = [n for group in trainable for n in group.state_dict() if n.endswith("weight")]
    assert changed
    assert all(not torch.equal(before[n], after[n]) for n in changed)
