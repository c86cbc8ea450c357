"""INT8 weights with FP32 arithmetic against FP32 and ONNX Runtime's dynamic INT8, per shipped model.

For each shipped model whose card says it is quantized, three files are made in a temporary folder
from the shipped one, in this run:

- **FP32**: the shipped INT8 weights dequantized into FP32 initializers (the baseline: the same
  numbers the shipped file computes with, at FP32 size);
- **dynamic INT8**: ``quantize_dynamic`` of that FP32 file (INT8 weights *and* activations,
  ``ConvInteger``), how the first shipped ensembles were made;
- **INT8 weights**: the shipped file itself (``DequantizeLinear`` folded into FP32 weights at load).

Each is loaded with ``make_session`` (the service's session options) on 1 intra-op thread and timed
on one preprocessed study of the task's input size (inference only, p50 over ``--repeats``), in
interleaved rounds so that load on the machine touches all three alike. Reported: size, p50 and the
ratio to FP32 of the same run, and the largest probability difference from FP32 on that input.

Usage: ``python benchmarks/bench_quantization.py [--repeats 200] [--out BENCHMARKS.md]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import machine_line
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from prescreen.models.card import ModelCard
from prescreen.models.model_store import SHIPPED_DIR
from prescreen.models.onnx_model import INPUT_NAME, OUTPUT_NAME, make_session

SECTION_TITLE = "INT8 weights against FP32 and dynamic INT8 (bench_quantization.py)"


def dequantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``DequantizeLinear`` of constants replaced by its FP32 result."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    keep = []
    for node in out.graph.node:
        if node.op_type == "DequantizeLinear" and all(i in inits for i in node.input):
            q, scale, zero = (numpy_helper.to_array(inits[i]) for i in node.input)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.ndim:
                shape[axis] = -1
            w = (q.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * scale.reshape(shape)
            out.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), node.output[0]))
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def p50_ms(sessions: dict[str, ort.InferenceSession], x: np.ndarray, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():  # warm-up
        for _ in range(5):
            s.run([OUTPUT_NAME], {INPUT_NAME: x})
    for _ in range(repeats):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run([OUTPUT_NAME], {INPUT_NAME: x})
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) * 1000 for name, v in times.items()}


def measure(task_dir: Path, tmp: Path, repeats: int) -> list[str]:
    card = ModelCard.load(task_dir / "card.json")
    shipped = task_dir / "model.onnx"
    fp32, dynamic = tmp / f"{card.task}-fp32.onnx", tmp / f"{card.task}-dynamic.onnx"
    onnx.save(dequantized(onnx.load(str(shipped))), str(fp32))
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8, per_channel=True)
    files = {"FP32": fp32, "dynamic INT8": dynamic, "INT8 weights (shipped)": shipped}
    sessions = {name: make_session(path, 1) for name, path in files.items()}
    shape = [int(d) if isinstance(d, int) else 1 for d in sessions["FP32"].get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ms = p50_ms(sessions, x, repeats)
    ref = sessions["FP32"].run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    rows = []
    for name, path in files.items():
        diff = float(np.abs(sessions[name].run([OUTPUT_NAME], {INPUT_NAME: x})[0] - ref).max())
        rows.append(
            f"| {card.task} | {name} | {path.stat().st_size / 1e6:.2f} | {ms[name]:.1f} | "
            f"{ms[name] / ms['FP32']:.2f}× | {diff:.1e} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_dir in sorted(p for p in SHIPPED_DIR.iterdir() if (p / "card.json").is_file()):
            if ModelCard.load(task_dir / "card.json").onnx.get("quantized"):
                rows += measure(task_dir, Path(tmp), args.repeats)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            f"\n## {SECTION_TITLE}, {when}\n",
            machine_line(),
            "",
            "One preprocessed study per model (random input of the model's shape), inference only, ONNX Runtime "
            f"on 1 intra-op thread with the service's session options, p50 of {args.repeats} interleaved rounds. "
            "FP32 is the shipped INT8 weights dequantized (the baseline); dynamic INT8 is `quantize_dynamic` of "
            "it; the ratio is against FP32 in this run. Max |Δp| is the largest probability difference from FP32.",
            "",
            "| model | file | MB | p50 ms | ratio to FP32 | max abs Δp |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    print(text)
    if args.out:
        with args.out.open("a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
