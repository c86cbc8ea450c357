"""ECG preprocessing as small callables, shared by training and serving (MONAI style).

Each transform takes an :class:`EcgRecord` (or, at the end of the chain, a 1-D array) and
returns a new one; :class:`Compose` chains them. The same chain runs in ``Trainer``, in
``evaluate`` and in the served endpoint, so there is one definition of "model input".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal as sps

from prescreen.datasets.ecg import EcgRecord
from prescreen.errors import InvalidStudyError

FloatArray = npt.NDArray[np.float32]

PREFERRED_LEADS: tuple[str, ...] = ("II", "MLII", "ECG", "ML2", "LEAD II")


@dataclass(frozen=True)
class SelectLead:
    """Keep one lead: lead II of a multi-lead record, the only lead of a single-lead one.

    Args:
        preferred: lead names tried in order (case-insensitive) on multi-lead records.

    Raises:
        InvalidStudyError: a multi-lead record that has none of the preferred leads.
    """

    preferred: Sequence[str] = PREFERRED_LEADS

    def __call__(self, record: EcgRecord) -> EcgRecord:
        if record.n_leads == 1:
            return record
        upper = [name.upper() for name in record.lead_names]
        for want in self.preferred:
            if want.upper() in upper:
                i = upper.index(want.upper())
                return EcgRecord(record.signal[i : i + 1], record.fs, (record.lead_names[i],), record.source)
        raise InvalidStudyError(
            f"record has leads {', '.join(record.lead_names)} but none of {', '.join(self.preferred)}"
        )


@dataclass(frozen=True)
class Resample:
    """Polyphase resampling to ``fs`` Hz (anti-aliased)."""

    fs: float

    def __call__(self, record: EcgRecord) -> EcgRecord:
        if abs(record.fs - self.fs) < 1e-6:
            return record
        up, down = _ratio(self.fs, record.fs)
        out = sps.resample_poly(record.signal, up, down, axis=1).astype(np.float32)
        return EcgRecord(out, self.fs, record.lead_names, record.source)


def _ratio(target: float, source: float) -> tuple[int, int]:
    from fractions import Fraction

    frac = Fraction(target / source).limit_denominator(1000)
    return frac.numerator, frac.denominator


@dataclass(frozen=True)
class BandPass:
    """Zero-phase Butterworth band-pass: removes baseline wander (< ``low``) and noise (> ``high``)."""

    low: float = 0.5
    high: float = 40.0
    order: int = 3

    def __call__(self, record: EcgRecord) -> EcgRecord:
        nyq = record.fs / 2
        high = min(self.high, 0.9 * nyq)
        sos = sps.butter(self.order, [self.low / nyq, high / nyq], btype="band", output="sos")
        padlen = min(record.n_samples - 1, 3 * (2 * len(sos) + 1))
        out = sps.sosfiltfilt(sos, record.signal, axis=1, padlen=padlen).astype(np.float32)
        return EcgRecord(out, record.fs, record.lead_names, record.source)


@dataclass(frozen=True)
class MinDuration:
    """Reject records shorter than ``seconds``: too short to judge a rhythm."""

    seconds: float = 3.0

    def __call__(self, record: EcgRecord) -> EcgRecord:
        if record.duration_s < self.seconds:
            raise InvalidStudyError(f"record lasts {record.duration_s:.1f} s; at least {self.seconds:.0f} s are needed")
        return record


MIN_PEAK_TO_PEAK_MV = 0.05
MAX_RAIL_FRACTION = 0.2


def assess_ecg(record: EcgRecord) -> str | None:
    """Why the lead the rhythm task reads holds nothing to judge, or ``None`` when it does: a flat
    lead (under 0.05 mV peak to peak) or a saturated one (over 20 % of its samples on the rails)."""
    x = SelectLead()(record).signal[0]
    low, high = float(x.min()), float(x.max())
    if high - low < MIN_PEAK_TO_PEAK_MV:
        return f"the ECG lead {record.lead_names[0] if record.n_leads == 1 else 'II'} is flat"
    tolerance = (high - low) * 1e-4
    on_rails = float(np.mean((x <= low + tolerance) | (x >= high - tolerance)))
    if on_rails > MAX_RAIL_FRACTION:
        return f"the ECG lead is saturated: {on_rails:.0%} of its samples sit at the amplifier's limits"
    return None


@dataclass(frozen=True)
class Standardize:
    """Per-record z-score of the (single-lead) signal, clipped to ±``clip``; returns a 1-D array."""

    clip: float = 20.0

    def __call__(self, record: EcgRecord) -> FloatArray:
        x = record.signal[0].astype(np.float64)
        std = float(x.std())
        if std < 1e-6:
            raise InvalidStudyError("the ECG is flat (no signal variation)")
        z = (x - x.mean()) / std
        out: FloatArray = np.clip(z, -self.clip, self.clip).astype(np.float32)
        return out


@dataclass(frozen=True)
class CropOrPad:
    """Fixed length: centre (or random, with ``rng``) crop of long signals, zero-pad short ones."""

    length: int

    def __call__(self, x: FloatArray, rng: np.random.Generator | None = None) -> FloatArray:
        n = x.shape[-1]
        if n >= self.length:
            start = int(rng.integers(0, n - self.length + 1)) if rng is not None else (n - self.length) // 2
            return x[..., start : start + self.length]
        pad = self.length - n
        left = int(rng.integers(0, pad + 1)) if rng is not None else 0
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, pad - left)]).astype(np.float32)


@dataclass(frozen=True)
class Windows:
    """Split a 1-D signal into windows of ``length`` with ``stride`` → ``(n, 1, length)``.

    Short signals are zero-padded to one window; the last window is aligned to the end so
    that no samples are dropped.
    """

    length: int
    stride: int

    def __call__(self, x: FloatArray) -> FloatArray:
        n = x.shape[-1]
        if n <= self.length:
            return CropOrPad(self.length)(x)[None, None, :]
        starts = list(range(0, n - self.length + 1, self.stride))
        if starts[-1] != n - self.length:
            starts.append(n - self.length)
        return np.stack([x[s : s + self.length] for s in starts])[:, None, :].astype(np.float32)


class Compose:
    """Apply transforms in order, like ``monai.transforms.Compose``."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, data: Any) -> Any:
        for transform in self.transforms:
            data = transform(data)
        return data


def ecg_preprocess(fs: float) -> Compose:
    """The record → standardized single-lead signal chain used by the rhythm task."""
    return Compose([MinDuration(3.0), SelectLead(), Resample(fs), BandPass(0.5, 40.0), Standardize()])


# --- training-time augmentation -------------------------------------------------------------


def augment_ecg(x: FloatArray, rng: np.random.Generator) -> FloatArray:
    """ECG augmentation: random amplitude scale, polarity flip, Gaussian noise, baseline drift.

    Args:
        x: a standardized 1-D window.
        rng: the run's generator (the seed makes runs reproducible).
    """
    y = x * rng.uniform(0.8, 1.25)
    if rng.random() < 0.2:
        y = -y
    if rng.random() < 0.5:
        y = y + rng.normal(0.0, rng.uniform(0.01, 0.1), size=y.shape)
    if rng.random() < 0.3:
        t = np.linspace(0, 1, y.shape[-1])
        y = y + rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * (rng.uniform(0.1, 1.0) * t * 10 + rng.random()))
    return y.astype(np.float32)
