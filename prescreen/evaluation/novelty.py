"""Held-out figures by novelty: how far each held-out record lies from the nearest record the model
trained or chose anything on. A split by record lets a test image sit beside a near-copy of a
training image; a new site's images lie farther away. If the figures fall with the distance, the
test split flatters the model in the way a new site would find out.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from prescreen.evaluation.metrics import BoolArray, FloatArray, auroc, wilson_interval

NOVELTY_BANDS = ((0, 4), (5, 8), (9, 11), (12, 64))
"""Perceptual-hash distance bands, in bits of 64: near-copies, close, farther, far."""


def _rate(hits: int, n: int) -> dict[str, float | int | None]:
    low, high = wilson_interval(hits, n) if n else (None, None)
    return {"value": hits / n if n else None, "ci_low": low, "ci_high": high, "n": n}


def novelty_table(
    distance: npt.NDArray[np.int64],
    truth: BoolArray,
    score: FloatArray,
    threshold: float,
    bands: tuple[tuple[int, int], ...] = NOVELTY_BANDS,
) -> list[dict[str, object]]:
    """One row per distance band: records, positives, accuracy, and sensitivity and specificity
    at ``threshold`` with Wilson 95 % intervals (so a band of few records says how little it
    shows), AUROC when both classes are present.

    Args:
        distance: per held-out record, the distance to its nearest training-side record.
        truth: per record, whether it should be flagged.
        score: per record, the (calibrated) flag score.
        threshold: the operating point's threshold.

    Raises:
        ValueError: the arrays differ in length.
    """
    if not len(distance) == len(truth) == len(score):
        raise ValueError(f"distance, truth and score differ in length: {len(distance)}, {len(truth)}, {len(score)}")
    flagged = score >= threshold
    rows: list[dict[str, object]] = []
    for low, high in bands:
        band = (distance >= low) & (distance <= high)
        t, f = truth[band], flagged[band]
        rows.append(
            {
                "distance_bits": f"{low}-{high}",
                "records": int(band.sum()),
                "positives": int(t.sum()),
                "accuracy": _rate(int((f == t).sum()), len(t)),
                "sensitivity": _rate(int(f[t].sum()), int(t.sum())),
                "specificity": _rate(int((~f[~t]).sum()), int((~t).sum())),
                "auroc": None if math.isnan(area := auroc(t, score[band])) else area,
            }
        )
    return rows
