"""Occlusion sensitivity: a map of the frame's shape that is highest where hiding the image lowers
the flag score most, and its overlay PNG.

The model is an ONNX graph built here whose flag score depends on one known square of the frame
only: ``P(pneumonia) = sigmoid(k * mean(region))``. Hiding (zeroing) part of a bright region
lowers the score; hiding anything else changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from prescreen.models.card import ModelCard
from prescreen.models.explain import occlusion_map, save_overlay
from prescreen.models.onnx_model import INPUT_NAME, OUTPUT_NAME, OnnxModel, sha256_file
from prescreen.models.task import get_task

REGION = (40, 56, 8, 24)  # rows 40..55, columns 8..23 of a 64 x 64 frame


def region_model(path: Path, region: tuple[int, int, int, int] = REGION, k: float = 1.0) -> OnnxModel:
    """A chest-xray ONNX model whose logits are ``[0, k * mean(signal[..., y0:y1, x0:x1])]``."""
    y0, y1, x0, x1 = region

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    nodes = [
        helper.make_node("Slice", [INPUT_NAME, "starts", "ends", "axes"], ["patch"]),
        helper.make_node("ReduceMean", ["patch"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),
        helper.make_node("Mul", ["m1", "k"], ["logit"]),
        helper.make_node("Mul", ["m1", "zero"], ["base"]),
        helper.make_node("Concat", ["base", "logit"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "region",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, "h", "w"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            ints("starts", [y0, x0]),
            ints("ends", [y1, x1]),
            ints("axes", [2, 3]),
            ints("axis1", [1]),
            helper.make_tensor("k", TensorProto.FLOAT, [], [k]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    task = get_task("chest-xray")
    card = ModelCard(
        task=task.name,
        name="region",
        version="1",
        created="2024-01-01T00:00:00+00:00",
        classes=list(task.classes),
        normal_classes=list(task.normal_classes),
        flag_rule=task.flag_rule,
        input_spec=task.input_spec,
        operating_threshold=0.5,
        threshold_chosen_on="by hand",
        training={},
        onnx={"sha256": sha256_file(path)},
    )
    return OnnxModel(path, card)


def frame_with_bright_region(shape: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    """A z-scored-looking frame: noise around 0, plus +2 over ``REGION``."""
    frame = np.random.default_rng(seed).normal(0.0, 0.3, shape).astype(np.float32)
    y0, y1, x0, x1 = REGION
    frame[y0:y1, x0:x1] += 2.0
    return frame


@pytest.fixture
def model(tmp_path: Path) -> OnnxModel:
    return region_model(tmp_path / "model.onnx")


def test_map_has_the_frame_shape(model: OnnxModel) -> None:
    for shape in [(64, 64), (64, 96), (72, 64)]:
        heat = occlusion_map(model, frame_with_bright_region(shape))
        assert heat.shape == shape
        assert heat.dtype == np.float32
        assert np.isfinite(heat).all()


def test_hiding_the_region_that_drives_the_score_matters_most(model: OnnxModel) -> None:
    frame = frame_with_bright_region()
    heat = occlusion_map(model, frame)
    y0, y1, x0, x1 = REGION
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert y0 <= peak[0] < y1 and x0 <= peak[1] < x1, f"peak {peak} outside the region"
    assert heat[y0:y1, x0:x1].min() > 0  # every pixel of it supports the flag
    # a patch is 8 px: pixels whose every covering patch misses the region have no importance
    far = np.ones_like(heat, dtype=bool)
    far[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = False
    assert np.abs(heat[far]).max() < 1e-6
    assert heat[y0:y1, x0:x1].mean() > 10 * np.abs(heat[far]).max() + 1e-3


def test_importance_is_the_drop_in_flag_score(model: OnnxModel) -> None:
    """Hiding the whole region (mean 0 → score 0.5) loses sigmoid(2) - 0.5 of the score; each pixel
    is hidden by several overlapping patches that cover part of it, so its importance lies between
    0 and that full drop."""
    frame = np.zeros((64, 64), dtype=np.float32)
    y0, y1, x0, x1 = REGION
    frame[y0:y1, x0:x1] = 2.0
    heat = occlusion_map(model, frame)
    full_drop = 1 / (1 + np.exp(-2.0)) - 0.5
    assert 0 < heat.max() <= full_drop + 1e-6
    # pixel (48, 16) is hidden by 4 patches of 8 x 8 (stride 4), all inside the region, each hiding
    # a quarter of the region: mean drop = sigmoid(2) - sigmoid(1.5)
    assert heat[48, 16] == pytest.approx(1 / (1 + np.exp(-2.0)) - 1 / (1 + np.exp(-1.5)), abs=1e-5)


def test_signed_importance_where_hiding_raises_the_score(tmp_path: Path) -> None:
    """A dark region (negative values) argues against the flag: hiding it raises the score."""
    model = region_model(tmp_path / "m.onnx")
    frame = np.zeros((64, 64), dtype=np.float32)
    y0, y1, x0, x1 = REGION
    frame[y0:y1, x0:x1] = -2.0
    heat = occlusion_map(model, frame)
    assert heat[y0:y1, x0:x1].max() < 0
    assert heat.min() == heat[y0:y1, x0:x1].min()


def test_batching_does_not_change_the_map(model: OnnxModel) -> None:
    frame = frame_with_bright_region()
    np.testing.assert_allclose(occlusion_map(model, frame, batch=7), occlusion_map(model, frame, batch=1000), atol=1e-7)


def test_finer_patches_localise_better(model: OnnxModel) -> None:
    frame = frame_with_bright_region()
    y0, y1, x0, x1 = REGION

    def spill(heat: np.ndarray) -> float:
        inside = np.zeros_like(heat, dtype=bool)
        inside[y0:y1, x0:x1] = True
        positive = np.clip(heat, 0, None)
        return float(positive[~inside].sum() / positive.sum())

    assert spill(occlusion_map(model, frame, patches_per_side=16)) < spill(occlusion_map(model, frame, 4))


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def test_overlay_png_is_written_and_coloured_where_the_map_is(model: OnnxModel, tmp_path: Path) -> None:
    frame = frame_with_bright_region()
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "overlay.png"
    save_overlay(frame, occlusion_map(model, frame), out, "chest-xray: pneumonia (score 0.88)")
    rgb = _rgb(out)
    assert rgb.shape == (400, 400, 3)  # 4 x 4 in at 100 dpi
    colour = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) > 30
    assert colour.any(), "no heat overlay drawn"
    rows, cols = np.nonzero(colour)
    # the region is in the lower-left quarter of the frame: so is the colour
    assert np.median(rows) > 200 and np.median(cols) < 200
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_overlay_without_positive_importance_is_the_gray_frame(tmp_path: Path) -> None:
    frame = frame_with_bright_region()
    out = tmp_path / "plain.png"
    save_overlay(frame, -np.ones_like(frame), out, "nothing")
    rgb = _rgb(out)
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 2 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 2


def test_overlay_replaces_an_existing_file(model: OnnxModel, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    out.write_bytes(b"old")
    frame = frame_with_bright_region()
    save_overlay(frame, occlusion_map(model, frame), out, "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
