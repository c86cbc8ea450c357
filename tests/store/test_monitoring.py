"""In-service monitoring on a real database (SQLite and PostgreSQL: the ``sessions`` fixture):
a signed report with the physician's label moves the figures; an induced score drift raises one
PSI alarm, which a later run resolves; accuracy below target raises its alarm; alarms wait for the
webhook with a counted number of attempts.

Studies are stored, screened and routed the production way (``screen_study``, ``triage``); reports
are signed through the review actions (``act``). Only the bulk labels of the target test are
written directly, as a co-signature leaves them (a final report version with its label).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from prescreen.errors import ConflictError, InvalidRequestError
from prescreen.evaluation.monitoring import BELOW_TARGET, SCORE_DRIFT, MonitoringPolicy
from prescreen.models.card import ModelCard, ScoreReference
from prescreen.models.model_store import SHIPPED_DIR
from prescreen.store.blobs import BlobStore
from prescreen.store.monitoring import (
    UNKNOWN_SITE,
    GroupRow,
    claim_notification,
    mark_notified,
    model_versions,
    monitoring_snapshot,
    pending_alarms,
    raise_alarms,
    scored_studies,
)
from prescreen.store.reading import DraftText, act, item_detail
from prescreen.store.schema import Study
from prescreen.store.schema_lifecycle import Alarm
from prescreen.store.schema_triage import Report, WorklistItem
from tests.store.test_worklist import (
    LEASE,
    TARGETS,
    UNSCREENABLE_CT,
    Sessions,
    Team,
    breast_us,
    cheap_password_hashing,
    ecg,
    one_item,
    reader,
    rescreen,
    screen_study,
    team,
    triage,
    utcnow,
)

__all__ = ["cheap_password_hashing", "team"]  # fixtures used here

#: the validation flag scores of the (fake) ECG model: mostly low, as for a mostly normal population
REFERENCE = ScoreReference(
    edges=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    proportions=[0.6, 0.2, 0.1, 0.05, 0.05],
    n=1024,
    measured_on="validation split (n=1024)",
)


def ecg_card(reference: ScoreReference | None = REFERENCE) -> ModelCard:
    """The shipped ECG card, as the card of the fake model version "1" the tests screen with."""
    shipped = ModelCard.load(SHIPPED_DIR / "ecg-rhythm" / "card.json")
    return shipped.model_copy(update={"name": "fake-ecg-rhythm", "version": "1", "score_reference": reference})


CARDS = {"1": ecg_card()}


def policy(**changes: object) -> MonitoringPolicy:
    values: dict[str, object] = {"window": 20, "psi_threshold": 0.25, "min_labelled": 5, "target": 0.95}
    values.update(changes)
    return MonitoringPolicy(**values)  # type: ignore[arg-type]


def at_site(sessions: Sessions, study_id: str, institution: str) -> None:
    with sessions.begin() as s:
        s.execute(update(Study).where(Study.id == study_id).values(institution=institution))


def screened(sessions: Sessions, blobs: BlobStore, spec: object, institution: str | None = "clinic-7") -> str:
    """A study screened and routed; its item id."""
    study_id = screen_study(sessions, blobs, spec)  # type: ignore[arg-type]
    if institution is not None:
        at_site(sessions, study_id, institution)
    triage(sessions)
    return one_item(sessions, study_id).id


def sign(sessions: Sessions, item_id: str, team: Team, label: str | None, ai_agrees: bool = True) -> None:
    """First read with ``label``, submit, co-sign."""
    act(sessions, item_id, "claim", team.attending, lease=LEASE)
    act(sessions, item_id, "draft", team.attending, lease=LEASE, draft=DraftText("Report.", ai_agrees, label))
    act(sessions, item_id, "sign", team.attending, lease=LEASE)
    assert act(sessions, item_id, "sign", team.assoc, lease=LEASE) == "final"


def snapshot(sessions: Sessions, p: MonitoringPolicy | None = None) -> dict[tuple[str, str | None], GroupRow]:
    with sessions() as s:
        snap = monitoring_snapshot(s, CARDS, p or policy())
    return {(g["scope"], g["institution"]): g for g in snap["groups"]}


def alarms_of(sessions: Sessions) -> list[Alarm]:
    with sessions() as s:
        return list(s.scalars(select(Alarm).order_by(Alarm.at, Alarm.id)))


# --- the physician's label in the report ---------------------------------------------------------


def test_the_label_is_checked_required_to_submit_and_kept(sessions: Sessions, blobs: BlobStore, team: Team) -> None:
    item = screened(sessions, blobs, ecg("af", 0.93))
    act(sessions, item, "claim", team.attending, lease=LEASE)
    with pytest.raises(InvalidRequestError, match="not one of this study's labels: normal, af, other, noisy, not"):
        act(sessions, item, "draft", team.attending, lease=LEASE, draft=DraftText("AF.", True, "pneumonia"))
    act(sessions, item, "draft", team.attending, lease=LEASE, draft=DraftText("AF.", False))
    with pytest.raises(ConflictError, match="record your own label"):  # disagreeing: say what it is
        act(sessions, item, "sign", team.attending, lease=LEASE)
    act(sessions, item, "draft", team.attending, lease=LEASE, draft=DraftText("AF.", True, "  AF "))  # normalised
    assert act(sessions, item, "sign", team.attending, lease=LEASE) == "awaiting_review"
    assert act(sessions, item, "return", team.assoc, lease=LEASE, comment="rate?") == "returned"
    act(sessions, item, "claim", team.attending, lease=LEASE)
    act(sessions, item, "draft", team.attending, lease=LEASE, draft=DraftText("AF, 110.", True, "af"))
    act(sessions, item, "sign", team.attending, lease=LEASE)
    act(sessions, item, "sign", team.assoc, lease=LEASE)
    assert act(sessions, item, "amend", team.attending, lease=LEASE) == "draft"
    with sessions() as s:
        labels = [(r.version, r.status, r.physician_label) for r in s.scalars(select(Report).order_by(Report.version))]
        detail = item_detail(s, item, team.attending, TARGETS)
    assert labels == [(1, "superseded", "af"), (2, "draft", "af")]  # cosigned, then carried into the amendment
    assert detail["label_choices"] == ["normal", "af", "other", "noisy", "not assessable"]
    assert [r["physician_label"] for r in detail["reports"]] == ["af", "af"]


def test_an_unscreened_study_needs_no_label(sessions: Sessions, blobs: BlobStore, team: Team) -> None:
    study_id = screen_study(sessions, blobs, UNSCREENABLE_CT)
    triage(sessions)
    item = one_item(sessions, study_id)
    assert item.task is None
    ct_reader = reader(sessions, "ray.radiologist", "attending", (item.worklist,))
    act(sessions, item.id, "claim", ct_reader, lease=LEASE)
    with pytest.raises(InvalidRequestError, match="not one of this study's labels: not assessable"):
        act(sessions, item.id, "draft", ct_reader, lease=LEASE, draft=DraftText("CT.", None, "normal"))
    act(sessions, item.id, "draft", ct_reader, lease=LEASE, draft=DraftText("CT: no finding.", None))
    assert act(sessions, item.id, "sign", ct_reader, lease=LEASE) == "awaiting_review"


# --- figures -------------------------------------------------------------------------------------


def test_a_signed_report_moves_the_figures(sessions: Sessions, blobs: BlobStore, team: Team) -> None:
    af = screened(sessions, blobs, ecg("af", 0.93))  # flagged
    normal = screened(sessions, blobs, ecg("normal", 0.05), institution="county-2")  # not flagged
    groups = snapshot(sessions)
    assert set(groups) == {("overall", None), ("site", "clinic-7"), ("site", "county-2")}
    overall = groups[("overall", None)]
    assert (overall["task"], overall["model_name"], overall["model_version"]) == ("ecg-rhythm", "fake-ecg-rhythm", "1")
    assert (overall["studies"], overall["labelled"], overall["unlabelled"], overall["accuracy"]["n"]) == (2, 0, 2, 0)
    assert overall["accuracy"]["value"] is None and overall["target"]["status"] == "too_few"

    sign(sessions, af, team, "af")  # the AI was right
    groups = snapshot(sessions)
    overall, clinic = groups[("overall", None)], groups[("site", "clinic-7")]
    assert (overall["labelled"], overall["confusion"]) == (1, {"tp": 1, "fp": 0, "tn": 0, "fn": 0})
    assert (overall["accuracy"]["value"], overall["accuracy"]["n"], overall["sensitivity"]["n"]) == (1.0, 1, 1)
    assert overall["accuracy"]["ci_low"] == pytest.approx(0.2065, abs=1e-3)  # Wilson, one study
    assert clinic["accuracy"]["value"] == 1.0 and groups[("site", "county-2")]["labelled"] == 0

    sign(sessions, normal, team, "af", ai_agrees=False)  # the physician saw AF the AI missed
    overall = snapshot(sessions)[("overall", None)]
    assert overall["confusion"] == {"tp": 1, "fp": 0, "tn": 0, "fn": 1}
    assert (overall["accuracy"]["value"], overall["sensitivity"]["value"], overall["sensitivity"]["n"]) == (0.5, 0.5, 2)
    assert overall["specificity"]["n"] == 0 and overall["specificity"]["value"] is None

    unreadable = screened(sessions, blobs, ecg("other", 0.7))
    sign(sessions, unreadable, team, "not assessable")
    overall = snapshot(sessions)[("overall", None)]
    assert (overall["studies"], overall["labelled"], overall["not_assessable"], overall["accuracy"]["n"]) == (
        3,
        2,
        1,
        2,
    )
    assert [p["n"] for p in overall["trend"]] == [1, 2]


def test_an_amendment_counts_with_its_last_final_label(sessions: Sessions, blobs: BlobStore, team: Team) -> None:
    item = screened(sessions, blobs, ecg("af", 0.93))
    sign(sessions, item, team, "af")
    act(sessions, item, "amend", team.attending, lease=LEASE)  # being amended: the final label still counts
    assert snapshot(sessions)[("overall", None)]["confusion"]["tp"] == 1
    act(sessions, item, "draft", team.attending, lease=LEASE, draft=DraftText("Sinus.", False, "normal"))
    act(sessions, item, "sign", team.attending, lease=LEASE)
    assert snapshot(sessions)[("overall", None)]["confusion"]["tp"] == 1  # not co-signed yet
    act(sessions, item, "sign", team.assoc, lease=LEASE)
    assert snapshot(sessions)[("overall", None)]["confusion"] == {"tp": 0, "fp": 1, "tn": 0, "fn": 0}


def test_a_study_counts_once_with_its_newest_result(sessions: Sessions, blobs: BlobStore, team: Team) -> None:
    study_id = screen_study(sessions, blobs, ecg("normal", 0.05))
    rescreen(sessions, blobs, study_id, ecg("af", 0.9))  # a late instance: screened again
    at_site(sessions, study_id, "clinic-7")
    with sessions() as s:
        (study,) = scored_studies(s)
        assert model_versions(s) == [("ecg-rhythm", "fake-ecg-rhythm", "1")]
    assert (study.score, study.flagged, study.site, study.label) == (0.9, True, "clinic-7", None)
    other = screen_study(sessions, blobs, breast_us("benign", 0.2))  # no institution
    with sessions() as s:
        sites = {(s_.task, s_.site) for s_ in scored_studies(s)}
    assert sites == {("ecg-rhythm", "clinic-7"), ("breast-us", UNKNOWN_SITE)}
    assert other


# --- alarms --------------------------------------------------------------------------------------


#: 20 scores distributed exactly as the reference
AS_VALIDATED = [0.1] * 12 + [0.3] * 4 + [0.5] * 2 + [0.7] + [0.9]


def drift_run(sessions: Sessions, blobs: BlobStore, scores: list[float], site: str = "clinic-7") -> None:
    for score in scores:
        study_id = screen_study(sessions, blobs, ecg("af" if score >= 0.5 else "normal", score))
        at_site(sessions, study_id, site)


def test_induced_drift_raises_one_psi_alarm_until_it_clears(sessions: Sessions, blobs: BlobStore) -> None:
    p = policy(window=20)
    drift_run(sessions, blobs, [0.95] * 19)  # far off, but not a full window yet
    assert snapshot(sessions, p)[("site", "clinic-7")]["drift"]["psi"] > 0.25
    assert raise_alarms(sessions, CARDS, p) == []
    drift_run(sessions, blobs, [0.95])  # the last 20 are all far up: a full window of drift
    groups = snapshot(sessions, p)
    clinic = groups[("site", "clinic-7")]
    assert clinic["drift"]["n"] == 20 and clinic["drift"]["full_window"]
    assert clinic["drift"]["psi"] is not None and clinic["drift"]["psi"] > 0.25
    assert clinic["drift"]["recent"][-1] == 1.0 and clinic["drift"]["reference"] == pytest.approx(REFERENCE.proportions)
    assert clinic["alarming"] == [SCORE_DRIFT]
    assert groups[("overall", None)]["alarming"] == []  # drift is a site's

    (raised,) = raise_alarms(sessions, CARDS, p)
    assert (raised["kind"], raised["task"], raised["model_version"], raised["institution"]) == (
        SCORE_DRIFT,
        "ecg-rhythm",
        "1",
        "clinic-7",
    )
    assert "PSI" in raised["message"] and raised["detail"]["n"] == 20 and raised["detail"]["psi"] > 0.25
    assert raised["resolved_at"] is None and not raised["notified"]
    assert raise_alarms(sessions, CARDS, p) == []  # still drifting: no second alarm
    assert len(alarms_of(sessions)) == 1

    drift_run(sessions, blobs, AS_VALIDATED)  # back to the validation distribution: the alarm is resolved
    assert snapshot(sessions, p)[("site", "clinic-7")]["drift"]["psi"] == 0.0
    assert raise_alarms(sessions, CARDS, p) == []
    (alarm,) = alarms_of(sessions)
    assert alarm.detail is not None and alarm.detail["resolved_at"]

    drift_run(sessions, blobs, [0.95] * 20)  # a new episode: a new alarm
    assert [a["kind"] for a in raise_alarms(sessions, CARDS, p)] == [SCORE_DRIFT]
    assert len(alarms_of(sessions)) == 2


def test_no_reference_no_psi_and_no_alarm(sessions: Sessions, blobs: BlobStore) -> None:
    p = policy(window=5)
    drift_run(sessions, blobs, [0.95] * 5)
    with sessions() as s:
        snap = monitoring_snapshot(s, {"1": ecg_card(reference=None)}, p)
    clinic = next(g for g in snap["groups"] if g["institution"] == "clinic-7")
    assert clinic["drift"]["psi"] is None and "no reference" in str(clinic["drift"]["reason"])
    assert clinic["drift"]["recent"][-1] == 1.0  # the histogram is still drawn
    assert raise_alarms(sessions, {"1": ecg_card(reference=None)}, p) == []
    assert raise_alarms(sessions, {}, p) == []  # no card at all: the task's classes still read the labels


def label_directly(sessions: Sessions, item_id: str, team: Team, label: str) -> None:
    """What a co-signature leaves: the item final, its report version final with the label."""
    now = utcnow()
    with sessions.begin() as s:
        s.execute(
            update(WorklistItem)
            .where(WorklistItem.id == item_id)
            .values(open=False, state="final", finalized_at=now, first_reader_id=team.attending.id)
        )
        s.add(
            Report(
                item_id=item_id, version=1, text="x", physician_label=label, author_id=team.attending.id, status="final"
            )
        )


def test_accuracy_below_target_raises_an_alarm_per_site_and_overall(
    sessions: Sessions, blobs: BlobStore, team: Team
) -> None:
    p = policy(window=50, min_labelled=8)
    for k in range(8):  # the AI flags AF, the physicians say normal in half of them
        item = screened(sessions, blobs, ecg("af", 0.9), institution="clinic-7")
        label_directly(sessions, item, team, "normal" if k % 2 else "af")
    for _ in range(3):  # another site, all right, too few to judge
        item = screened(sessions, blobs, ecg("af", 0.9), institution="county-2")
        label_directly(sessions, item, team, "af")
    groups = snapshot(sessions, p)
    clinic, county, overall = groups[("site", "clinic-7")], groups[("site", "county-2")], groups[("overall", None)]
    assert (clinic["accuracy"]["value"], clinic["accuracy"]["n"], clinic["target"]["status"]) == (0.5, 8, "below")
    assert (county["accuracy"]["value"], county["target"]["status"]) == (1.0, "too_few")
    assert (overall["accuracy"]["n"], overall["target"]["status"]) == (11, "below")

    raised = raise_alarms(sessions, CARDS, p)
    assert sorted((a["kind"], a["institution"] or "") for a in raised) == [
        (BELOW_TARGET, ""),
        (BELOW_TARGET, "clinic-7"),
    ]
    site_alarm = next(a for a in raised if a["institution"] == "clinic-7")
    assert site_alarm["detail"]["metric"] == "accuracy" and site_alarm["detail"]["n"] == 8
    assert site_alarm["detail"]["ci_high"] < 0.95 and "below the target 0.95" in site_alarm["message"]
    assert "Roe" not in str(site_alarm) and "P-" not in str(site_alarm["detail"])  # figures only


def test_two_runs_at_once_raise_one_alarm(sessions: Sessions, blobs: BlobStore) -> None:
    p = policy(window=6)
    drift_run(sessions, blobs, [0.95] * 6)
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(len(raise_alarms(sessions, CARDS, p)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(results) == [0, 0, 0, 1]
    assert len(alarms_of(sessions)) == 1


def test_pending_alarms_count_each_attempt_once(sessions: Sessions, blobs: BlobStore) -> None:
    p = policy(window=6)
    drift_run(sessions, blobs, [0.95] * 6)
    (raised,) = raise_alarms(sessions, CARDS, p)
    with sessions() as s:
        (pending,) = pending_alarms(s, max_attempts=3)
    assert pending["id"] == raised["id"] and pending["attempts"] == 0
    assert claim_notification(sessions, raised["id"], 0)
    assert not claim_notification(sessions, raised["id"], 0)  # another process counted it first
    assert claim_notification(sessions, raised["id"], 1) and claim_notification(sessions, raised["id"], 2)
    with sessions() as s:
        assert pending_alarms(s, max_attempts=3) == []  # out of attempts
        assert [a["attempts"] for a in pending_alarms(s, max_attempts=4)] == [3]
    mark_notified(sessions, raised["id"])
    with sessions() as s:
        assert pending_alarms(s, max_attempts=10) == []
        snap = monitoring_snapshot(s, CARDS, p)
    assert [(a["id"], a["notified"], a["attempts"]) for a in snap["alarms"]] == [(raised["id"], True, 3)]


def test_snapshot_of_one_task(sessions: Sessions, blobs: BlobStore) -> None:
    drift_run(sessions, blobs, [0.95] * 2)
    screen_study(sessions, blobs, breast_us("malignant", 0.9))
    with sessions() as s:
        snap = monitoring_snapshot(s, CARDS, policy(), task="breast-us")
    assert {g["task"] for g in snap["groups"]} == {"breast-us"}
    assert snap["policy"] == {
        "window": 20,
        "psi_threshold": 0.25,
        "min_labelled": 5,
        "target_metric": "accuracy",
        "target": 0.95,
    }
    assert timedelta(0) <= utcnow() - datetime.fromisoformat(snap["generated_at"]) < timedelta(minutes=1)
