"""Beats of a long ECG: QRS detection chunk by chunk, and the network input of each beat.

QRS complexes are found by GQRS (``wfdb.processing.gqrs_detect``, the maintained Python port of
PhysioNet's ``gqrs``) on the analysable stretches of the primary lead, chunk by chunk with an
overlap; each chunk owns the detections inside its own part, so no beat is counted twice. Gaps
longer than 1.5 s are searched again for missed beats (peaks of half the usual QRS amplitude), and a
gap over 2 s in which a second lead shows beats is "lost", not analysable, rather than a pause.

Each beat becomes one network input of shape ``(3, 128)`` (float32):

- row 0, the beat: the band-passed lead from 0.25 s before to 0.456 s after the detection,
  resampled to 180 Hz and divided by the peak-to-peak amplitude of the chunk's median beat;
- row 1, the chunk's median beat over its beats that are not premature (the patient's dominant
  morphology over five minutes), scaled alike: the network compares the beat with it;
- row 2, in its first :data:`N_FEATURES` places (zeros after): the RR context (pre-RR, post-RR, the
  local average over 10 RR intervals, the average over ±150 s, their ratios, and the local RR
  irregularity), then how the beat's QRS compares with the median beat's (correlation, amplitude and
  area ratios, correlation over the whole window).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import signal as sps
from wfdb import processing

from prescreen.datasets.holter import Chunk, HolterRecord
from prescreen.models.holter_events import rolling_irregularity
from prescreen.models.holter_signal import bandpass, intervals_s, usable_mask, usable_runs
from prescreen.models.task import FloatArray, Progress

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

FS_NET = 180.0
BEFORE_S = 0.25
WINDOW = 128
BEFORE = round(BEFORE_S * FS_NET)
N_RR = 11
N_SHAPE = 4
N_FEATURES = N_RR + N_SHAPE
QRS_SLICE = slice(BEFORE - 10, BEFORE + 25)
"""The QRS part of the window (the detection sits about 35 ms before the R peak)."""
IRREGULARITY_BEATS = 32
TYPICAL_RATIO = 0.9
"""A beat whose pre-RR is at least this share of the local RR is not premature: it makes the median beat."""
MIN_TYPICAL = 8
CHANNELS = 3
CHUNK_S = 300.0
OVERLAP_S = 10.0
GC_EVERY_CHUNKS = 6
"""A full garbage collection (about 0.1 s) after this many chunks keeps the memory of long records flat."""
MAX_BEATS_PER_S = 3.5
"""The beat windows are preallocated for this rate (210 bpm on average); a faster record grows them."""
MIN_RUN_S = 5.0
"""Analysable stretches shorter than this are not searched for beats."""
SEARCH_GAP_S = 1.5
"""Gaps between detected beats longer than this are searched again for missed beats."""
SEARCH_HEIGHT = 0.5
MIN_BEATS_FOR_SEARCH = 8
PAUSE_CHECK_S = 2.0
"""Gaps longer than this (pause candidates) are checked on a second lead: beats there mean the primary
lead lost them, and the gap is not analysable rather than a pause."""
LOST_HEIGHT = 0.6
MIN_LOST_BEATS = 2
AFTER_BEAT_S = 0.45
BEFORE_BEAT_S = 0.25
MIN_RR_S = 0.2
"""Two detections closer than this are one beat (kept: the first)."""
LOCAL_BEATS = 10
LONG_WINDOW_S = 150.0
DEFAULT_RR_S = 0.8
RR_CLIP_S = (0.15, 4.0)
RATIO_CLIP = (0.0, 5.0)
RR_FEATURES = (
    "pre_rr_s",
    "post_rr_s",
    "local_rr_s",
    "long_rr_s",
    "pre/local",
    "post/local",
    "pre/long",
    "post/long",
    "local/long",
    "post/pre",
    "local_irregularity",
)
SHAPE_FEATURES = ("qrs_correlation", "qrs_amplitude_ratio", "qrs_area_ratio", "window_correlation")
INPUT_SPEC = {
    "kind": "ecg-beat",
    "detector": "GQRS (wfdb.processing.gqrs_detect) on the primary lead, chunks of 300 s with 10 s overlap",
    "leads": "MLII / II when present, else the first lead",
    "sampling_rate_hz": FS_NET,
    "window_samples": WINDOW,
    "window_s": [-BEFORE_S, round((WINDOW - BEFORE) / FS_NET, 3)],
    "filter": "Butterworth band-pass 0.5-40 Hz, order 2, zero phase",
    "normalisation": "divided by the peak-to-peak amplitude of the chunk's median beat",
    "rows": [
        "beat",
        "median of the 300 s chunk's beats that are not premature (pre-RR/local RR >= 0.9)",
        f"RR and shape features ({N_FEATURES}), zero-padded",
    ],
    "rr_features": list(RR_FEATURES),
    "shape_features": list(SHAPE_FEATURES),
    "tensor": f"float32 (batch, {CHANNELS}, {WINDOW})",
    "signal_quality": "10 s segments flat (<0.05 mV), stuck/saturated or missing are not analysed",
}


@dataclass
class ExtractedBeats:
    """The detected beats of a record and what the network needs of each.

    Attributes:
        fs: the record's sampling rate.
        lead: the name of the analysed lead.
        duration_s: the record's length.
        samples: each beat's record sample, ascending.
        morph: ``(n, WINDOW)`` each beat's normalised waveform (row 0).
        template_of: ``(n,)`` index of each beat's chunk template in ``templates``.
        templates: ``(chunks, WINDOW)`` each chunk's normalised median beat (row 1).
        rr: ``(n, N_RR)`` RR features (row 2).
        excluded: not-analysable (start_s, end_s) intervals, merged.
    """

    fs: float
    lead: str
    duration_s: float
    samples: IntArray
    morph: FloatArray
    template_of: IntArray
    templates: FloatArray
    rr: FloatArray
    excluded: list[tuple[float, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def times_s(self) -> npt.NDArray[np.float64]:
        return self.samples / self.fs

    @property
    def not_analysable_s(self) -> float:
        return float(sum(b - a for a, b in self.excluded))

    def inputs(self, start: int = 0, stop: int | None = None) -> FloatArray:
        """Network inputs ``(m, CHANNELS, WINDOW)`` of beats ``start:stop``."""
        part = slice(start, len(self) if stop is None else stop)
        return build_inputs(self.morph[part], self.templates[self.template_of[part]], self.rr[part])

    def inputs_at(self, index: IntArray) -> FloatArray:
        """Network inputs ``(len(index), CHANNELS, WINDOW)`` of the beats at ``index``."""
        return build_inputs(self.morph[index], self.templates[self.template_of[index]], self.rr[index])

    def batches(self, size: int = 1024) -> Iterator[FloatArray]:
        """The network inputs of all beats, ``size`` at a time."""
        for start in range(0, len(self), size):
            yield self.inputs(start, start + size)


def build_inputs(morph: FloatArray, templates: FloatArray, rr: FloatArray) -> FloatArray:
    """Stack beat, template and RR + shape features into network inputs ``(n, CHANNELS, WINDOW)``."""
    out = np.zeros((len(morph), CHANNELS, WINDOW), dtype=np.float32)
    out[:, 0] = morph
    out[:, 1] = templates
    out[:, 2, :N_RR] = rr
    out[:, 2, N_RR:N_FEATURES] = shape_features(morph, templates)
    return out


def _correlation(a: FloatArray, b: FloatArray) -> FloatArray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    out: FloatArray = np.where(den > 1e-9, (a * b).sum(axis=1) / np.maximum(den, 1e-9), 0.0).astype(np.float32)
    return out


def shape_features(morph: FloatArray, templates: FloatArray) -> FloatArray:
    """The :data:`SHAPE_FEATURES` of beats against their median beats, ``(n, N_SHAPE)``."""
    if len(morph) == 0:
        return np.zeros((0, N_SHAPE), dtype=np.float32)
    beat, ref = morph[:, QRS_SLICE], templates[:, QRS_SLICE]
    amp = np.ptp(beat, axis=1) / np.maximum(np.ptp(ref, axis=1), 1e-3)
    area = np.abs(beat - beat.mean(axis=1, keepdims=True)).sum(axis=1)
    ref_area = np.abs(ref - ref.mean(axis=1, keepdims=True)).sum(axis=1)
    cols = [
        _correlation(beat, ref),
        np.clip(amp, 0, 10),
        np.clip(area / np.maximum(ref_area, 1e-3), 0, 10),
        _correlation(morph, templates),
    ]
    return np.stack(cols, axis=1).astype(np.float32)


def detect_qrs(x: npt.NDArray[np.floating], fs: float) -> IntArray:
    """QRS positions (samples of ``x``) found by GQRS; none in a stretch it cannot read."""
    if len(x) < MIN_RUN_S * fs:
        return np.zeros(0, dtype=np.int64)
    clean = np.nan_to_num(np.asarray(x, dtype=np.float64))
    try:
        found = processing.gqrs_detect(sig=clean, fs=fs)
    except (ValueError, IndexError, ZeroDivisionError):  # a degenerate stretch (constant after ADC)
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.asarray(found, dtype=np.int64))


def beat_windows(filtered: FloatArray, positions: IntArray, fs: float) -> FloatArray:
    """Each beat's window from ``-BEFORE_S`` on, resampled to ``FS_NET`` (linear interpolation)."""
    if len(positions) == 0:
        return np.zeros((0, WINDOW), dtype=np.float32)
    offsets = (np.arange(WINDOW, dtype=np.float64) - BEFORE) * (fs / FS_NET)
    where = np.clip(positions[:, None] + offsets[None, :], 0, len(filtered) - 1)
    low = np.minimum(np.floor(where).astype(np.int64), len(filtered) - 2) if len(filtered) > 1 else where.astype(int)
    frac = (where - low).astype(np.float32)
    upper = np.minimum(low + 1, len(filtered) - 1)
    out: FloatArray = filtered[low] * (1 - frac) + filtered[upper] * frac
    return out.astype(np.float32)


def normalise(windows: FloatArray, typical: npt.NDArray[np.bool_] | None = None) -> tuple[FloatArray, FloatArray]:
    """Windows and their median beat, both divided by the median beat's peak-to-peak amplitude.

    Args:
        windows: the beats of one chunk.
        typical: beats to take the median of (not premature); all beats when fewer than
            :data:`MIN_TYPICAL` are.
    """
    if len(windows) == 0:
        return windows, np.zeros(WINDOW, dtype=np.float32)
    chosen = windows if typical is None or int(typical.sum()) < MIN_TYPICAL else windows[typical]
    template = np.median(chosen, axis=0).astype(np.float32)
    scale = max(float(np.ptp(template)), 0.05)
    return np.clip(windows / scale, -20, 20).astype(np.float32), (template / scale).astype(np.float32)


def rr_intervals(
    times: npt.NDArray[np.float64], excluded: list[tuple[float, float]]
) -> tuple[npt.NDArray[np.float64], BoolArray]:
    """RR interval ending at each beat (``rr[0]`` is undefined) and whether it is valid: an interval
    that spans a not-analysable stretch is not."""
    rr = np.diff(times, prepend=np.nan)
    valid = np.isfinite(rr)
    if excluded:
        lows, highs = (np.array(v, dtype=np.float64) for v in zip(*sorted(excluded), strict=True))
        before = np.roll(times, 1)
        nxt = np.searchsorted(highs, before, side="right")  # the first excluded stretch ending after the last beat
        crosses = (nxt < len(lows)) & (lows[np.minimum(nxt, len(lows) - 1)] < times)
        valid &= ~crosses
    valid[:1] = False
    return rr, valid


def _window_mean(
    values: npt.NDArray[np.float64], valid: BoolArray, lo: IntArray, hi: IntArray
) -> npt.NDArray[np.float64]:
    """Mean of the valid ``values[lo:hi]`` per row (NaN where none is valid)."""
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def rr_features(times: npt.NDArray[np.float64], excluded: list[tuple[float, float]] | None = None) -> FloatArray:
    """The :data:`RR_FEATURES` of each beat, ``(n, N_RR)`` float32.

    Args:
        times: beat times in seconds, ascending.
        excluded: not-analysable (start_s, end_s) intervals; RR intervals across them are not used.
    """
    n = len(times)
    if n == 0:
        return np.zeros((0, N_RR), dtype=np.float32)
    rr, valid = rr_intervals(times, excluded or [])
    idx = np.arange(n)
    long = _window_mean(
        rr, valid, np.searchsorted(times, times - LONG_WINDOW_S), np.searchsorted(times, times + LONG_WINDOW_S)
    )
    long = np.where(np.isfinite(long), long, DEFAULT_RR_S)
    half = LOCAL_BEATS // 2
    local = _window_mean(rr, valid, np.clip(idx - half + 1, 0, n), np.clip(idx + half + 1, 0, n))
    local = np.where(np.isfinite(local), local, long)
    pre = np.where(valid, rr, local)
    post_valid = np.append(valid[1:], False)
    post = np.where(post_valid, np.append(rr[1:], np.nan), local)
    pre, post, local, long = (np.clip(v, *RR_CLIP_S) for v in (pre, post, local, long))
    ratios = [pre / local, post / local, pre / long, post / long, local / long, post / pre]
    cols = [pre, post, local, long, *(np.clip(r, *RATIO_CLIP) for r in ratios), local_irregularity(rr, valid)]
    return np.stack(cols, axis=1).astype(np.float32)


def local_irregularity(rr: npt.NDArray[np.float64], valid: BoolArray) -> npt.NDArray[np.float64]:
    """Per beat: median |successive RR difference| / median RR over the valid intervals of the
    :data:`IRREGULARITY_BEATS` beats around it (0 where fewer than 4)."""
    n = len(rr)
    idx = np.flatnonzero(valid)
    x = rr[idx]
    out = np.zeros(n)
    if len(x) < 4:
        return out
    w = min(IRREGULARITY_BEATS, len(x))
    score = rolling_irregularity(x, w)
    centre = np.clip(np.searchsorted(idx, np.arange(n)) - w // 2, 0, len(score) - 1)
    out = score[centre]
    return np.clip(out, 0, 2)


@dataclass
class _ChunkBeats:
    samples: IntArray
    windows: FloatArray
    unusable: list[int]
    lost: list[tuple[float, float]] = field(default_factory=list)


def _chunk_beats(chunk: Chunk, fs: float, owned: set[int]) -> _ChunkBeats:
    """Detect and cut the beats a chunk owns; report the not-analysable segments it owns first."""
    x = chunk.signal[0]
    index, usable = usable_mask(x, fs, chunk.start)
    unusable = [int(k) for k, ok in zip(index.tolist(), usable.tolist(), strict=True) if not ok and k not in owned]
    owned.update(int(k) for k in index.tolist())
    filtered = bandpass(x, fs)
    found: list[IntArray] = []
    for lo, hi in usable_runs(index, usable, fs, chunk.start, chunk.stop):
        part = filtered[lo - chunk.start : hi - chunk.start]
        found.append(search_back(part, detect_qrs(x[lo - chunk.start : hi - chunk.start], fs), fs) + lo)
    samples = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    lost: list[tuple[float, float]] = []
    if chunk.signal.shape[0] > 1:
        gaps = lost_gaps(samples - chunk.start, bandpass(chunk.signal[1], fs), fs)
        lost = [
            ((a + chunk.start) / fs, (b + chunk.start) / fs)
            for a, b in gaps
            if chunk.keep_start <= a + chunk.start < chunk.keep_stop
        ]
    samples = samples[(samples >= chunk.keep_start) & (samples < chunk.keep_stop)]
    windows = beat_windows(filtered, samples - chunk.start, fs)
    return _ChunkBeats(samples, windows, unusable, lost)


def _qrs_peaks(magnitude: FloatArray, beats: IntArray, fs: float) -> IntArray:
    """The largest |sample| within ±60 ms of each beat."""
    half = round(0.06 * fs)
    starts = np.clip(beats - half, 0, max(0, len(magnitude) - 1))
    return np.array([int(np.argmax(magnitude[a : a + 2 * half + 1])) + a for a in starts.tolist()], dtype=np.int64)


def lost_gaps(beats: IntArray, other: FloatArray, fs: float) -> list[tuple[int, int]]:
    """Gaps where the primary lead lost beats that another lead shows.

    A gap longer than :data:`PAUSE_CHECK_S` between beats of the primary lead, in which the other lead
    (band-passed) has at least :data:`MIN_LOST_BEATS` QRS-like peaks (at least :data:`LOST_HEIGHT` of its
    median QRS amplitude, past the T wave of the beat before and before the P wave of the beat after),
    is no pause but a stretch the primary lead cannot be read in.

    Returns:
        (start, stop) samples just inside each such gap.
    """
    if len(beats) < MIN_BEATS_FOR_SEARCH:
        return []
    magnitude = np.abs(other)
    height = LOST_HEIGHT * float(np.median(magnitude[_qrs_peaks(magnitude, beats, fs)]))
    spacing, margin = round(0.3 * fs), round(0.1 * fs)
    out: list[tuple[int, int]] = []
    for before, after in zip(beats[:-1].tolist(), beats[1:].tolist(), strict=True):
        if after - before <= PAUSE_CHECK_S * fs or after - before <= 2 * spacing:
            continue
        lo, hi = before + round(AFTER_BEAT_S * fs), after - round(BEFORE_BEAT_S * fs)
        if hi <= lo:
            continue
        peaks, _ = sps.find_peaks(magnitude[lo:hi], height=height, distance=spacing)
        if len(peaks) >= MIN_LOST_BEATS:
            out.append((before + margin, after - margin))
    return out


def search_back(filtered: FloatArray, found: IntArray, fs: float) -> IntArray:
    """Add the beats a detector missed in long gaps (> :data:`SEARCH_GAP_S`): peaks of the band-passed
    lead reaching :data:`SEARCH_HEIGHT` of the median QRS amplitude, at least 0.3 s from the beats
    around them and from each other (the search-back of Pan and Tompkins)."""
    if len(found) < MIN_BEATS_FOR_SEARCH:
        return found
    magnitude = np.abs(filtered)
    peaks = _qrs_peaks(magnitude, found, fs)
    height = SEARCH_HEIGHT * float(np.median(magnitude[peaks]))
    shift = int(np.median(found - peaks))
    spacing = round(0.3 * fs)
    added: list[int] = []
    for before, after in zip(peaks[:-1].tolist(), peaks[1:].tolist(), strict=True):
        if after - before <= SEARCH_GAP_S * fs:
            continue
        lo, hi = before + spacing, after - spacing
        if hi <= lo:
            continue
        candidates, _ = sps.find_peaks(magnitude[lo:hi], height=height, distance=spacing)
        added.extend(int(c) + lo + shift for c in candidates)
    if not added:
        return found
    return np.unique(np.concatenate([found, np.clip(np.asarray(added, dtype=np.int64), 0, len(filtered) - 1)]))


def merge_intervals(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, with overlapping or touching intervals merged."""
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1e-9:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def dedupe(samples: IntArray, fs: float, last: float = -np.inf) -> BoolArray:
    """Keep-mask of beats: a detection within :data:`MIN_RR_S` after the previous kept one (at first
    ``last``, the last beat kept before these) is a duplicate."""
    keep = np.ones(len(samples), dtype=bool)
    for i, s in enumerate(samples.tolist()):
        if s - last < MIN_RR_S * fs:
            keep[i] = False
        else:
            last = s
    return keep


class _WindowStore:
    """The beat windows of a record in one preallocated array (untouched pages cost no memory), so that
    a 24-hour record's ~100,000 windows are neither kept in pieces nor copied whole to join them."""

    def __init__(self, capacity: int) -> None:
        self._buffer = np.empty((max(1, capacity), WINDOW), dtype=np.float32)
        self._filled = 0

    def add(self, windows: FloatArray) -> None:
        end = self._filled + len(windows)
        if end > len(self._buffer):
            grown = np.empty((max(end, 2 * len(self._buffer)), WINDOW), dtype=np.float32)
            grown[: self._filled] = self._buffer[: self._filled]
            self._buffer = grown
        self._buffer[self._filled : end] = windows
        self._filled = end

    @property
    def windows(self) -> FloatArray:
        return self._buffer[: self._filled]


def extract_beats(record: HolterRecord, progress: Progress | None = None, share: float = 1.0) -> ExtractedBeats:
    """Detect every beat of a record chunk by chunk and build its network input.

    Args:
        record: the record.
        progress: called with the fraction done (times ``share``) after each chunk.
        share: the part of the whole analysis this step is, for ``progress``.
    """
    lead = record.primary_lead
    fs = record.fs
    store = _WindowStore(int(record.duration_s * MAX_BEATS_PER_S) + 1024)
    samples: list[IntArray] = []
    chunk_of: list[IntArray] = []
    unusable: list[int] = []
    lost: list[tuple[float, float]] = []
    owned: set[int] = set()
    last = -np.inf
    leads = [lead, *[i for i in range(record.n_leads) if i != lead][:1]]
    for k, chunk in enumerate(record.chunks(CHUNK_S, OVERLAP_S, leads)):
        part = _chunk_beats(chunk, fs, owned)
        keep = dedupe(part.samples, fs, last)
        samples.append(part.samples[keep])
        store.add(part.windows[keep])
        chunk_of.append(np.full(int(keep.sum()), k, dtype=np.int64))
        last = float(samples[-1][-1]) if len(samples[-1]) else last
        unusable.extend(part.unusable)
        lost.extend(part.lost)
        if k % GC_EVERY_CHUNKS == GC_EVERY_CHUNKS - 1:
            gc.collect()  # GQRS keeps its peaks in a ring (a reference cycle): free them while going
        if progress is not None:
            progress(share * chunk.keep_stop / record.n_samples)
    all_samples = np.concatenate(samples)
    excluded = merge_intervals(intervals_s(unusable, fs, record.n_samples) + lost)
    rr = rr_features(all_samples / fs, excluded)
    morph, template_of = store.windows, np.concatenate(chunk_of)
    templates = normalise_chunks(morph, template_of, rr, len(samples))
    return ExtractedBeats(
        fs=fs,
        lead=record.lead_names[lead],
        duration_s=record.duration_s,
        samples=all_samples,
        morph=morph,
        template_of=template_of,
        templates=templates,
        rr=rr,
        excluded=excluded,
    )


def normalise_chunks(morph: FloatArray, chunk_of: IntArray, rr: FloatArray, n_chunks: int) -> FloatArray:
    """Normalise each chunk's beats in place (:func:`normalise`) and return the chunks' median beats;
    a chunk's median beat is taken over its beats that are not premature (pre-RR / local RR >=
    :data:`TYPICAL_RATIO`), so that frequent ectopic beats (bigeminy) do not blur it."""
    templates = np.zeros((n_chunks, WINDOW), dtype=np.float32)
    order = np.argsort(chunk_of, kind="stable")
    bounds = np.searchsorted(chunk_of[order], np.arange(n_chunks + 1))
    for k in range(n_chunks):
        idx = order[bounds[k] : bounds[k + 1]]
        if len(idx) == 0:
            continue
        typical = rr[idx, RR_FEATURES.index("pre/local")] >= TYPICAL_RATIO
        morph[idx], templates[k] = normalise(morph[idx], typical)
    return templates
