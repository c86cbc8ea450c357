"""Where the model looked: occlusion sensitivity of the flag score, drawn over the image.

Each square patch of the (first) frame is blanked in turn; the drop of the flag score when a
patch is hidden is that patch's importance. It needs only the ONNX model, so the served model
explains itself without torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from prescreen.models.onnx_model import FloatArray, OnnxModel


def occlusion_map(model: OnnxModel, frame: FloatArray, patches_per_side: int = 8, batch: int = 64) -> FloatArray:
    """Importance per pixel of a preprocessed frame ``(H, W)`` for the model's flag score.

    Args:
        model: the image model.
        frame: one preprocessed frame (z-scored, so 0 is the mean intensity used to blank).
        patches_per_side: the patch is ``H / patches_per_side``; patches overlap by half.
        batch: occluded copies per ONNX call.

    Returns:
        ``(H, W)`` map: the mean drop in flag score when the pixel is hidden (≥ 0 means the
        pixel supports the flag).
    """
    h, w = frame.shape
    ph, pw = max(1, h // patches_per_side), max(1, w // patches_per_side)
    sh, sw = max(1, ph // 2), max(1, pw // 2)
    boxes = [(y, x) for y in range(0, h - ph + 1, sh) for x in range(0, w - pw + 1, sw)]
    base = float(model.task.flag_scores(model.predict_windows(frame[None, None]))[0])
    heat = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    for start in range(0, len(boxes), batch):
        chunk = boxes[start : start + batch]
        copies = np.repeat(frame[None, None], len(chunk), axis=0)
        for k, (y, x) in enumerate(chunk):
            copies[k, 0, y : y + ph, x : x + pw] = 0.0
        scores = model.task.flag_scores(model.predict_windows(copies))
        for (y, x), score in zip(chunk, scores, strict=True):
            heat[y : y + ph, x : x + pw] += base - float(score)
            count[y : y + ph, x : x + pw] += 1
    return (heat / np.maximum(count, 1)).astype(np.float32)


def overlay_png(frame: FloatArray, heat: FloatArray, title: str) -> bytes:
    """The frame with the positive part of ``heat`` over it, as PNG bytes."""
    positive = np.clip(heat, 0, None)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(frame, cmap="gray")
    if positive.max() > 0:
        shown = np.ma.masked_less(positive / positive.max(), 0.25)  # only the regions that matter
        ax.imshow(shown, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def save_overlay(frame: FloatArray, heat: FloatArray, path: Path, title: str) -> None:
    """Write :func:`overlay_png` at ``path`` (whole or not at all)."""
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(overlay_png(frame, heat, title))
    tmp.replace(path)
