"""Temperature scaling of class probabilities, applied at inference time from the card."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
EPS = 1e-7


def apply_temperature(probs: npt.NDArray[np.floating], temperature: float) -> FloatArray:
    """Softmax of ``log(p) / T`` per row: ``T > 1`` softens over-confident probabilities, ``T < 1``
    sharpens them, ``T = 1`` changes nothing. For a single network this is the classic temperature
    scaling of its logits (log-probabilities differ from logits by a per-row constant).

    Raises:
        ValueError: a temperature that is not positive and finite.
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"a temperature must be positive and finite, not {temperature}")
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    out /= out.sum(axis=1, keepdims=True)
    result: FloatArray = out.astype(np.float32)
    return result
