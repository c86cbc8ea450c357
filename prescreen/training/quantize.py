"""INT8 weights, FP32 arithmetic: an ONNX graph whose weights are stored as INT8 and dequantized
once, when ONNX Runtime loads it.

ONNX Runtime's *dynamic* quantization also quantizes every activation on the fly and runs
``ConvInteger``; on this CPU its 1-D and grouped convolutions are several times slower than FP32
(BENCHMARKS.md). Storing the weights as ``DequantizeLinear(int8, scale, zero_point)`` keeps the
file about four times smaller while the session (``session_options`` turns ONNX Runtime's QDQ
fusion off for such a file) folds each ``DequantizeLinear`` of a constant into an FP32 weight at
load time, so inference runs the FP32 kernels on those weights. The only approximation is the
rounding of the weights to 8 bits per output channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from prescreen.errors import ExportError

WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
"""Operators whose constant weight input (index 1) is stored as INT8."""
MIN_WEIGHTS = 64
"""Smaller weight tensors stay FP32: their bytes do not matter and their rounding would."""
MIN_OPSET = 13
"""The first ONNX opset whose ``DequantizeLinear`` takes a scale per channel (``axis``)."""


def _channel_axis(node: onnx.NodeProto) -> int:
    """The axis of ``node``'s weight that indexes output channels."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul: (K, N)


def quantize_per_channel(
    weights: npt.NDArray[np.float32], axis: int
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric INT8 rounding per channel along ``axis``: ``weights ≈ q * scale``.

    Returns:
        ``q`` (int8, values in [-127, 127], shape of ``weights``) and ``scale`` (float32, one per
        channel; 1.0 for a channel whose values are all zero, or too small for a normal float step,
        whose ``q`` is then zero).
    """
    reduce = tuple(i for i in range(weights.ndim) if i != axis)
    amax = (np.abs(weights).max(axis=reduce) if reduce else np.abs(weights)).astype(np.float32)
    step = amax / np.float32(127.0)
    usable = step >= np.finfo(np.float32).tiny  # below it the step underflows: the channel counts as zero
    scale = np.where(usable, step, np.float32(1.0)).astype(np.float32)
    shape = [1] * weights.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weights / scale.reshape(shape)), -127, 127)
    q = np.where(usable.reshape(shape), q, 0).astype(np.int8)
    return q, scale


def _dequantize_node(
    weight: str, q: npt.NDArray[Any], scale: npt.NDArray[Any], zero: npt.NDArray[Any], axis: int
) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    """Initializers and the ``DequantizeLinear`` node that produce ``weight`` from INT8."""
    inits = [
        numpy_helper.from_array(q, f"{weight}_int8"),
        numpy_helper.from_array(scale, f"{weight}_int8_scale"),
        numpy_helper.from_array(zero, f"{weight}_int8_zero_point"),
    ]
    node = helper.make_node(
        "DequantizeLinear",
        [f"{weight}_int8", f"{weight}_int8_scale", f"{weight}_int8_zero_point"],
        [weight],
        name=f"{weight}_dequantize",
        axis=axis,
    )
    return inits, node


def quantize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an FP32 ``model`` with the weights of its convolutions and matrix products stored
    as INT8 per output channel (``DequantizeLinear`` in front of each; a weight shared by several
    operators is dequantized once, along the first one's output channels).

    Raises:
        ExportError: an opset before 13, or no weight large enough to quantize.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ExportError(f"per-channel DequantizeLinear needs ONNX opset {MIN_OPSET} or later, the model has {opset}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    dequantize: list[onnx.NodeProto] = []
    done: set[str] = set()
    for node in graph.node:
        weight = node.input[1] if node.op_type in WEIGHT_OPS and len(node.input) > 1 else ""
        if weight not in inits or weight in done or weight in graph_inputs:  # an input can be fed another value
            continue
        array = numpy_helper.to_array(inits[weight])
        if array.dtype == np.float32 and array.size >= MIN_WEIGHTS and array.ndim >= 2:
            axis = _channel_axis(node)
            q, scale = quantize_per_channel(array, axis)
            new_inits, dq = _dequantize_node(weight, q, scale, np.zeros_like(scale, dtype=np.int8), axis)
            graph.initializer.remove(inits[weight])
            graph.initializer.extend(new_inits)
            dequantize.append(dq)  # first in the graph: every user of the weight, of any type, comes after
            done.add(weight)
    if not done:
        raise ExportError("the model has no convolution or matrix weights to store as INT8")
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = [i for i in graph.initializer if i.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


def dynamic_to_weight_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite a model made by ONNX Runtime's ``quantize_dynamic`` into INT8-weights form, keeping
    its INT8 weights, scales and zero points exactly: each ``ConvInteger`` / ``MatMulInteger`` with
    its ``DynamicQuantizeLinear`` input, ``Cast`` and scale ``Mul`` becomes ``DequantizeLinear`` of the
    weight and the FP32 operator on the unquantized activation.

    Raises:
        ExportError: a quantized operator is not in the pattern ``quantize_dynamic`` writes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    nodes_in = list(graph.node)
    producer = {name: k for k, n in enumerate(nodes_in) for name in n.output}
    users: dict[str, list[int]] = {}
    for k, n in enumerate(nodes_in):
        for name in n.input:
            users.setdefault(name, []).append(k)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    dequantized: dict[str, str] = {}  # INT8 weight -> its FP32 name: a shared weight is dequantized once
    for k, node in enumerate(nodes_in):
        if node.op_type not in ("ConvInteger", "MatMulInteger"):
            continue
        what = f"{node.name or node.op_type} (node {k})"
        x_q, w_q, _, w_zero = [*node.input, "", "", "", ""][:4]
        quantizer = nodes_in[producer[x_q]] if x_q in producer else None
        casts = users.get(node.output[0], [])
        if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear" or w_q not in inits or len(casts) != 1:
            raise ExportError(f"{what}: not the pattern ONNX Runtime's dynamic quantization writes")
        cast = nodes_in[casts[0]]
        muls = users.get(cast.output[0], [])
        if cast.op_type != "Cast" or len(muls) != 1 or nodes_in[muls[0]].op_type != "Mul":
            raise ExportError(f"{what}: no Cast and scale Mul after it")
        mul = nodes_in[muls[0]]
        scale_name = next(i for i in mul.input if i != cast.output[0])
        scales = nodes_in[producer[scale_name]] if scale_name in producer else None
        w_scale = next((i for i in (scales.input if scales else []) if i in inits), None)
        if scales is None or scales.op_type != "Mul" or w_scale is None:
            raise ExportError(f"{what}: its weight scale is not an initializer")
        new_nodes: list[onnx.NodeProto] = []
        if w_q not in dequantized:
            q = numpy_helper.to_array(inits[w_q])
            scale: npt.NDArray[Any] = numpy_helper.to_array(inits[w_scale]).astype(np.float32).reshape(-1)
            zero: npt.NDArray[Any] = (
                numpy_helper.to_array(inits[w_zero]).reshape(-1) if w_zero in inits else np.zeros(1, dtype=q.dtype)
            )
            axis = 0 if node.op_type == "ConvInteger" else 1
            if scale.size == 1:  # per tensor: scalars, as DequantizeLinear wants them
                scale, zero = scale.reshape(()), zero.reshape(())
            dequantized[w_q] = f"{w_q}_dequantized"
            new_inits, dq = _dequantize_node(dequantized[w_q], q, scale, zero.astype(q.dtype), axis)
            graph.initializer.extend(new_inits)
            new_nodes.append(dq)
        fp32 = helper.make_node(
            "Conv" if node.op_type == "ConvInteger" else "MatMul",
            [quantizer.input[0], dequantized[w_q]],
            [mul.output[0]],
            name=f"{node.name or node.op_type}_{k}_fp32",
        )
        fp32.attribute.extend(node.attribute)
        replaced[k] = [*new_nodes, fp32]
        removed.update({casts[0], muls[0]})
    if not replaced:
        raise ExportError("no dynamically quantized operator in the model")
    nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(nodes_in):
        if k in replaced:
            nodes.extend(replaced[k])
        elif k not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)  # still in order: each replacement sits where its ConvInteger sat
    _prune(graph)
    return out


def describe(model: onnx.ModelProto) -> str:
    """What the card says about an INT8-weights model: how many weights are rounded per output
    channel and how many per tensor (a file rewritten from ONNX Runtime's dynamic quantization keeps
    its per-tensor convolution weights)."""
    inits = {i.name: i for i in model.graph.initializer}
    per_channel = per_tensor = 0
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[1] in inits:
            if numpy_helper.to_array(inits[node.input[1]]).size > 1:
                per_channel += 1
            else:
                per_tensor += 1
    parts = [f"{per_channel} per output channel"] if per_channel else []
    parts += [f"{per_tensor} per tensor"] if per_tensor else []
    return f"INT8 weights ({', '.join(parts) or 'none'}; symmetric), dequantized to FP32 when the model is loaded"
