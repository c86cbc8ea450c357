"""The Holter part of the reading page: the summary table, the beat-class counts, an event strip for
each event (only that window of the 30-minute record decoded, beat labels above the trace), the draft
report pre-filled from the summary, and the progress of a long analysis while it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from prescreen.domain import JobState
from prescreen.serving.holter_pages import event_strip_window, holter_pages_router
from prescreen.serving.holter_report import holter_draft
from prescreen.serving.i18n import Locale, use_locale
from prescreen.store.schema import Job, Result
from tests.serving.test_pages import (
    Site,
    add_item,
    png_of,
    site,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.data

SUMMARY: dict[str, Any] = {
    "duration_s": 1805.6,
    "analysed_s": 1790.0,
    "not_analysable_s": 15.6,
    "lead": "MLII",
    "fs": 360.0,
    "beats": {"N": 1850, "S": 3, "V": 12, "F": 0, "Q": 1},
    "heart_rate": {"min": {"bpm": 58.2, "at_s": 1260.0}, "mean": 71.4, "max": {"bpm": 96.0, "at_s": 300.0}},
    "burden": {"S": 0.16, "V": 0.64, "af": 0.0},
    "af_minutes": 0.0,
    "counts": {
        "v_couplets": 1,
        "v_runs": 1,
        "nsvt": 1,
        "s_couplets": 0,
        "s_runs": 0,
        "pauses": 0,
        "long_pauses": 0,
        "af_episodes": 0,
    },
    "events": [
        {
            "kind": "nsvt",
            "start_s": 104.0,
            "end_s": 105.5,
            "beats": 4,
            "detail": "V run of 4 beats at 160 bpm",
            "flagged": True,
            "strip": {"start_s": 99.75, "end_s": 109.75, "beats": [[100.3, "N"], [104.0, "V"], [104.4, "V"]]},
        },
        {
            "kind": "v-couplet",
            "start_s": 900.0,
            "end_s": 900.4,
            "beats": 2,
            "detail": "V couplet",
            "flagged": False,
            "strip": {"start_s": 895.2, "end_s": 905.2, "beats": [[900.0, "V"], [900.4, "V"]]},
        },
    ],
    "events_total": 2,
    "flag_reasons": ["NSVT: a ventricular run of 4 beats at 0:01:44"],
    "flag_rule": "flagged when ...",
}


def holter_item(site: Site, mitdb: Path) -> tuple[str, str]:  # noqa: F811
    """MIT-BIH record 101 stored as an upload, with a holter result carrying :data:`SUMMARY`."""
    files = {name: (mitdb / name).read_bytes() for name in ("101.hea", "101.dat")}
    received = site.ingestor.store_upload(files, patient_name="张三丰")
    with site.ingestor.sessions.begin() as session:
        from prescreen.store.schema import Series

        series = session.query(Series).filter_by(series_uid=received[0].series_uid).one()
        job = Job(series_id=series.id, state=JobState.DONE)
        session.add(job)
        session.flush()
        session.add(
            Result(
                job_id=job.id,
                series_id=series.id,
                task="holter",
                model_name="holter-beats",
                model_version="t",
                flagged=True,
                label="nsvt",
                score=1.0,
                threshold=1.0,
                probabilities={"N": 0.99, "V": 0.01},
                summary=SUMMARY,
            )
        )
    item = add_item(site, received[0].study_id, label="nsvt", score=1.0)
    return item, received[0].series_uid


def test_the_item_page_shows_the_summary_the_events_and_a_draft(site: Site, shared_data: Path) -> None:  # noqa: F811
    site.app.include_router(holter_pages_router)
    item, series = holter_item(site, shared_data / "mitdb")
    client = site.signed_in("liwei")
    page = client.get(f"/ui/items/{item}").text
    assert "Ambulatory ECG analysis" in page and "NSVT: a ventricular run of 4 beats" in page
    assert re.search(r'data-beats="V">\s*12<', page) and re.search(r'data-beats="N">\s*1850<', page)
    assert "min 58 bpm at 0:21:00" in page and "max 96 bpm at 0:05:00" in page
    for index in (0, 1):
        assert f"/ui/items/{item}/series/{series}/events/{index}.png" in page
    assert "<textarea" not in page  # no draft before the claim
    assert client.post(f"/ui/items/{item}/claim").status_code == 303
    page = client.get(f"/ui/items/{item}").text
    draft = page.split('<textarea id="report-text"', 1)[1].split("</textarea>", 1)[0]
    assert "Ambulatory ECG of 0 h 30 min; analysable 30 min." in draft  # pre-filled for the reader to edit
    assert "ventricular ectopic 12 (0.6 %)" in draft

    strip = client.get(f"/ui/items/{item}/series/{series}/events/0.png")
    assert strip.status_code == 200 and strip.headers["content-type"] == "image/png"
    image = png_of(strip.content)
    assert image.width > 1000 and image.height > 100
    assert client.get(f"/ui/items/{item}/series/{series}/events/2.png").status_code == 404
    assert site.signed_in("mary").get(f"/ui/items/{item}/series/{series}/events/0.png").status_code == 403
    assert site.client().get(f"/ui/items/{item}/series/{series}/events/0.png").status_code == 401


def test_a_strip_window_is_clipped_and_its_beats_are_relative_to_it() -> None:
    start, seconds, beats = event_strip_window(SUMMARY["events"][0])
    assert (start, seconds) == (99.75, 10.0)
    assert beats == [(pytest.approx(0.55), "N"), (pytest.approx(4.25), "V"), (pytest.approx(4.65), "V")]
    long = {"strip": {"start_s": -5.0, "end_s": 600.0, "beats": []}}
    assert event_strip_window(long)[:2] == (0.0, 12.0)  # never before the record, at most 12 s


def test_the_draft_names_what_the_reader_must_check() -> None:
    with use_locale(Locale.EN):
        text = holter_draft(SUMMARY)
        quiet = holter_draft({**SUMMARY, "flag_reasons": [], "not_analysable_s": 0.0})
    assert "Heart rate 58–96 bpm (mean 71; lowest at 0:21:00, highest at 0:05:00)." in text
    assert "AI pre-screen flagged: NSVT: a ventricular run of 4 beats at 0:01:44." in text
    assert text.endswith("Conclusion: ")
    assert "flagged" not in quiet and "Not analysable" not in quiet


def test_the_draft_is_in_chinese_by_default() -> None:
    text = holter_draft(SUMMARY)
    assert text.startswith("动态心电图记录 0 小时 30 分钟，可分析 30 分钟。")
    assert "室性早搏 12 次（0.6 %）" in text and text.endswith("结论：")
