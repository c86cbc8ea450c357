"""Events, summary and flag rule of a Holter recording, from its beat sequence alone.

Pure functions on arrays (beat times in seconds, AAMI class indices), used alike on the beats a model
found and on the reference annotations, so that detected and reference events are derived the same way:

- ventricular couplets (2 consecutive V) and runs (>= 3 V: NSVT; >= 30 s: sustained VT);
- supraventricular couplets and runs (>= 3 S: SVT run);
- pauses (RR > 2.0 s; > 3.0 s is flagged), never across a not-analysable stretch;
- AF episodes: stretches where the RR irregularity (median |successive RR difference| / median RR
  over a centred window of 40 intervals between N or S beats) reaches 0.10, for at least 30 s;
- heart rate over 1-minute windows, class counts and burdens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from prescreen.datasets.holter import BEAT_CLASSES, BeatClass

F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

N_, S_, V_ = (BEAT_CLASSES.index(c) for c in (BeatClass.N, BeatClass.S, BeatClass.V))

MAX_EVENTS = 100
STRIP_S = 10.0
HR_WINDOW_S = 60.0
HR_MIN_COVERED_S = 30.0


class EventKind(StrEnum):
    """What an event is."""

    VT = "vt"
    NSVT = "nsvt"
    V_COUPLET = "v-couplet"
    SVT = "svt"
    S_COUPLET = "s-couplet"
    PAUSE = "pause"
    AF = "af"
    NOT_ANALYSABLE = "not-analysable"


V_RUN_KINDS = (EventKind.VT, EventKind.NSVT)
_RANK = {
    EventKind.VT: 0,
    EventKind.NSVT: 1,
    EventKind.PAUSE: 2,
    EventKind.AF: 3,
    EventKind.SVT: 4,
    EventKind.V_COUPLET: 5,
    EventKind.S_COUPLET: 6,
    EventKind.NOT_ANALYSABLE: 7,
}


class HolterLabel(StrEnum):
    """A record's label: its most severe flagged finding, or normal."""

    NSVT = "nsvt"
    PAUSE = "pause"
    AF = "af"
    V_BURDEN = "v-burden"
    NORMAL = "normal"


@dataclass(frozen=True)
class Limits:
    """The thresholds of events and of the flag rule."""

    v_run_beats: int = 3
    sustained_s: float = 30.0
    pause_s: float = 2.0
    long_pause_s: float = 3.0
    v_burden_pct: float = 10.0
    af_window: int = 40
    af_irregularity: float = 0.10
    af_min_s: float = 30.0
    af_merge_gap_s: float = 5.0


LIMITS = Limits()

FLAG_RULE = (
    "Flagged when any of: a ventricular run of 3 or more consecutive V beats (NSVT, or sustained VT); a pause "
    "(RR interval) longer than 3.0 s; atrial fibrillation for any time (AF burden > 0 min, episodes of at least "
    "30 s; not counted when the patient is known to have AF); a ventricular ectopic (V) burden above 10 % of "
    "beats. Score = min(1, max over the rules of value / limit): longest V run / 3 beats, longest pause / 3.0 s, "
    "V burden / 10 %, AF present = 1; the threshold 1.0 is the rule, 0.5 (safety) flags half of any limit. "
    "The label is the most severe finding: nsvt, pause, af, v-burden, else normal."
)


@dataclass(frozen=True)
class BeatSequence:
    """The beats of a record, as found or as annotated.

    Attributes:
        times: beat times in seconds, ascending.
        classes: index into ``BEAT_CLASSES`` per beat.
        duration_s: the record's length.
        excluded: not-analysable (start_s, end_s) stretches; no RR interval across them is used.
    """

    times: F64
    classes: IntArray
    duration_s: float
    excluded: Sequence[tuple[float, float]] = ()

    def __post_init__(self) -> None:
        if len(self.times) != len(self.classes):
            raise ValueError(f"{len(self.times)} beat times but {len(self.classes)} classes")

    @property
    def rr(self) -> tuple[F64, BoolArray]:
        """The RR interval ending at each beat and whether it is valid (not the first, not across an
        excluded stretch)."""
        times = np.asarray(self.times, dtype=np.float64)
        rr = np.diff(times, prepend=np.nan)
        valid = np.isfinite(rr)
        if self.excluded:
            lows, highs = (np.array(v, dtype=np.float64) for v in zip(*sorted(self.excluded), strict=True))
            before = np.roll(times, 1)
            nxt = np.searchsorted(highs, before, side="right")
            valid &= ~((nxt < len(lows)) & (lows[np.minimum(nxt, len(lows) - 1)] < times))
        if len(valid):
            valid[0] = False
        return rr, valid

    @property
    def analysed_s(self) -> float:
        return max(0.0, self.duration_s - sum(b - a for a, b in self.excluded))


@dataclass(frozen=True)
class Event:
    """One event of a recording.

    Attributes:
        kind: what it is.
        start_s: its first beat (a pause: the beat before it).
        end_s: its last beat (a pause: the beat after it).
        beats: how many beats it spans.
        detail: what it is, in English.
        flagged: whether it alone meets the flag rule.
        size: its magnitude within its kind (beats, seconds), for ordering.
    """

    kind: EventKind
    start_s: float
    end_s: float
    beats: int
    detail: str
    flagged: bool
    size: float = 0.0

    @property
    def order(self) -> tuple[int, int, float, float]:
        """Sort key: flagged first, then by kind's severity, then larger, then earlier."""
        return (0 if self.flagged else 1, _RANK[self.kind], -self.size, self.start_s)


def clock(seconds: float) -> str:
    """Seconds from the start as ``hh:mm:ss``."""
    s = max(0, round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def class_runs(classes: IntArray, target: int) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges of consecutive beats of class ``target``."""
    hit = np.concatenate([[0], (np.asarray(classes) == target).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(hit))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _rate(times: F64, start: int, stop: int) -> float:
    span = float(times[stop - 1] - times[start]) if stop - start > 1 else 0.0
    return 60.0 * (stop - start - 1) / span if span > 0 else 0.0


def ectopic_events(seq: BeatSequence, target: BeatClass, limits: Limits = LIMITS) -> list[Event]:
    """Couplets and runs of V (NSVT, VT; flagged) or S (SVT runs; not flagged) beats."""
    code = BEAT_CLASSES.index(target)
    ventricular = target == BeatClass.V
    events = []
    for start, stop in class_runs(seq.classes, code):
        n = stop - start
        if n < 2:
            continue
        t0, t1 = float(seq.times[start]), float(seq.times[stop - 1])
        rate = _rate(seq.times, start, stop)
        if n == 2:
            kind = EventKind.V_COUPLET if ventricular else EventKind.S_COUPLET
            detail = f"{target.value} couplet at {clock(t0)}"
        elif ventricular:
            kind = EventKind.VT if t1 - t0 >= limits.sustained_s else EventKind.NSVT
            what = "sustained VT" if kind == EventKind.VT else "V run"
            detail = f"{what} of {n} beats at {rate:.0f} bpm at {clock(t0)}"
        else:
            kind = EventKind.SVT
            detail = f"S run of {n} beats at {rate:.0f} bpm at {clock(t0)}"
        flagged = ventricular and n >= limits.v_run_beats
        events.append(Event(kind, t0, t1, n, detail, flagged, float(n)))
    return events


def pause_events(seq: BeatSequence, limits: Limits = LIMITS) -> list[Event]:
    """RR intervals longer than ``pause_s``; flagged beyond ``long_pause_s``."""
    rr, valid = seq.rr
    events = []
    for i in np.flatnonzero(valid & (rr > limits.pause_s)).tolist():
        t0, t1, length = float(seq.times[i - 1]), float(seq.times[i]), float(rr[i])
        flagged = length > limits.long_pause_s
        detail = f"pause of {length:.1f} s at {clock(t0)}"
        events.append(Event(EventKind.PAUSE, t0, t1, 2, detail, flagged, length))
    return events


def rolling_irregularity(x: F64, size: int, block: int = 8192) -> F64:
    """median |successive difference| / median of every window of ``size`` consecutive values of ``x``
    (``len(x) - size + 1`` windows), computed ``block`` windows at a time to bound the memory."""
    views = sliding_window_view(np.asarray(x, dtype=np.float64), size)
    out = np.empty(len(views))
    for start in range(0, len(views), block):
        part = views[start : start + block]
        out[start : start + len(part)] = np.median(np.abs(np.diff(part, axis=1)), axis=1) / np.median(part, axis=1)
    return out


def rr_irregularity(seq: BeatSequence, limits: Limits = LIMITS) -> tuple[F64, F64]:
    """RR irregularity per interval between two N beats: median |successive difference| /
    median RR over a centred window of ``af_window`` such intervals.

    Returns:
        the end time of each such interval and its irregularity.
    """
    rr, valid = seq.rr
    normal = np.asarray(seq.classes) == N_
    usable = valid & normal & np.roll(normal, 1)
    x, ends = rr[usable], np.asarray(seq.times, dtype=np.float64)[usable]
    w = limits.af_window
    if len(x) < w + 1:
        return ends, np.zeros(len(x))
    score = rolling_irregularity(x, w + 1)
    half = w // 2
    full = np.concatenate([np.full(half, score[0]), score, np.full(len(x) - len(score) - half, score[-1])])
    return ends, full


def af_spans(seq: BeatSequence, limits: Limits = LIMITS) -> list[tuple[float, float]]:
    """AF episodes as (start_s, end_s): irregular stretches, merged across gaps up to
    ``af_merge_gap_s``, of at least ``af_min_s``."""
    ends, score = rr_irregularity(seq, limits)
    irregular = score >= limits.af_irregularity
    spans: list[tuple[float, float]] = []
    for start, stop in class_runs(irregular.astype(np.int64), 1):
        lo = float(ends[start - 1]) if start > 0 else float(ends[start])
        hi = float(ends[stop - 1])
        if spans and lo - spans[-1][1] <= limits.af_merge_gap_s:
            spans[-1] = (spans[-1][0], hi)
        else:
            spans.append((lo, hi))
    return [s for s in spans if s[1] - s[0] >= limits.af_min_s]


def relabel_in_af(seq: BeatSequence, limits: Limits = LIMITS) -> IntArray:
    """The classes with S beats inside AF episodes made N: in AF every conducted beat is irregular, and
    the AAMI convention (MIT-BIH) labels these beats N, not supraventricular ectopic."""
    classes = np.asarray(seq.classes, dtype=np.int64).copy()
    times = np.asarray(seq.times)
    for lo, hi in af_spans(seq, limits):
        inside = (times >= lo) & (times <= hi) & (classes == S_)
        classes[inside] = N_
    return classes


def af_events(seq: BeatSequence, spans: list[tuple[float, float]], known_af: bool = False) -> list[Event]:
    """AF episodes as events; flagged unless the patient is known to have AF."""
    times = np.asarray(seq.times)
    events = []
    for lo, hi in spans:
        beats = int(np.count_nonzero((times >= lo) & (times <= hi)))
        detail = f"atrial fibrillation for {(hi - lo) / 60:.1f} min from {clock(lo)}"
        events.append(Event(EventKind.AF, lo, hi, beats, detail, not known_af, hi - lo))
    return events


def noise_events(seq: BeatSequence) -> list[Event]:
    """Not-analysable stretches as events (never flagged)."""
    return [
        Event(
            EventKind.NOT_ANALYSABLE,
            a,
            b,
            0,
            f"not analysable (lead flat, saturated or lost) for {(b - a) / 60:.1f} min from {clock(a)}",
            False,
            b - a,
        )
        for a, b in seq.excluded
    ]


def heart_rate(seq: BeatSequence) -> dict[str, Any]:
    """Mean heart rate, and the lowest and highest 1-minute rates with their window start."""
    rr, valid = seq.rr
    x, ends = rr[valid], np.asarray(seq.times)[valid]
    if len(x) == 0:
        return {"min": {"bpm": 0.0, "at_s": 0.0}, "mean": 0.0, "max": {"bpm": 0.0, "at_s": 0.0}}
    window = np.floor(ends / HR_WINDOW_S).astype(np.int64)
    sums = np.bincount(window, weights=x)
    counts = np.bincount(window)
    full = np.flatnonzero(sums >= HR_MIN_COVERED_S)
    mean = 60.0 * len(x) / float(x.sum())
    if len(full) == 0:
        return {
            "min": {"bpm": round(mean, 1), "at_s": 0.0},
            "mean": round(mean, 1),
            "max": {"bpm": round(mean, 1), "at_s": 0.0},
        }
    bpm = 60.0 * counts[full] / sums[full]
    low, high = int(np.argmin(bpm)), int(np.argmax(bpm))
    return {
        "min": {"bpm": round(float(bpm[low]), 1), "at_s": float(full[low] * HR_WINDOW_S)},
        "mean": round(mean, 1),
        "max": {"bpm": round(float(bpm[high]), 1), "at_s": float(full[high] * HR_WINDOW_S)},
    }


def all_events(
    seq: BeatSequence,
    known_af: bool = False,
    spans: list[tuple[float, float]] | None = None,
    limits: Limits = LIMITS,
) -> list[Event]:
    """Every event of a recording, most severe first.

    Args:
        seq: the beats.
        known_af: the patient is known to have AF (AF is then reported, not flagged).
        spans: AF episodes given (the reference's rhythm notes); default: found from the RR irregularity.
        limits: event thresholds.
    """
    found = af_spans(seq, limits) if spans is None else [s for s in spans if s[1] - s[0] >= limits.af_min_s]
    events = [
        *ectopic_events(seq, BeatClass.V, limits),
        *ectopic_events(seq, BeatClass.S, limits),
        *pause_events(seq, limits),
        *af_events(seq, found, known_af),
        *noise_events(seq),
    ]
    return sorted(events, key=lambda e: e.order)


@dataclass(frozen=True)
class Verdict:
    """The flag rule applied: the score, the label and why."""

    score: float
    label: HolterLabel
    reasons: list[str] = field(default_factory=list)
    components: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return self.score >= 1.0


def _component(value: float, limit: float, reached: bool) -> float:
    """value / limit, 1 exactly when the rule is met (``reached``), else kept below 1."""
    if reached:
        return 1.0
    return float(min(value / limit, 0.999999)) if limit > 0 else 0.0


def verdict(seq: BeatSequence, events: list[Event], known_af: bool = False, limits: Limits = LIMITS) -> Verdict:
    """The flag rule (:data:`FLAG_RULE`) on a recording's beats and events."""
    longest_v = max((stop - start for start, stop in class_runs(seq.classes, V_)), default=0)
    pauses = [e.size for e in events if e.kind == EventKind.PAUSE]
    longest_pause = max(pauses, default=0.0)
    af_s = sum(e.size for e in events if e.kind == EventKind.AF)
    v_pct = burden(seq.classes, V_)
    components = {
        HolterLabel.NSVT.value: _component(longest_v, limits.v_run_beats, longest_v >= limits.v_run_beats),
        HolterLabel.PAUSE.value: _component(longest_pause, limits.long_pause_s, longest_pause > limits.long_pause_s),
        HolterLabel.AF.value: 1.0 if af_s > 0 and not known_af else 0.0,
        HolterLabel.V_BURDEN.value: _component(v_pct, limits.v_burden_pct, v_pct > limits.v_burden_pct),
    }
    met = [HolterLabel(k) for k, v in components.items() if v >= 1.0]
    label = met[0] if met else HolterLabel.NORMAL
    reasons = [_reason(k, events, v_pct, af_s) for k in met]
    return Verdict(max(components.values()), label, reasons, components)


def _reason(label: HolterLabel, events: list[Event], v_pct: float, af_s: float) -> str:
    if label == HolterLabel.NSVT:
        runs = [e for e in events if e.kind in V_RUN_KINDS]
        top = max(runs, key=lambda e: e.size)
        return f"NSVT: {len(runs)} ventricular run(s) of 3 or more beats; longest: {top.detail}"
    if label == HolterLabel.PAUSE:
        long = [e for e in events if e.kind == EventKind.PAUSE and e.flagged]
        top = max(long, key=lambda e: e.size)
        return f"{len(long)} pause(s) longer than 3.0 s; longest: {top.detail}"
    if label == HolterLabel.AF:
        episodes = sorted((e for e in events if e.kind == EventKind.AF), key=lambda e: e.start_s)
        return (
            f"atrial fibrillation for {af_s / 60:.1f} min in {len(episodes)} episode(s), first at "
            f"{clock(episodes[0].start_s)}"
        )
    return f"ventricular ectopic burden {v_pct:.1f} % of beats (limit 10 %)"


def burden(classes: IntArray, code: int) -> float:
    """The share of beats of one class, in percent (0 without beats)."""
    n = len(classes)
    return 100.0 * int(np.count_nonzero(np.asarray(classes) == code)) / n if n else 0.0


def strip(seq: BeatSequence, event: Event) -> dict[str, Any]:
    """The 10 s around an event (from 2 s before a longer one) with its beats' labels, for drawing."""
    length = event.end_s - event.start_s
    lo = event.start_s - 2.0 if length > STRIP_S - 2 else (event.start_s + event.end_s) / 2 - STRIP_S / 2
    lo = min(max(0.0, lo), max(0.0, seq.duration_s - STRIP_S))
    hi = min(seq.duration_s, lo + STRIP_S)
    times = np.asarray(seq.times)
    inside = np.flatnonzero((times >= lo) & (times <= hi))
    beats = [[round(float(times[i]), 3), BEAT_CLASSES[int(seq.classes[i])].value] for i in inside]
    return {"start_s": round(lo, 3), "end_s": round(hi, 3), "beats": beats}


def event_json(seq: BeatSequence, event: Event) -> dict[str, Any]:
    """An event as the summary lists it."""
    return {
        "kind": event.kind.value,
        "start_s": round(event.start_s, 3),
        "end_s": round(event.end_s, 3),
        "beats": event.beats,
        "detail": event.detail,
        "flagged": event.flagged,
        "strip": strip(seq, event),
    }


def counts(events: list[Event]) -> dict[str, int]:
    """How many events of each kind (``pauses`` counts every pause, ``long_pauses`` those flagged)."""

    def n(*kinds: EventKind, flagged: bool | None = None) -> int:
        return sum(1 for e in events if e.kind in kinds and (flagged is None or e.flagged == flagged))

    return {
        "v_couplets": n(EventKind.V_COUPLET),
        "v_runs": n(EventKind.NSVT, EventKind.VT),
        "nsvt": n(EventKind.NSVT),
        "s_couplets": n(EventKind.S_COUPLET),
        "s_runs": n(EventKind.SVT),
        "pauses": n(EventKind.PAUSE),
        "long_pauses": n(EventKind.PAUSE, flagged=True),
        "af_episodes": n(EventKind.AF),
    }


@dataclass(frozen=True)
class HolterSummary:
    """The events, verdict and JSON summary of one recording."""

    events: list[Event]
    verdict: Verdict
    summary: dict[str, Any]


def summarise(
    seq: BeatSequence,
    *,
    lead: str = "",
    fs: float = 0.0,
    known_af: bool = False,
    spans: list[tuple[float, float]] | None = None,
    limits: Limits = LIMITS,
    max_events: int = MAX_EVENTS,
) -> HolterSummary:
    """Events, flag verdict and the JSON summary of a recording (see the ``holter`` task).

    Args:
        seq: the beats.
        lead: the analysed lead's name.
        fs: the sampling rate.
        known_af: the patient is known to have AF.
        spans: AF episodes given (reference rhythm notes) instead of found.
        limits: event and rule thresholds.
        max_events: the most events listed (flagged first, then by severity); all are counted.
    """
    events = all_events(seq, known_af, spans, limits)
    judged = verdict(seq, events, known_af, limits)
    af_s = sum(e.size for e in events if e.kind == EventKind.AF)
    analysed = seq.analysed_s
    summary = {
        "duration_s": round(seq.duration_s, 3),
        "analysed_s": round(analysed, 3),
        "not_analysable_s": round(seq.duration_s - analysed, 3),
        "lead": lead,
        "fs": float(fs),
        "beats": {c.value: int(np.count_nonzero(np.asarray(seq.classes) == i)) for i, c in enumerate(BEAT_CLASSES)},
        "heart_rate": heart_rate(seq),
        "burden": {
            "S": round(burden(seq.classes, S_), 3),
            "V": round(burden(seq.classes, V_), 3),
            "af": round(100.0 * af_s / analysed, 3) if analysed > 0 else 0.0,
        },
        "af_minutes": round(af_s / 60.0, 3),
        "counts": counts(events),
        "events": [event_json(seq, e) for e in events[:max_events]],
        "events_total": len(events),
        "flag_reasons": judged.reasons,
        "flag_rule": FLAG_RULE,
    }
    return HolterSummary(events, judged, summary)
