"""In-service monitoring in the database: each model version's figures on the studies physicians
have labelled, per institution and over all, the drift of each site's flag scores, and the alarms.

**The unit is a study and a task.** A series' result is its latest (a re-screened series counts
once, with its newest result); a study's result for a task is its highest-scoring series, as its
worklist item shows it. The model version is that result's. The study's *label* is the physician's
label of the newest final report of the study's item for that task; a report being amended keeps
counting with its last final version (``superseded``) until the new one is co-signed. Studies are
ordered by when the model screened them; the figures and the PSI cover the last ``window`` of them
(labelled ones for the figures, scored ones for the PSI). Studies without an institution count as
the site :data:`UNKNOWN_SITE`.

**Alarms** (the pure decisions of :mod:`prescreen.evaluation.monitoring`): ``below_target`` for a
version per site and over all sites (``institution`` ``None``), ``score_drift`` per site. An alarm
is *open* until a run of :func:`raise_alarms` finds its condition gone, which marks it resolved
(``detail["resolved_at"]``): while one is open, the same (kind, task, version, institution) raises
no other; once resolved, a new episode raises a new alarm. Runs are serialised (PostgreSQL advisory
lock; SQLite's ``BEGIN IMMEDIATE``), so replicas never raise one twice. Alarms hold figures only,
nothing about a patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import TypedDict  # pydantic (the API's response models) needs it before 3.12

from prescreen.errors import UnknownTaskError
from prescreen.evaluation.monitoring import (
    BELOW_TARGET,
    SCORE_DRIFT,
    Labelled,
    MonitoringPolicy,
    Rate,
    accuracy_trend,
    below_target,
    below_target_message,
    bin_shares,
    drift_message,
    drifted,
    psi,
    rolling,
    should_flag,
)
from prescreen.models.card import ModelCard
from prescreen.store.queue import as_utc, changed, utcnow
from prescreen.store.schema import Result, Series, Study
from prescreen.store.schema_lifecycle import Alarm, ModelEvent
from prescreen.store.schema_triage import Report, WorklistItem
from prescreen.triage.review import NOT_ASSESSABLE

UNKNOWN_SITE = "(unknown)"
"""The site of studies that came without an institution."""
DEFAULT_EDGES = [round(i / 10, 1) for i in range(11)]
"""Bins of the recent-score histogram when a card has no reference distribution."""
_LOCK_KEY = 0x6D6F6E69  # "moni": the advisory lock that serialises alarm runs on PostgreSQL
_LABELLED_STATUSES = ("final", "superseded")  # a superseded version was final until amended


# --- rows ----------------------------------------------------------------------------------------


class RateRow(TypedDict):
    """A proportion with its Wilson 95 % interval; ``n`` studies behind it (``value`` None when 0)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    successes: int
    n: int


class ConfusionRow(TypedDict):
    tp: int
    fp: int
    tn: int
    fn: int


class TargetRow(TypedDict):
    """The target metric against the target: ``status`` is ``below`` (the upper bound is below it,
    with enough studies: an alarm), ``met`` (the lower bound reaches it), ``uncertain`` (the interval
    straddles it) or ``too_few`` (fewer than ``min_labelled`` studies)."""

    metric: str
    threshold: float
    min_labelled: int
    status: Literal["below", "met", "uncertain", "too_few"]


class DriftRow(TypedDict):
    """The PSI of the last ``n`` (at most ``window``) flag scores against the card's validation
    distribution (``psi`` None without a reference, ``reason`` says why); ``recent`` and
    ``reference`` are the shares per bin of ``edges``."""

    psi: float | None
    n: int
    window: int
    threshold: float
    full_window: bool
    edges: list[float]
    recent: list[float]
    reference: list[float] | None
    reference_n: int | None
    reason: str | None


class TrendRow(TypedDict):
    """The rolling accuracy after the ``index``-th labelled study, over the ``n`` before it."""

    index: int
    value: float
    ci_low: float
    ci_high: float
    n: int


class GroupRow(TypedDict):
    """One model version's in-service figures at one site (``scope`` ``site``) or over all sites
    (``overall``, ``institution`` None)."""

    task: str
    model_name: str
    model_version: str
    scope: Literal["overall", "site"]
    institution: str | None
    studies: int
    labelled: int
    not_assessable: int
    unlabelled: int
    window: int
    confusion: ConfusionRow
    sensitivity: RateRow
    specificity: RateRow
    accuracy: RateRow
    target: TargetRow
    drift: DriftRow
    trend: list[TrendRow]
    alarming: list[str]
    last_screened_at: str | None


class AlarmRow(TypedDict):
    """A stored alarm; ``resolved_at`` None while it is open."""

    id: str
    kind: str
    task: str
    model_version: str
    institution: str | None
    message: str
    detail: dict[str, Any]
    at: str
    notified: bool
    attempts: int
    resolved_at: str | None


class PolicyRow(TypedDict):
    window: int
    psi_threshold: float
    min_labelled: int
    target_metric: str
    target: float


class Snapshot(TypedDict):
    """Everything ``GET /v1/monitoring`` answers."""

    generated_at: str
    policy: PolicyRow
    groups: list[GroupRow]
    alarms: list[AlarmRow]


# --- reading the studies -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredStudy:
    """A study's result for one task, with the physician's label of it when there is one."""

    study_id: str
    task: str
    model_name: str
    model_version: str
    site: str
    score: float
    flagged: bool
    screened_at: datetime
    label: str | None


def scored_studies(session: Session) -> list[ScoredStudy]:
    """Every (study, task) with a result, oldest screening first, with its physician label."""
    rows = session.execute(
        select(
            Result.id,
            Result.series_id,
            Result.task,
            Result.model_name,
            Result.model_version,
            Result.score,
            Result.flagged,
            Result.created_at,
            Series.study_id,
            Study.institution,
        )
        .join(Series, Series.id == Result.series_id)
        .join(Study, Study.id == Series.study_id)
    ).all()
    latest: dict[str, Any] = {}  # series → its newest result
    for row in rows:
        kept = latest.get(row.series_id)
        if kept is None or (as_utc(row.created_at), row.id) > (as_utc(kept.created_at), kept.id):
            latest[row.series_id] = row
    best: dict[tuple[str, str], Any] = {}  # (study, task) → its highest-scoring series' result
    for row in latest.values():
        key = (row.study_id, row.task)
        kept = best.get(key)
        if kept is None or (row.score, as_utc(row.created_at)) > (kept.score, as_utc(kept.created_at)):
            best[key] = row
    labels = _labels(session)
    out = [
        ScoredStudy(
            study_id=row.study_id,
            task=row.task,
            model_name=row.model_name,
            model_version=row.model_version,
            site=row.institution or UNKNOWN_SITE,
            score=float(row.score),
            flagged=bool(row.flagged),
            screened_at=as_utc(row.created_at),
            label=labels.get(key),
        )
        for key, row in best.items()
    ]
    out.sort(key=lambda s: (s.screened_at, s.study_id))
    return out


def _labels(session: Session) -> dict[tuple[str, str], str | None]:
    """(study, task) → the label of the newest final (or superseded) report of its item."""
    rows = session.execute(
        select(
            WorklistItem.study_id,
            WorklistItem.task,
            WorklistItem.finalized_at,
            Report.version,
            Report.updated_at,
            Report.physician_label,
        )
        .join(Report, Report.item_id == WorklistItem.id)
        .where(WorklistItem.task.is_not(None), Report.status.in_(_LABELLED_STATUSES))
    ).all()
    newest: dict[tuple[str, str], tuple[tuple[Any, ...], str | None]] = {}
    for row in rows:
        key = (row.study_id, str(row.task))
        rank = (row.version, as_utc(row.updated_at))
        if key not in newest or rank > newest[key][0]:
            newest[key] = (rank, row.physician_label)
    return {key: label for key, (_, label) in newest.items()}


def model_versions(session: Session) -> list[tuple[str, str, str]]:
    """The (task, model name, version) that have screened studies: whose cards the figures need."""
    rows = session.execute(select(Result.task, Result.model_name, Result.model_version).distinct()).all()
    return sorted((str(t), str(n), str(v)) for t, n, v in rows)


# --- figures -------------------------------------------------------------------------------------


def _normal_classes(task: str, card: ModelCard | None) -> tuple[str, ...] | None:
    if card is not None:
        return tuple(card.normal_classes)
    from prescreen.models.task import get_task  # late: the registry loads the networks' modules

    try:
        return get_task(task).normal_classes
    except UnknownTaskError:
        return None


def _rate_row(rate: Rate) -> RateRow:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "value": r(rate.value),
        "ci_low": r(rate.ci_low),
        "ci_high": r(rate.ci_high),
        "successes": rate.successes,
        "n": rate.n,
    }


def _target_row(rate: Rate, policy: MonitoringPolicy) -> TargetRow:
    status: Literal["below", "met", "uncertain", "too_few"]
    if rate.n < policy.min_labelled or rate.ci_low is None or rate.ci_high is None:
        status = "too_few"
    elif below_target(rate, policy):
        status = "below"
    elif rate.ci_low >= policy.target:
        status = "met"
    else:
        status = "uncertain"
    return {
        "metric": policy.target_metric,
        "threshold": policy.target,
        "min_labelled": policy.min_labelled,
        "status": status,
    }


def _drift_row(scores: Sequence[float], card: ModelCard | None, policy: MonitoringPolicy) -> DriftRow:
    recent = list(scores[-policy.window :])
    reference = card.score_reference if card is not None else None
    edges = list(reference.edges) if reference is not None else DEFAULT_EDGES
    value: float | None = None
    reason: str | None = None
    if reference is None:
        reason = "the model card has no reference score distribution" if card else "no model card for this version"
    elif not recent:
        reason = "no scored study yet"
    else:
        try:
            value = round(psi(reference.edges, reference.proportions, recent), 4)
        except ValueError as exc:
            reason = f"the card's reference distribution is unusable: {exc}"
    if value is not None and len(recent) < policy.window:
        reason = f"{len(recent)} of {policy.window} studies: too few to alarm"
    ref_total = sum(reference.proportions) if reference is not None else 0.0
    return {
        "psi": value,
        "n": len(recent),
        "window": policy.window,
        "threshold": policy.psi_threshold,
        "full_window": len(recent) >= policy.window,
        "edges": edges,
        "recent": [round(x, 4) for x in bin_shares(edges, recent)],
        "reference": [round(p / ref_total, 4) for p in reference.proportions]
        if reference is not None and ref_total > 0
        else None,
        "reference_n": reference.n if reference is not None else None,
        "reason": reason,
    }


def _group(
    studies: Sequence[ScoredStudy],
    scope: Literal["overall", "site"],
    site: str | None,
    card: ModelCard | None,
    policy: MonitoringPolicy,
) -> GroupRow:
    first = studies[0]
    normal = _normal_classes(first.task, card)
    labelled: list[Labelled] = []
    not_assessable = unlabelled = 0
    for s in studies:
        if s.label is None or normal is None:
            unlabelled += 1
        elif s.label == NOT_ASSESSABLE:
            not_assessable += 1
        else:
            labelled.append(Labelled(s.flagged, should_flag(s.label, normal)))
    confusion = rolling(labelled, policy.window)
    rates = confusion.rates()
    target_rate = rates[policy.target_metric]
    drift = _drift_row([s.score for s in studies], card, policy)
    alarming = []
    if below_target(target_rate, policy):
        alarming.append(BELOW_TARGET)
    if scope == "site" and drifted(drift["psi"], drift["n"], policy, drift["reference_n"], len(drift["edges"]) - 1):
        alarming.append(SCORE_DRIFT)
    return {
        "task": first.task,
        "model_name": first.model_name,
        "model_version": first.model_version,
        "scope": scope,
        "institution": site,
        "studies": len(studies),
        "labelled": len(labelled),
        "not_assessable": not_assessable,
        "unlabelled": unlabelled,
        "window": policy.window,
        "confusion": {"tp": confusion.tp, "fp": confusion.fp, "tn": confusion.tn, "fn": confusion.fn},
        "sensitivity": _rate_row(rates["sensitivity"]),
        "specificity": _rate_row(rates["specificity"]),
        "accuracy": _rate_row(rates["accuracy"]),
        "target": _target_row(target_rate, policy),
        "drift": drift,
        "trend": [
            {
                "index": p.index,
                "value": round(p.value, 4),
                "ci_low": round(p.ci_low, 4),
                "ci_high": round(p.ci_high, 4),
                "n": p.n,
            }
            for p in accuracy_trend(labelled, policy.window)
        ],
        "alarming": alarming,
        "last_screened_at": studies[-1].screened_at.isoformat(),
    }


def monitoring_groups(
    studies: Sequence[ScoredStudy], cards_by_version: Mapping[str, ModelCard], policy: MonitoringPolicy
) -> list[GroupRow]:
    """The figures of each (task, version) over all sites, then per site (sorted)."""
    by_version: dict[tuple[str, str], list[ScoredStudy]] = {}
    for s in studies:
        by_version.setdefault((s.task, s.model_version), []).append(s)
    groups: list[GroupRow] = []
    for (_task, version), members in sorted(by_version.items()):
        card = cards_by_version.get(version)
        groups.append(_group(members, "overall", None, card, policy))
        by_site: dict[str, list[ScoredStudy]] = {}
        for s in members:
            by_site.setdefault(s.site, []).append(s)
        for site, at_site in sorted(by_site.items()):
            groups.append(_group(at_site, "site", site, card, policy))
    return groups


def monitoring_snapshot(
    session: Session,
    cards_by_version: Mapping[str, ModelCard],
    policy: MonitoringPolicy,
    *,
    task: str | None = None,
    alarms_limit: int = 100,
) -> Snapshot:
    """The in-service figures of every model version (``task``: of one task), and the newest alarms.

    Args:
        session: a session of the migrated database.
        cards_by_version: the card of each model version (see :func:`model_versions`); a version
            without one gets no PSI, and its labels are read with the task's normal classes.
        policy: the window, thresholds and target.
        task: only this task's figures and alarms.
        alarms_limit: how many alarms, newest first.
    """
    studies = [s for s in scored_studies(session) if task is None or s.task == task]
    query = select(Alarm).order_by(Alarm.at.desc(), Alarm.id).limit(alarms_limit)
    if task is not None:
        query = query.where(Alarm.task == task)
    return {
        "generated_at": utcnow().isoformat(),
        "policy": {
            "window": policy.window,
            "psi_threshold": policy.psi_threshold,
            "min_labelled": policy.min_labelled,
            "target_metric": policy.target_metric,
            "target": policy.target,
        },
        "groups": monitoring_groups(studies, cards_by_version, policy),
        "alarms": [alarm_row(a) for a in session.scalars(query)],
    }


# --- alarms --------------------------------------------------------------------------------------


def alarm_row(alarm: Alarm) -> AlarmRow:
    detail = dict(alarm.detail or {})
    resolved = detail.get("resolved_at")
    return {
        "id": alarm.id,
        "kind": alarm.kind,
        "task": alarm.task,
        "model_version": alarm.model_version,
        "institution": alarm.institution,
        "message": alarm.message,
        "detail": detail,
        "at": as_utc(alarm.at).isoformat(),
        "notified": bool(alarm.notified),
        "attempts": int(alarm.attempts or 0),
        "resolved_at": str(resolved) if resolved else None,
    }


def is_open(alarm: Alarm) -> bool:
    """Whether an alarm is still open (its condition has not been seen gone since it was raised)."""
    return not (alarm.detail or {}).get("resolved_at")


def _metric(group: GroupRow, name: str) -> RateRow:
    if name == "sensitivity":
        return group["sensitivity"]
    if name == "specificity":
        return group["specificity"]
    return group["accuracy"]


def _figures(group: GroupRow, kind: str, policy: MonitoringPolicy) -> dict[str, Any]:
    """What an alarm records and the webhook receives: the figures, nothing about a patient."""
    if kind == BELOW_TARGET:
        rate = _metric(group, policy.target_metric)
        return {
            "metric": policy.target_metric,
            **rate,
            "target": policy.target,
            "min_labelled": policy.min_labelled,
            "window": policy.window,
            "labelled": group["labelled"],
            "sensitivity": group["sensitivity"],
            "specificity": group["specificity"],
            "accuracy": group["accuracy"],
        }
    drift = group["drift"]
    return {
        "psi": drift["psi"],
        "threshold": drift["threshold"],
        "n": drift["n"],
        "window": drift["window"],
        "edges": drift["edges"],
        "recent": drift["recent"],
        "reference": drift["reference"],
    }


def _message(group: GroupRow, kind: str, policy: MonitoringPolicy) -> str:
    site = group["institution"]
    if kind == BELOW_TARGET:
        rate = _metric(group, policy.target_metric)
        figure = Rate(rate["successes"], rate["n"], rate["value"], rate["ci_low"], rate["ci_high"])
        return below_target_message(group["task"], group["model_version"], site, figure, policy)
    psi_value = group["drift"]["psi"]
    assert psi_value is not None and site is not None
    return drift_message(group["task"], group["model_version"], site, psi_value, group["drift"]["n"], policy)


AlarmKey = tuple[str, str, str, str | None]


def raise_alarms(
    sessions: sessionmaker[Session],
    cards_by_version: Mapping[str, ModelCard],
    policy: MonitoringPolicy,
    now: datetime | None = None,
) -> list[AlarmRow]:
    """Store an alarm for each condition that holds now and has no open alarm; resolve the open
    alarms whose condition is gone. One transaction, serialised across processes.

    Returns:
        The alarms raised by this run.
    """
    now = now or utcnow()
    with sessions.begin() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        groups = monitoring_groups(scored_studies(session), cards_by_version, policy)
        holding: dict[AlarmKey, tuple[GroupRow, str]] = {}
        for group in groups:
            for kind in group["alarming"]:
                holding[(kind, group["task"], group["model_version"], group["institution"])] = (group, kind)
        open_keys: set[AlarmKey] = set()
        for alarm in session.scalars(select(Alarm).order_by(Alarm.at)):
            if not is_open(alarm):
                continue
            key = (alarm.kind, alarm.task, alarm.model_version, alarm.institution)
            if key in holding:
                open_keys.add(key)
            else:
                alarm.detail = {**(alarm.detail or {}), "resolved_at": now.isoformat()}
        raised: list[Alarm] = []
        for key, (group, kind) in holding.items():
            if key in open_keys:
                continue
            alarm = Alarm(
                kind=kind,
                task=group["task"],
                model_version=group["model_version"],
                institution=group["institution"],
                message=_message(group, kind, policy),
                detail=_figures(group, kind, policy),
                at=now,
                notified=False,
                attempts=0,
            )
            session.add(alarm)
            raised.append(alarm)
        session.flush()
        return [alarm_row(a) for a in raised]


def pending_alarms(session: Session, max_attempts: int) -> list[AlarmRow]:
    """Alarms not yet delivered to the webhook with attempts left, oldest first."""
    query = select(Alarm).where(Alarm.notified.is_(False), Alarm.attempts < max_attempts).order_by(Alarm.at, Alarm.id)
    return [alarm_row(a) for a in session.scalars(query)]


def claim_notification(sessions: sessionmaker[Session], alarm_id: str, attempts: int) -> bool:
    """Count one delivery attempt of an alarm, if no other process counted it first (the attempt
    count is as read); only the winner sends it."""
    with sessions.begin() as session:
        done = session.execute(
            update(Alarm)
            .where(Alarm.id == alarm_id, Alarm.attempts == attempts, Alarm.notified.is_(False))
            .values(attempts=attempts + 1)
        )
        return changed(done) == 1


def mark_notified(sessions: sessionmaker[Session], alarm_id: str) -> None:
    """The webhook took the alarm."""
    with sessions.begin() as session:
        session.execute(update(Alarm).where(Alarm.id == alarm_id).values(notified=True))


class ModelEventRow(TypedDict):
    """A change of which model screens a task (promotion, refusal, activation, shadow on/off)."""

    task: str
    action: str
    tag: str
    previous_tag: str | None
    actor: str
    at: str


def model_event_rows(session: Session, limit: int = 50) -> list[ModelEventRow]:
    """The newest model changes, newest first (shown beside the figures they explain)."""
    query = select(ModelEvent).order_by(ModelEvent.at.desc(), ModelEvent.id).limit(limit)
    return [
        {
            "task": e.task,
            "action": e.action,
            "tag": e.tag,
            "previous_tag": e.previous_tag,
            "actor": e.actor,
            "at": as_utc(e.at).isoformat(),
        }
        for e in session.scalars(query)
    ]


def open_alarms(rows: Iterable[AlarmRow]) -> list[AlarmRow]:
    """The open ones of some alarm rows."""
    return [row for row in rows if row["resolved_at"] is None]
