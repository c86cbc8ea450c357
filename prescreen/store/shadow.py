"""Shadow mode in the store: the findings of a task's shadow (candidate) model on live series, kept
apart from the active model's results (table ``shadow_results``: never routed, reported or sent),
and how the two compare on the same series.

The comparison pairs, per series, the newest shadow finding of a shadow model version with the
newest active result. Where a final report carries the physician's own label
(``reports.physician_label``) it is the ground truth: flagged iff the label is not one of the
task's normal classes; "not assessable" and labels that are not classes of the task are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import TypedDict  # pydantic (the API's response models) needs it before 3.12

from prescreen.domain import Finding
from prescreen.evaluation.metrics import wilson_interval
from prescreen.models.task import get_task
from prescreen.store.queue import as_utc, finding_columns
from prescreen.store.schema import Result, Series
from prescreen.store.schema_lifecycle import ShadowResult
from prescreen.store.schema_triage import Report, WorklistItem

NOT_ASSESSABLE = "not assessable"
"""The physician's label of a study that could not be judged (no ground truth)."""


class Proportion(TypedDict):
    """A share of ``n`` with its Wilson 95 % interval; ``None`` throughout when ``n`` is 0."""

    n: int
    value: float | None
    ci_low: float | None
    ci_high: float | None


class ModelSide(TypedDict):
    """The figures of one side (active or shadow) on the series both screened."""

    models: list[str]
    flag_rate: Proportion
    latency_mean_s: float | None
    latency_p95_s: float | None
    accuracy: Proportion


class ShadowComparison(TypedDict):
    """One shadow model version against the active model on the same live series.

    ``n`` counts the series (of live studies) screened by both; ``agreement`` is the share on which
    their balanced flags agree; ``labelled`` the series whose final report carries a physician's
    label, on which each side's ``accuracy`` is measured.
    """

    task: str
    shadow_model: str
    n: int
    first_at: datetime | None
    last_at: datetime | None
    agreement: Proportion
    labelled: int
    active: ModelSide
    shadow: ModelSide


def record_shadow(sessions: sessionmaker[Session], series_id: str, finding: Finding) -> None:
    """Store a shadow model's finding of one series (apart from the active model's results)."""
    with sessions.begin() as session:
        session.add(ShadowResult(series_id=series_id, **finding_columns(finding)))


@dataclass(frozen=True)
class _Screened:
    """One side's finding of a series: the model, the balanced flag and the seconds it took."""

    tag: str
    flagged: bool
    seconds: float | None
    at: datetime


def _proportion(successes: int, n: int) -> Proportion:
    if n == 0:
        return {"n": 0, "value": None, "ci_low": None, "ci_high": None}
    low, high = wilson_interval(successes, n)
    return {"n": n, "value": round(successes / n, 4), "ci_low": round(low, 4), "ci_high": round(high, 4)}


def _side(screened: Sequence[_Screened], truths: Sequence[bool | None]) -> ModelSide:
    seconds = [s.seconds for s in screened if s.seconds is not None]
    labelled = [(s.flagged, truth) for s, truth in zip(screened, truths, strict=True) if truth is not None]
    return {
        "models": sorted({s.tag for s in screened}),
        "flag_rate": _proportion(sum(s.flagged for s in screened), len(screened)),
        "latency_mean_s": round(float(np.mean(seconds)), 4) if seconds else None,
        "latency_p95_s": round(float(np.percentile(seconds, 95)), 4) if seconds else None,
        "accuracy": _proportion(sum(flag == truth for flag, truth in labelled), len(labelled)),
    }


def _truth(label: str, classes: Sequence[str], normal: Sequence[str]) -> bool | None:
    """Whether a physician's label means abnormal (flagged); ``None`` when it is no ground truth."""
    label = label.strip()
    if label.lower().replace("_", " ") == NOT_ASSESSABLE or label not in classes:
        return None
    return label not in normal


def _physician_labels(session: Session, series_ids: Select[str], task: str) -> dict[str, str]:
    """The physician's label of each series' study from its newest final report that has one, on
    the worklist item of this task (a study read in two lists has a label per task)."""
    rows = session.execute(
        select(Series.id, Report.physician_label)
        .join(WorklistItem, WorklistItem.study_id == Series.study_id)
        .join(Report, Report.item_id == WorklistItem.id)
        .where(
            Series.id.in_(series_ids),
            WorklistItem.task == task,
            Report.status == "final",
            Report.physician_label.is_not(None),
        )
        .order_by(Report.updated_at, Report.version)
    ).all()
    return {series_id: str(label) for series_id, label in rows}


def shadow_comparison(session: Session, task: str) -> list[ShadowComparison]:
    """How each shadow model version of ``task`` compares with the active model on the live series
    both screened: agreement of the balanced flag, flag rates, latency (mean and 95th percentile of
    the seconds each took), and, on series whose final report has a physician's label, the accuracy
    of each. The most recently shadowing version first.

    Raises:
        UnknownTaskError: ``task`` is not a registered task.
    """
    spec = get_task(task)
    shadowed = select(ShadowResult.series_id).where(ShadowResult.task == task)
    shadow_rows = session.execute(
        select(
            ShadowResult.series_id,
            ShadowResult.model_name,
            ShadowResult.model_version,
            ShadowResult.flagged,
            ShadowResult.seconds,
            ShadowResult.created_at,
        )
        .where(ShadowResult.task == task)
        .order_by(ShadowResult.created_at)
    ).all()
    if not shadow_rows:
        return []
    active: dict[str, _Screened] = {}  # newest active result per series
    active_rows = session.execute(
        select(
            Result.series_id, Result.model_name, Result.model_version, Result.flagged, Result.seconds, Result.created_at
        )
        .where(Result.task == task, Result.series_id.in_(shadowed))
        .order_by(Result.created_at)
    ).all()
    for series_id, name, version, flagged, seconds, at in active_rows:
        active[series_id] = _Screened(f"{name}:{version}", bool(flagged), seconds, as_utc(at))
    by_version: dict[str, dict[str, _Screened]] = {}  # shadow tag → newest finding per series
    for series_id, name, version, flagged, seconds, at in shadow_rows:
        tag = f"{name}:{version}"
        by_version.setdefault(tag, {})[series_id] = _Screened(tag, bool(flagged), seconds, as_utc(at))
    labels = _physician_labels(session, shadowed, task)
    out: list[ShadowComparison] = []
    for tag, findings in by_version.items():
        pairs = [(active[sid], finding, sid) for sid, finding in findings.items() if sid in active]
        actives = [a for a, _, _ in pairs]
        shadows = [s for _, s, _ in pairs]
        truths = [
            _truth(labels[sid], spec.classes, spec.normal_classes) if sid in labels else None for _, _, sid in pairs
        ]
        moments = [s.at for s in shadows]
        out.append(
            {
                "task": task,
                "shadow_model": tag,
                "n": len(pairs),
                "first_at": min(moments) if moments else None,
                "last_at": max(moments) if moments else None,
                "agreement": _proportion(sum(a.flagged == s.flagged for a, s, _ in pairs), len(pairs)),
                "labelled": sum(t is not None for t in truths),
                "active": _side(actives, truths),
                "shadow": _side(shadows, truths),
            }
        )
    out.sort(key=lambda c: max(f.at for f in by_version[c["shadow_model"]].values()), reverse=True)
    return out
