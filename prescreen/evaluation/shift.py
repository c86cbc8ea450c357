"""Perturbations a new site brings, applied to a record's model input (the preprocessed signal):
other noise, contrast, resolution and gain for images; noise, baseline wander, a sampling clock
that is off and gain for ECGs. Each perturbation re-standardizes as the preprocessing would, so a
pure gain change is (rightly) invisible to a per-record z-scored model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import zoom
from scipy.signal import resample

from prescreen.evaluation.metrics import FloatArray

Perturbation = Callable[[FloatArray, np.random.Generator], FloatArray]

ECG_RATE_HZ = 150.0  # the rhythm task's model-input rate


def _zscore(x: np.ndarray, axes: tuple[int, ...]) -> FloatArray:
    centred = x - x.mean(axis=axes, keepdims=True)
    std = centred.std(axis=axes, keepdims=True)
    out: FloatArray = (centred / np.where(std < 1e-6, 1.0, std)).astype(np.float32)
    return out


# --- images: (frames, H, W), z-scored per frame ------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    out: np.ndarray = (x - lo) / np.where(hi - lo < 1e-6, 1.0, hi - lo)
    return out


def _gamma(g: float) -> Perturbation:
    return lambda x, rng: _zscore(_unit(x) ** g, (1, 2))


def _image_noise(sigma: float) -> Perturbation:
    return lambda x, rng: _zscore(_unit(x) + rng.normal(0.0, sigma, x.shape), (1, 2))


def _low_resolution(factor: int) -> Perturbation:
    def apply(x: FloatArray, rng: np.random.Generator) -> FloatArray:
        small = zoom(x, (1, 1 / factor, 1 / factor), order=1)
        back = zoom(small, (1, x.shape[1] / small.shape[1], x.shape[2] / small.shape[2]), order=1)
        return _zscore(back[:, : x.shape[1], : x.shape[2]], (1, 2))

    return apply


def _image_gain(k: float) -> Perturbation:
    return lambda x, rng: _zscore(_unit(x) * k, (1, 2))


IMAGE_PERTURBATIONS: list[tuple[str, Perturbation]] = [
    ("gamma 0.7 (brighter mid-tones)", _gamma(0.7)),
    ("gamma 1.5 (darker mid-tones)", _gamma(1.5)),
    ("gaussian noise sigma 0.05", _image_noise(0.05)),
    ("gaussian noise sigma 0.10", _image_noise(0.10)),
    ("half resolution", _low_resolution(2)),
    ("gain x0.5 (linear contrast)", _image_gain(0.5)),
]

# --- ECG: 1-D at 150 Hz, z-scored per record ------------------------------------------------


def _ecg_noise(sigma: float) -> Perturbation:
    return lambda x, rng: _zscore(x + rng.normal(0.0, sigma, x.shape), (0,))


def _wander(amplitude: float, hz: float) -> Perturbation:
    def apply(x: FloatArray, rng: np.random.Generator) -> FloatArray:
        t = np.arange(x.shape[-1]) / ECG_RATE_HZ
        return _zscore(x + amplitude * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi)), (0,))

    return apply


def _clock(ratio: float) -> Perturbation:
    def apply(x: FloatArray, rng: np.random.Generator) -> FloatArray:
        return _zscore(resample(x, max(2, round(x.shape[-1] * ratio))), (0,))

    return apply


def _ecg_gain(k: float) -> Perturbation:
    return lambda x, rng: _zscore(x * k, (0,))


ECG_PERTURBATIONS: list[tuple[str, Perturbation]] = [
    ("gaussian noise 0.1 SD", _ecg_noise(0.1)),
    ("gaussian noise 0.3 SD", _ecg_noise(0.3)),
    ("baseline wander 0.5 SD at 0.3 Hz", _wander(0.5, 0.3)),
    ("sampling clock +5 %", _clock(1.05)),
    ("sampling clock -5 %", _clock(0.95)),
    ("gain x2", _ecg_gain(2.0)),
]


def perturbations_for(kind: str) -> list[tuple[str, Perturbation]]:
    """The perturbations of an input kind (``image`` or ``ecg``); none for another kind."""
    return {"image": IMAGE_PERTURBATIONS, "ecg": ECG_PERTURBATIONS}.get(kind, [])
