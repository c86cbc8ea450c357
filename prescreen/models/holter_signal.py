"""Signal quality of a long ECG lead: which 10-second segments can be analysed.

A segment is *not analysable* when its lead is flat (robust peak-to-peak below 0.05 mV), saturated or
stuck (more than half of its samples sit in runs of identical values of 0.2 s or longer: a lead at
its rail or disconnected), or holds missing samples. Such segments are left out of beat detection
and reported as "not analysable: N minutes".
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import signal as sps

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

SEGMENT_S = 10.0
"""Signal quality is judged per segment of this length, on a grid starting at sample 0."""
FLAT_MV = 0.05
"""A segment whose 0.5-99.5 percentile range is below this is flat."""
STUCK_RUN_S = 0.2
"""Runs of identical samples at least this long count as stuck (flat line or saturation)."""
STUCK_SHARE = 0.5
"""A segment with more than this share of stuck samples is not analysable."""
MISSING_SHARE = 0.01
"""A segment with more than this share of missing (NaN) samples is not analysable."""
BAND_HZ = (0.5, 40.0)


def stuck_share(x: npt.NDArray[np.floating], fs: float) -> float:
    """The share of samples in runs of identical values at least :data:`STUCK_RUN_S` long."""
    if len(x) < 2:
        return 0.0
    same = np.concatenate([[0], (np.diff(x) == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(same))
    lengths = edges[1::2] - edges[::2] + 1  # a run of k equal differences spans k + 1 samples
    stuck = int(lengths[lengths >= STUCK_RUN_S * fs].sum())
    return stuck / len(x)


def segment_usable(x: npt.NDArray[np.floating], fs: float) -> bool:
    """Whether one segment of a lead can be analysed (not flat, stuck, saturated or missing)."""
    if len(x) == 0:
        return False
    missing = ~np.isfinite(x)
    if missing.mean() > MISSING_SHARE:
        return False
    values = x[~missing]
    low, high = np.percentile(values, [0.5, 99.5])
    return bool(high - low >= FLAT_MV and stuck_share(values, fs) <= STUCK_SHARE)


def usable_mask(x: npt.NDArray[np.floating], fs: float, start: int = 0) -> tuple[IntArray, BoolArray]:
    """Judge the segments of the record grid that a stretch of a lead covers.

    Args:
        x: the lead's samples from record sample ``start`` on.
        fs: sampling rate in Hz.
        start: the record sample of ``x[0]``.

    Returns:
        the record-grid index of each covered segment, and whether it is analysable (a segment only
        partly inside ``x`` is judged on the part inside).
    """
    seg = round(SEGMENT_S * fs)
    first, last = start // seg, (start + len(x) - 1) // seg
    index = np.arange(first, last + 1, dtype=np.int64)
    usable = np.array(
        [segment_usable(x[max(0, k * seg - start) : max(0, (k + 1) * seg - start)], fs) for k in index], dtype=bool
    )
    return index, usable


def usable_runs(index: IntArray, usable: BoolArray, fs: float, start: int, stop: int) -> list[tuple[int, int]]:
    """Contiguous analysable stretches, as record samples clipped to ``start:stop``."""
    seg = round(SEGMENT_S * fs)
    runs: list[tuple[int, int]] = []
    for k, ok in zip(index.tolist(), usable.tolist(), strict=True):
        if not ok:
            continue
        lo, hi = max(start, k * seg), min(stop, (k + 1) * seg)
        if runs and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi)
        elif hi > lo:
            runs.append((lo, hi))
    return runs


def intervals_s(unusable_segments: list[int], fs: float, n_samples: int) -> list[tuple[float, float]]:
    """Not-analysable record-grid segments → merged (start_s, end_s) intervals."""
    seg = round(SEGMENT_S * fs)
    out: list[tuple[float, float]] = []
    for k in sorted(unusable_segments):
        lo, hi = k * seg / fs, min(n_samples, (k + 1) * seg) / fs
        if out and abs(out[-1][1] - lo) < 1e-9:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def bandpass(x: npt.NDArray[np.floating], fs: float) -> FloatArray:
    """Zero-phase Butterworth band-pass (0.5-40 Hz, order 2); missing samples count as 0."""
    clean = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    high = min(BAND_HZ[1], 0.45 * fs)
    sos = sps.butter(2, [BAND_HZ[0], high], btype="bandpass", fs=fs, output="sos")
    if len(clean) <= 3 * (2 * len(sos) + 1):
        return clean.astype(np.float32)
    out: FloatArray = sps.sosfiltfilt(sos, clean).astype(np.float32)
    return out
