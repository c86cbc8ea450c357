"""INT8 weights with FP32 arithmetic: rounding, the rewritten graphs, and what ONNX Runtime runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from prescreen.errors import ExportError
from prescreen.models.onnx_model import make_session
from prescreen.training.export import export_onnx
from prescreen.training.quantize import dynamic_to_weight_only, quantize_per_channel, quantize_weights


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
