"""INT8 weights with FP32 arithmetic: rounding, the rewritten graphs, and what ONNX Runtime runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from prescreen.errors import ExportError
from prescreen.models.onnx_model import int8_weights_only, make_session, session_options
from prescreen.training.export import export_onnx
from prescreen.training.quantize import describe, dynamic_to_weight_only, quantize_per_channel, quantize_weights


class Small(nn.Module):
    """1-D convolutions (with a grouped one, and a shared input) and a linear head, like the ECG net."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 64, 7, stride=2, padding=3)
        self.b = nn.Conv1d(64, 64, 5, padding=2, groups=4)
        self.c = nn.Conv1d(64, 64, 3, padding=1)
        self.head = nn.Linear(128, 3)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(signal))
        y = torch.relu(self.b(h)) + torch.relu(self.c(h))
        pooled = torch.cat([y.mean(dim=2), y.amax(dim=2)], dim=1)
        return torch.softmax(self.head(pooled), dim=1)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q") / "fp32.onnx"
    export_onnx(Small(), torch.zeros(2, 1, 256), path)
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(make_session(path, 1).run(["probabilities"], {"signal": x})[0])


def ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (4, 3, 5), elements=st.floats(-8, 8, width=32)), st.integers(0, 2))
def test_per_channel_rounding_is_within_half_a_step(w: np.ndarray, axis: int) -> None:
    q, scale = quantize_per_channel(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    assert q.dtype == np.int8 and q.shape == w.shape and np.abs(q.astype(int)).max() <= 127
    assert scale.shape == (w.shape[axis],) and (scale > 0).all()
    assert np.all(np.abs(q * scale.reshape(shape) - w) <= scale.reshape(shape) / 2 + 1e-6)


def test_an_all_zero_channel_stays_zero() -> None:
    w = np.zeros((2, 3), np.float32)
    w[1] = [1.0, -2.0, 0.5]
    q, scale = quantize_per_channel(w, 0)
    assert scale[0] == 1.0 and not q[0].any() and q[1, 1] == -127


def test_int8_weights_shrink_the_file_and_keep_fp32_operators(fp32: Path, tmp_path: Path) -> None:
    int8 = tmp_path / "int8.onnx"
    onnx.save(quantize_weights(onnx.load(str(fp32))), str(int8))
    onnx.checker.check_model(str(int8))
    assert int8.stat().st_size < fp32.stat().st_size / 2.5
    found = ops(int8)
    assert found["DequantizeLinear"] == 4 and found["Conv"] == 3
    assert not {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} & set(found)
    x = np.random.default_rng(1).standard_normal((8, 1, 256)).astype(np.float32)
    expected, got = run(fp32, x), run(int8, x)
    assert np.abs(expected - got).max() < 0.02
    assert not np.array_equal(expected, got)  # the weights really were rounded


def test_a_model_without_weights_is_refused() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(ExportError, match="no convolution or matrix weights"):
        quantize_weights(onnx.helper.make_model(graph))


def test_a_dynamic_model_becomes_int8_weights_with_the_same_weights(fp32: Path, tmp_path: Path) -> None:
    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8, per_channel=True)
    assert ops(dynamic)["ConvInteger"] == 3
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(dynamic_to_weight_only(onnx.load(str(dynamic))), str(rewritten))
    onnx.checker.check_model(str(rewritten))
    found = ops(rewritten)
    assert not {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "Cast"} & set(found)
    assert found["DequantizeLinear"] == 4 and found["Conv"] == 3 and found["MatMul"] == 1
    dyn_inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(dynamic)).graph.initializer}
    new_inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(rewritten)).graph.initializer}
    for name, q in dyn_inits.items():
        if name.endswith("_quantized"):  # the very same INT8 weights
            assert np.array_equal(new_inits[f"{name}_dequantized_int8"], q)
    x = np.random.default_rng(2).standard_normal((16, 1, 256)).astype(np.float32)
    reference, dyn, got = run(fp32, x), run(dynamic, x), run(rewritten, x)
    # only the weights are rounded now, not the activations: at least as close to FP32 as before
    assert np.abs(got - reference).max() <= np.abs(dyn - reference).max() + 1e-6
    assert np.abs(got - dyn).max() < 0.05


def test_an_fp32_model_is_not_a_dynamic_one(fp32: Path) -> None:
    with pytest.raises(ExportError, match="no dynamically quantized operator"):
        dynamic_to_weight_only(onnx.load(str(fp32)))


def test_an_opset_without_per_channel_dequantization_is_refused(fp32: Path) -> None:
    model = onnx.load(str(fp32))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 11
    with pytest.raises(ExportError, match="opset 13"):
        quantize_weights(model)


def _graph_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[int]) -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [f"d{i}" for i in range(len(x_shape))])
    graph = onnx.helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def _scales(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, int]]:
    """Weight name -> (its scale, the DequantizeLinear axis)."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        n.output[0]: (inits[n.input[1]], next(a.i for a in n.attribute if a.name == "axis"))
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
    }


@pytest.mark.parametrize(
    ("op", "weight_shape", "attrs", "x_shape", "channels", "axis"),
    [
        ("Conv", (8, 4, 3), {"group": 2}, [1, 8, 16], 8, 0),  # grouped: (out, in/groups, k)
        ("Gemm", (6, 12), {"transB": 1}, [2, 12], 6, 0),  # (out, in)
        ("Gemm", (12, 6), {}, [2, 12], 6, 1),  # (in, out)
        ("MatMul", (12, 6), {}, [2, 12], 6, 1),
    ],
)
def test_each_operator_is_rounded_along_its_output_channels(
    op: str, weight_shape: tuple[int, ...], attrs: dict[str, int], x_shape: list[int], channels: int, axis: int
) -> None:
    rng = np.random.default_rng(0)
    # every output channel gets its own magnitude, so a scale taken along the wrong axis is visible
    weights = rng.standard_normal(weight_shape).astype(np.float32)
    shape = [1] * len(weight_shape)
    shape[axis] = -1
    weights *= np.logspace(-2, 1, channels, dtype=np.float32).reshape(shape)
    model = _graph_model(
        [onnx.helper.make_node(op, ["x", "w"], ["y"], **attrs)], [onnx.numpy_helper.from_array(weights, "w")], x_shape
    )
    rounded = quantize_weights(model)
    onnx.checker.check_model(rounded, full_check=True)
    scale, got_axis = _scales(rounded)["w"]
    assert scale.shape == (channels,) and got_axis == axis
    reduce = tuple(i for i in range(len(weight_shape)) if i != axis)
    assert np.allclose(scale, np.abs(weights).max(axis=reduce) / 127)


def test_a_weight_also_used_before_its_matrix_product_is_dequantized_first() -> None:
    table = np.random.default_rng(1).standard_normal((10, 10)).astype(np.float32)
    idx = onnx.numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "idx")
    nodes = [
        onnx.helper.make_node("Gather", ["w", "idx"], ["rows"], axis=1),  # uses the weight before the Gemm
        onnx.helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
        onnx.helper.make_node("MatMul", ["h", "rows"], ["y"]),
    ]
    model = _graph_model(nodes, [onnx.numpy_helper.from_array(table, "w"), idx], [2, 10])
    rounded = quantize_weights(model)
    onnx.checker.check_model(rounded, full_check=True)
    assert rounded.graph.node[0].op_type == "DequantizeLinear"


def test_a_weight_that_is_also_a_graph_input_stays_fp32() -> None:
    weights = np.ones((12, 6), np.float32)
    model = _graph_model(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("MatMul", ["h", "v"], ["y"])],
        [onnx.numpy_helper.from_array(weights, "w"), onnx.numpy_helper.from_array(np.ones((6, 64), np.float32), "v")],
        [2, 12],
    )
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [12, 6]))
    rounded = quantize_weights(model)
    onnx.checker.check_model(rounded)
    assert set(_scales(rounded)) == {"v"}


def test_channels_too_small_for_a_float_step_count_as_zero() -> None:
    w = np.array([[1e-44, -1e-44], [1.0, -0.5]], dtype=np.float32)
    q, scale = quantize_per_channel(w, 0)
    assert scale[0] == 1.0 and not q[0].any() and (scale > 0).all()


class Twice(nn.Module):
    """One convolution applied twice: a weight shared by two operators."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.stem = nn.Conv1d(1, 16, 3, padding=1)
        self.head = nn.Linear(16, 2)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        h = self.conv(torch.relu(self.conv(self.stem(signal))))
        return torch.softmax(self.head(h.mean(dim=2)), dim=1)


def test_a_dynamic_model_with_a_shared_weight_is_rewritten_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_onnx(Twice(), torch.zeros(2, 1, 64), tmp_path / "fp32.onnx")
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)
    rewritten = dynamic_to_weight_only(onnx.load(str(tmp_path / "dyn.onnx")))
    onnx.checker.check_model(rewritten, full_check=True)
    onnx.save(rewritten, str(tmp_path / "new.onnx"))
    assert ops(tmp_path / "new.onnx")["Conv"] == 3
    x = np.random.default_rng(0).standard_normal((3, 1, 64)).astype(np.float32)
    assert np.abs(run(tmp_path / "new.onnx", x) - run(tmp_path / "fp32.onnx", x)).max() < 0.05


def test_the_service_folds_int8_weights_into_fp32_at_load(fp32: Path, tmp_path: Path) -> None:
    int8 = tmp_path / "int8.onnx"
    onnx.save(quantize_weights(onnx.load(str(fp32))), str(int8))
    assert int8_weights_only(int8) and not int8_weights_only(fp32)
    options = session_options(int8, 1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    assert not [n for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node if n.op_type == "DequantizeLinear"]


def test_a_dynamic_or_static_quantized_model_keeps_its_integer_kernels(fp32: Path, tmp_path: Path) -> None:
    dynamic = tmp_path / "dyn.onnx"
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)
    assert not int8_weights_only(dynamic)
    static = onnx.load(str(quantize_weights_path(fp32, tmp_path)))
    # a QuantizeLinear of an activation makes it a static QDQ model, whose fusion the service keeps
    static.graph.node.insert(0, onnx.helper.make_node("QuantizeLinear", ["signal", "s", "z"], ["signal_q"], name="q"))
    static.graph.node.insert(1, onnx.helper.make_node("DequantizeLinear", ["signal_q", "s", "z"], ["signal_dq"]))
    static.graph.initializer.extend(
        [onnx.numpy_helper.from_array(np.float32(0.1), "s"), onnx.numpy_helper.from_array(np.int8(0), "z")]
    )
    onnx.save(static, str(tmp_path / "static.onnx"))
    assert not int8_weights_only(tmp_path / "static.onnx")


def quantize_weights_path(fp32: Path, folder: Path) -> Path:
    out = folder / "int8-weights.onnx"
    onnx.save(quantize_weights(onnx.load(str(fp32))), str(out))
    return out


def test_the_card_says_how_the_weights_were_rounded(fp32: Path, tmp_path: Path) -> None:
    assert describe(onnx.load(str(quantize_weights_path(fp32, tmp_path)))).startswith(
        "INT8 weights (4 per output channel; symmetric)"
    )
    dynamic = tmp_path / "dyn.onnx"
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)  # per tensor
    assert describe(dynamic_to_weight_only(onnx.load(str(dynamic)))).startswith("INT8 weights (4 per tensor;")
