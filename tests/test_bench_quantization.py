"""``benchmarks/bench_quantization.py``: its FP32 baseline is exactly the numbers the INT8-weights file
computes with."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_quantization as bq

from prescreen.models.onnx_model import make_session
from prescreen.training.export import export_onnx
from prescreen.training.quantize import quantize_weights


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 32, 5, padding=2)
        self.head = nn.Linear(32, 2)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(torch.relu(self.conv(signal)).mean(dim=2)), dim=1)


def test_the_fp32_baseline_computes_with_the_int8_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_onnx(Net(), torch.zeros(2, 1, 64), tmp_path / "fp32.onnx")
    int8 = quantize_weights(onnx.load(str(tmp_path / "fp32.onnx")))
    onnx.save(int8, str(tmp_path / "int8.onnx"))
    baseline = bq.dequantized(int8)
    assert not [n for n in baseline.graph.node if n.op_type == "DequantizeLinear"]
    onnx.save(baseline, str(tmp_path / "baseline.onnx"))
    onnx.checker.check_model(str(tmp_path / "baseline.onnx"))
    x = np.random.default_rng(0).standard_normal((4, 1, 64)).astype(np.float32)
    got = [
        make_session(tmp_path / f, 1).run(["probabilities"], {"signal": x})[0] for f in ("int8.onnx", "baseline.onnx")
    ]
    assert np.allclose(got[0], got[1], atol=1e-6)
    original = make_session(tmp_path / "fp32.onnx", 1).run(["probabilities"], {"signal": x})[0]
    assert not np.array_equal(original, got[1])  # the baseline is the rounded weights, not the original
