"""Shadow findings in the store and how they compare with the active results, from real rows on a
real database (SQLite, and PostgreSQL where available: the ``sessions`` fixture).

Rows are written as the pipeline and the reading workflow write them: a job's ``Result`` (the active
model), a ``ShadowResult`` (the shadow model), and a worklist item whose final report carries the
physician's label.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from prescreen.domain import Finding, OperatingPoint
from prescreen.errors import UnknownTaskError
from prescreen.store.schema import Job, Result, Series, Study
from prescreen.store.schema_lifecycle import ShadowResult
from prescreen.store.schema_triage import Report, User, WorklistItem
from prescreen.store.shadow import record_shadow, shadow_comparison

Sessions = sessionmaker[Session]
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ECG = "ecg-rhythm"


def add_series(session: Session, task_label: str | None = None, *, report_status: str = "final") -> str:
    """A study with one series; with ``task_label``, a worklist item whose report has that label."""
    study = Study(study_uid=f"2.25.{uuid.uuid4().int}")
    session.add(study)
    session.flush()
    series = Series(study_id=study.id, series_uid=f"2.25.{uuid.uuid4().int}", modality="ECG")
    session.add(series)
    session.flush()
    if task_label is not None:
        user = User(login=f"u{uuid.uuid4().hex[:8]}", name="Reader", password_hash="x", grade="attending")
        item = WorklistItem(
            study_id=study.id,
            worklist="cardiology",
            priority="routine",
            rule="test",
            task=ECG,
            received_at=T0,
            due_at=T0 + timedelta(hours=4),
            open=report_status != "final",
            state="final" if report_status == "final" else "draft",
        )
        session.add_all([user, item])
        session.flush()
        session.add(
            Report(item_id=item.id, version=1, author_id=user.id, status=report_status, physician_label=task_label)
        )
    return series.id


def add_active(
    session: Session, series_id: str, flagged: bool, seconds: float | None, *, version: str = "v1", minute: int = 0
) -> None:
    job = Job(series_id=series_id, state="done")
    session.add(job)
    session.flush()
    session.add(
        Result(
            job_id=job.id,
            series_id=series_id,
            task=ECG,
            model_name="ecg-rhythm",
            model_version=version,
            flagged=flagged,
            label="af" if flagged else "normal",
            score=0.9 if flagged else 0.1,
            threshold=0.5,
            probabilities={},
            seconds=seconds,
            created_at=T0 + timedelta(minutes=minute),
        )
    )


def add_shadow(
    session: Session,
    series_id: str,
    flagged: bool,
    seconds: float | None,
    *,
    version: str = "c1",
    task: str = ECG,
    minute: int = 1,
) -> None:
    session.add(
        ShadowResult(
            series_id=series_id,
            task=task,
            model_name="ecg-candidate",
            model_version=version,
            flagged=flagged,
            label="af" if flagged else "normal",
            score=0.9 if flagged else 0.1,
            threshold=0.5,
            probabilities={},
            seconds=seconds,
            created_at=T0 + timedelta(minutes=minute),
        )
    )


def compare(sessions: Sessions, task: str = ECG) -> list[dict[str, object]]:
    with sessions() as session:
        return [dict(c) for c in shadow_comparison(session, task)]


def test_no_shadow_findings_no_comparison(sessions: Sessions) -> None:
    with sessions.begin() as session:
        add_active(session, add_series(session), True, 0.1)
    assert compare(sessions) == []


def test_agreement_flag_rates_latency_and_accuracy(sessions: Sessions) -> None:
    active_flags, shadow_flags = [True, True, False, False], [True, False, False, True]
    labels = ["af", "normal", "not assessable", None]  # truth: flagged, normal, skipped, none
    with sessions.begin() as session:
        for k, (a, s, label) in enumerate(zip(active_flags, shadow_flags, labels, strict=True)):
            sid = add_series(session, label)
            add_active(session, sid, a, 0.1 * (k + 1))
            add_shadow(session, sid, s, 1.0 * (k + 1))
        # a draft report's label is no ground truth yet
        sid = add_series(session, "af", report_status="draft")
        add_active(session, sid, False, 0.5)
        add_shadow(session, sid, False, 5.0)
    (c,) = compare(sessions)
    assert (c["task"], c["shadow_model"], c["n"], c["labelled"]) == (ECG, "ecg-candidate:c1", 5, 2)
    assert c["agreement"] == {"n": 5, "value": 0.6, "ci_low": 0.2307, "ci_high": 0.8824}
    active, shadow = c["active"], c["shadow"]
    assert isinstance(active, dict) and isinstance(shadow, dict)
    assert active["models"] == ["ecg-rhythm:v1"] and shadow["models"] == ["ecg-candidate:c1"]
    assert active["flag_rate"]["value"] == 0.4 and shadow["flag_rate"]["value"] == 0.4
    assert active["latency_mean_s"] == pytest.approx(0.3)
    assert active["latency_p95_s"] == pytest.approx(round(float(np.percentile([0.1, 0.2, 0.3, 0.4, 0.5], 95)), 4))
    assert shadow["latency_mean_s"] == pytest.approx(3.0) and shadow["latency_p95_s"] == pytest.approx(4.8)
    # labelled: "af" (active flagged: right; shadow flagged: right), "normal" (active flagged: wrong; shadow: right)
    assert active["accuracy"] == {"n": 2, "value": 0.5, "ci_low": 0.0945, "ci_high": 0.9055}
    assert shadow["accuracy"]["n"] == 2 and shadow["accuracy"]["value"] == 1.0
    assert c["first_at"] is not None and c["last_at"] is not None


def test_pairs_newest_results_and_splits_by_version(sessions: Sessions) -> None:
    with sessions.begin() as session:
        rescreened = add_series(session)
        add_active(session, rescreened, True, 0.1, minute=0)
        add_active(session, rescreened, False, 0.2, version="v2", minute=10)  # a late instance: screened again
        add_shadow(session, rescreened, True, 1.0, minute=1)
        add_shadow(session, rescreened, False, 2.0, minute=11)
        add_shadow(session, add_series(session), True, 1.0)  # no active result (failed): not a pair
        other = add_series(session)
        add_active(session, other, True, 0.3)
        add_shadow(session, other, True, 3.0, version="c2", minute=20)  # a newer candidate
        add_shadow(session, other, True, 3.0, task="chest-xray", minute=21)  # another task: not here
    first, second = compare(sessions)
    assert (first["shadow_model"], first["n"]) == ("ecg-candidate:c2", 1)
    assert (second["shadow_model"], second["n"]) == ("ecg-candidate:c1", 1)
    assert second["agreement"]["value"] == 1.0  # type: ignore[index]
    assert second["active"]["models"] == ["ecg-rhythm:v2"]  # type: ignore[index]
    assert second["shadow"]["latency_mean_s"] == 2.0  # type: ignore[index]
    assert second["active"]["accuracy"] == {"n": 0, "value": None, "ci_low": None, "ci_high": None}  # type: ignore[index]


def test_unknown_task_is_refused(sessions: Sessions) -> None:
    with pytest.raises(UnknownTaskError):
        compare(sessions, "ct-head")


def test_record_shadow(sessions: Sessions) -> None:
    with sessions.begin() as session:
        series_id = add_series(session)
    finding = Finding(
        task=ECG,
        model_name="ecg-candidate",
        model_version="c9",
        flagged=True,
        label="other",
        score=0.75,
        threshold=0.4,
        probabilities={"normal": 0.25, "other": 0.75},
        operating_points={"balanced": OperatingPoint(0.4, True), "safety": OperatingPoint(0.2, True)},
        shadow=True,
        seconds=0.125,
    )
    record_shadow(sessions, series_id, finding)
    with sessions() as session:
        row = session.scalars(select(ShadowResult)).one()
        assert (row.series_id, row.model_version, row.flagged, row.label, row.seconds) == (
            series_id,
            "c9",
            True,
            "other",
            0.125,
        )
        assert row.operating_points == {
            "balanced": {"threshold": 0.4, "flagged": True},
            "safety": {"threshold": 0.2, "flagged": True},
        }
        assert session.scalars(select(Result)).all() == []  # never among the active results
