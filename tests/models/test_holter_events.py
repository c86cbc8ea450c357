"""Holter events, summary and flag rule: pure functions on synthetic beat sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.datasets.holter import BEAT_CLASSES
from prescreen.models.holter_events import (
    FLAG_RULE,
    MAX_EVENTS,
    BeatSequence,
    EventKind,
    HolterLabel,
    af_spans,
    class_runs,
    clock,
    heart_rate,
    relabel_in_af,
    summarise,
)

CODE = {c.value: i for i, c in enumerate(BEAT_CLASSES)}


def beats(rr: list[float], labels: str, excluded: tuple[tuple[float, float], ...] = ()) -> BeatSequence:
    """A sequence whose first beat is at 1 s, then one beat after each RR interval."""
    assert len(labels) == len(rr) + 1
    times = 1.0 + np.concatenate([[0.0], np.cumsum(rr)])
    classes = np.array([CODE[c] for c in labels], dtype=np.int64)
    return BeatSequence(times, classes, float(times[-1] + 1.0), excluded)


def sinus(n: int, rr: float = 0.8) -> tuple[list[float], str]:
    return [rr] * (n - 1), "N" * n


def with_labels(labels: str, at: int, inserted: str) -> str:
    return labels[:at] + inserted + labels[at + len(inserted) :]


def irregular(n: int, seed: int = 0) -> list[float]:
    return list(np.random.default_rng(seed).uniform(0.4, 1.2, n))


RR, N_LABELS = sinus(300)

CASES = [
    # (name, rr, labels, expected label, flagged, expected event kinds)
    ("regular sinus rhythm", RR, N_LABELS, HolterLabel.NORMAL, False, set()),
    ("a run of 3 V is NSVT", RR, with_labels(N_LABELS, 100, "VVV"), HolterLabel.NSVT, True, {EventKind.NSVT}),
    (
        "a V couplet is not flagged",
        RR,
        with_labels(N_LABELS, 100, "VV"),
        HolterLabel.NORMAL,
        False,
        {EventKind.V_COUPLET},
    ),
    (
        "an S run of 4 is an SVT run, not flagged",
        RR,
        with_labels(N_LABELS, 50, "SSSS"),
        HolterLabel.NORMAL,
        False,
        {EventKind.SVT},
    ),
    ("an S couplet", RR, with_labels(N_LABELS, 50, "SS"), HolterLabel.NORMAL, False, {EventKind.S_COUPLET}),
    ("RR 3.2 s is a long pause", [*RR[:150], 3.2, *RR[151:]], N_LABELS, HolterLabel.PAUSE, True, {EventKind.PAUSE}),
    (
        "RR 2.5 s is a pause, not flagged",
        [*RR[:150], 2.5, *RR[151:]],
        N_LABELS,
        HolterLabel.NORMAL,
        False,
        {EventKind.PAUSE},
    ),
    (
        "V burden 12.5 % flags",
        RR,
        "".join("V" if i % 8 == 3 else "N" for i in range(300)),
        HolterLabel.V_BURDEN,
        True,
        set(),
    ),
    (
        "V burden exactly 10 % does not flag",
        RR,
        "".join("V" if i % 10 == 3 else "N" for i in range(300)),
        HolterLabel.NORMAL,
        False,
        set(),
    ),
    (
        "NSVT outranks a long pause",
        [*RR[:150], 3.5, *RR[151:]],
        with_labels(N_LABELS, 40, "VVVV"),
        HolterLabel.NSVT,
        True,
        {EventKind.NSVT, EventKind.PAUSE},
    ),
    (
        "irregular RR for minutes is AF",
        RR[:60] + irregular(240) + RR[:59],
        "N" * 360,
        HolterLabel.AF,
        True,
        {EventKind.AF},
    ),
]


@pytest.mark.parametrize(("name", "rr", "labels", "label", "flagged", "kinds"), CASES, ids=[c[0] for c in CASES])
def test_flag_rule_cases(
    name: str, rr: list[float], labels: str, label: HolterLabel, flagged: bool, kinds: set[EventKind]
) -> None:
    found = summarise(beats(rr, labels))
    assert found.verdict.label == label, name
    assert found.verdict.flagged is flagged
    assert (found.verdict.score >= 1.0) is flagged
    assert {e.kind for e in found.events} == kinds
    assert bool(found.summary["flag_reasons"]) is flagged


def test_no_events_scores_below_one_and_is_normal() -> None:
    found = summarise(beats(*sinus(200)))
    assert found.verdict.score < 1.0
    assert found.verdict.label == HolterLabel.NORMAL
    assert found.summary["events"] == [] and found.summary["events_total"] == 0


def test_score_is_graded_value_over_limit() -> None:
    rr, labels = sinus(300)
    couplet = summarise(beats(rr, with_labels(labels, 100, "VV")))
    assert couplet.verdict.score == pytest.approx(2 / 3, abs=1e-6)
    pause = summarise(beats([*rr[:100], 2.4, *rr[101:]], labels))
    assert pause.verdict.components["pause"] == pytest.approx(0.8)
    burden = summarise(beats(rr, "".join("V" if i % 20 == 3 else "N" for i in range(300))))
    assert burden.verdict.components["v-burden"] == pytest.approx(0.5)


def test_known_af_reports_af_without_flagging() -> None:
    rr = RR[:60] + irregular(240) + RR[:59]
    seq = beats(rr, "N" * 360)
    known = summarise(seq, known_af=True)
    assert known.verdict.label == HolterLabel.NORMAL
    assert known.summary["counts"]["af_episodes"] == 1
    assert known.summary["af_minutes"] > 1.5
    assert not known.summary["events"][0]["flagged"]
    assert summarise(seq).summary["burden"]["af"] > 0


def test_regular_rhythm_with_isolated_ectopics_is_not_af() -> None:
    rr, labels = sinus(400)
    labels = "".join("S" if i % 7 == 3 else c for i, c in enumerate(labels))
    rr = [0.5 if labels[i + 1] == "S" else r for i, r in enumerate(rr)]
    assert af_spans(beats(rr, labels)) == []


def test_s_beats_inside_af_become_n() -> None:
    labels = with_labels("N" * 360, 150, "S")
    seq = beats(RR[:60] + irregular(240) + RR[:59], labels)
    assert relabel_in_af(seq)[150] == CODE["N"]
    outside = beats(*sinus(300))
    assert np.array_equal(relabel_in_af(outside), outside.classes)


def test_pause_across_not_analysable_stretch_is_not_a_pause() -> None:
    rr, labels = sinus(200)
    rr[100] = 30.0
    start = 1.0 + sum(rr[:100])
    seq = beats(rr, labels, excluded=((start + 1.0, start + 29.0),))
    found = summarise(seq)
    assert found.summary["counts"]["pauses"] == 0
    assert found.summary["not_analysable_s"] == pytest.approx(28.0)
    assert [e["kind"] for e in found.summary["events"]] == ["not-analysable"]


def test_sustained_vt_is_its_own_kind_and_counted_as_v_run() -> None:
    rr, labels = sinus(400)
    labels = with_labels(labels, 100, "V" * 120)
    found = summarise(beats(rr, labels))
    assert found.summary["counts"]["v_runs"] == 1
    assert found.summary["counts"]["nsvt"] == 0
    assert found.events[0].kind == EventKind.VT
    assert "sustained VT of 120 beats at 75 bpm" in found.events[0].detail


def test_heart_rate_windows() -> None:
    rr = [1.0] * 299 + [0.5] * 240
    seq = beats(rr, "N" * 540)
    hr = heart_rate(seq)
    assert hr["min"]["bpm"] == pytest.approx(60.0)
    assert hr["max"]["bpm"] == pytest.approx(120.0)
    assert hr["max"]["at_s"] >= 300.0
    assert 60.0 < hr["mean"] < 120.0


def test_summary_shape_and_strip() -> None:
    rr, labels = sinus(300)
    found = summarise(beats(rr, with_labels(labels, 100, "VVVVV")), lead="MLII", fs=360.0)
    s = found.summary
    assert set(s) == {
        "duration_s", "analysed_s", "not_analysable_s", "lead", "fs", "beats", "heart_rate", "burden",
        "af_minutes", "counts", "events", "events_total", "flag_reasons", "flag_rule",
    }  # fmt: skip
    assert s["beats"] == {"N": 295, "S": 0, "V": 5, "F": 0, "Q": 0}
    assert s["flag_rule"] == FLAG_RULE
    event = s["events"][0]
    assert event["kind"] == "nsvt" and event["beats"] == 5 and event["flagged"]
    assert event["detail"] == f"V run of 5 beats at 75 bpm at {clock(event['start_s'])}"
    strip = event["strip"]
    assert strip["end_s"] - strip["start_s"] == pytest.approx(10.0)
    assert strip["start_s"] <= event["start_s"] and event["end_s"] <= strip["end_s"]
    assert [b[1] for b in strip["beats"]].count("V") == 5
    json.dumps(s)


def test_events_are_capped_flagged_first() -> None:
    rr, labels = sinus(3000)
    marks = list(labels)
    for i in range(10, 2900, 10):
        marks[i : i + 2] = "VV"
    marks[2950:2953] = "VVV"
    found = summarise(beats(rr, "".join(marks)))
    s = found.summary
    assert s["events_total"] == 290 and len(s["events"]) == MAX_EVENTS
    assert s["events"][0]["kind"] == "nsvt" and s["events"][0]["flagged"]
    assert s["counts"]["v_couplets"] == 289


def test_class_runs() -> None:
    classes = np.array([0, 2, 2, 0, 2, 2, 2], dtype=np.int64)
    assert class_runs(classes, 2) == [(1, 3), (4, 7)]
    assert class_runs(classes, 1) == []


def test_clock() -> None:
    assert clock(3725.4) == "01:02:05"


@st.composite
def sequences(draw: st.DrawFn) -> BeatSequence:
    n = draw(st.integers(2, 400))
    rr = draw(st.lists(st.floats(0.25, 4.0), min_size=n - 1, max_size=n - 1))
    labels = draw(st.text(alphabet="NNNNNSVFQ", min_size=n, max_size=n))
    return beats(rr, labels)


@given(sequences(), st.booleans())
@settings(max_examples=60, deadline=None)
def test_verdict_matches_the_rule_and_summary_is_consistent(seq: BeatSequence, known_af: bool) -> None:
    found = summarise(seq, known_af=known_af)
    rr, valid = seq.rr
    longest_v = max((b - a for a, b in class_runs(seq.classes, CODE["V"])), default=0)
    v_pct = 100.0 * float(np.mean(seq.classes == CODE["V"]))
    af = bool(af_spans(seq)) and not known_af
    rule = longest_v >= 3 or bool(np.any(rr[valid] > 3.0)) or v_pct > 10.0 or af
    assert 0.0 <= found.verdict.score <= 1.0
    assert found.verdict.flagged is rule
    assert (found.verdict.label == HolterLabel.NORMAL) is (not rule)
    s = found.summary
    assert sum(s["beats"].values()) == len(seq.times)
    assert len(s["events"]) <= MAX_EVENTS <= max(MAX_EVENTS, s["events_total"])
    assert all(e["flagged"] for e in s["events"][: sum(ev.flagged for ev in found.events)])
    json.dumps(s)


@given(sequences(), st.data())
@settings(max_examples=40, deadline=None)
def test_fewer_v_beats_never_raise_the_ventricular_parts(seq: BeatSequence, data: st.DataObject) -> None:
    v = np.flatnonzero(seq.classes == CODE["V"])
    if len(v) == 0:
        return
    drop = data.draw(st.sampled_from(v.tolist()))
    classes = seq.classes.copy()
    classes[drop] = CODE["N"]
    before = summarise(seq).verdict.components
    after = summarise(BeatSequence(seq.times, classes, seq.duration_s)).verdict.components
    assert after["nsvt"] <= before["nsvt"]
    assert after["v-burden"] <= before["v-burden"]
