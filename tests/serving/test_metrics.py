"""The ``prescreen_*`` exposition of ``GET /metrics`` (``render_metrics`` over ``store_stats``) on a
real migrated SQLite: it parses as Prometheus text, its values follow what the store holds, a
database that does not answer gives ``prescreen_metrics_store_up 0`` instead of an error, and extra
providers (the monitoring series) join the scrape.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from prescreen.domain import Finding, JobState, OperatingPoint
from prescreen.serving.metrics import render_metrics
from prescreen.store.blobs import FileBlobStore
from prescreen.store.db import make_engine, migrate, session_factory
from prescreen.store.ingest import store_files
from prescreen.store.queue import Outcome, claim_job, complete_studies, finish_job, utcnow, worker_name
from prescreen.store.stats import store_stats

Sessions = sessionmaker[Session]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[Sessions]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


def scrape(sessions: Sessions, tasks: tuple[str, ...] = (), providers: tuple[object, ...] = ()) -> tuple[str, Samples]:
    """The exposition text and its samples ``{(name, sorted labels): value}``, parsed back."""
    text = render_metrics(lambda: store_stats(sessions), tasks, providers)  # type: ignore[arg-type]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def screen_one(sessions: Sessions, blobs: FileBlobStore, *, flagged: bool, seconds: float) -> None:
    """Store an ECG upload and finish its job with a finding, as a worker does."""
    token = uuid.uuid4().hex.encode()
    study_id = store_files(sessions, blobs, {"r.hea": b"r 1 500 5000\n" + token, "r.dat": token})[0].study_id
    assert study_id in complete_studies(sessions, 0.0, now=utcnow() + timedelta(seconds=1))
    worker = worker_name()
    job = claim_job(sessions, worker, lease_seconds=60)
    assert job is not None
    finding = Finding(
        task="ecg-rhythm",
        model_name="ecg",
        model_version="v7",
        flagged=flagged,
        label="af" if flagged else "normal",
        score=0.9 if flagged else 0.1,
        threshold=0.5,
        operating_points={"balanced": OperatingPoint(0.5, flagged), "safety": OperatingPoint(0.05, True)},
        seconds=seconds,
    )
    assert finish_job(sessions, job, worker, Outcome(JobState.DONE, finding=finding)) == "screened"


def test_the_exposition_parses_and_follows_the_store(sessions: Sessions, tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    text, before = scrape(sessions, tasks=("ecg-rhythm",))
    task = (("task", "ecg-rhythm"),)
    assert before[("prescreen_metrics_store_up", ())] == 1
    assert before[("prescreen_studies_received_total", ())] == 0
    assert before[("prescreen_studies_screened_total", task)] == 0  # an active task shows at zero
    assert before[("prescreen_flags_total", (("operating_point", "safety"), *task))] == 0
    assert before[("prescreen_screening_seconds_count", task)] == 0
    assert before[("prescreen_queue_jobs", (("state", "pending"),))] == 0
    assert "# TYPE prescreen_studies_screened_total counter\n" in text
    assert "# TYPE prescreen_screening_seconds histogram\n" in text

    screen_one(sessions, blobs, flagged=True, seconds=0.3)
    screen_one(sessions, blobs, flagged=False, seconds=4.0)
    _, after = scrape(sessions, tasks=("ecg-rhythm",))
    assert after[("prescreen_studies_received_total", ())] == 2
    assert after[("prescreen_studies_screened_total", task)] == 2
    assert after[("prescreen_studies", (("status", "screened"),))] == 2
    assert after[("prescreen_series_screened_total", (("model_version", "v7"), *task))] == 2
    assert after[("prescreen_flags_total", (("operating_point", "balanced"), *task))] == 1
    assert after[("prescreen_flags_total", (("operating_point", "safety"), *task))] == 2
    assert after[("prescreen_jobs_finished_total", (("state", "done"),))] == 2
    assert after[("prescreen_screening_seconds_count", task)] == 2
    assert after[("prescreen_screening_seconds_sum", task)] == pytest.approx(4.3)
    assert after[("prescreen_screening_seconds_bucket", (("le", "0.5"), *task))] == 1
    assert after[("prescreen_screening_seconds_bucket", (("le", "5.0"), *task))] == 2
    assert after[("prescreen_screening_seconds_bucket", (("le", "+Inf"), *task))] == 2


def test_labels_carry_no_patient_or_study_identifiers(sessions: Sessions, tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    token = uuid.uuid4().hex
    store_files(
        sessions, blobs, {"r.hea": b"r 1 500 5000\n", "r.dat": b"x"}, patient_id=f"PID-{token}", institution="clinic-7"
    )
    text, _ = scrape(sessions)
    assert token not in text and "clinic-7" not in text


def test_a_database_that_does_not_answer_is_a_zero_not_an_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'never-migrated.sqlite'}")  # no tables
    try:
        _, samples = scrape(session_factory(engine), tasks=("ecg-rhythm",))
    finally:
        engine.dispose()
    assert samples[("prescreen_metrics_store_up", ())] == 0
    assert not any(name.startswith("prescreen_studies") for name, _ in samples)
    assert ("prescreen_metrics_scrape_seconds", ()) in samples


def test_providers_add_series_and_a_failing_one_is_left_out(sessions: Sessions) -> None:
    def monitoring() -> list[Metric]:
        accuracy = GaugeMetricFamily(
            "prescreen_model_accuracy", "In-service accuracy", labels=["task", "model_version", "institution"]
        )
        accuracy.add_metric(["ecg-rhythm", "v7", "clinic-7"], 0.97)
        return [accuracy]

    def broken() -> list[Metric]:
        raise RuntimeError("monitoring store unavailable")

    _, samples = scrape(sessions, providers=(broken, monitoring))
    key = (("institution", "clinic-7"), ("model_version", "v7"), ("task", "ecg-rhythm"))
    assert samples[("prescreen_model_accuracy", key)] == 0.97
    assert samples[("prescreen_metrics_store_up", ())] == 1


def test_in_service_figures_per_model_version_and_site() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    from prescreen.serving.metrics import in_service_families

    def rate(value: float | None, n: int) -> dict[str, object]:
        return {"value": value, "ci_low": None, "ci_high": None, "successes": 0, "n": n}

    overall = {
        "scope": "overall",
        "task": "ecg-rhythm",
        "model_version": "v1",
        "institution": None,
        "labelled": 40,
        "accuracy": rate(0.9, 40),
        "sensitivity": rate(0.8, 10),
        "specificity": rate(None, 0),
        "drift": {"psi": 0.31},
    }
    site = {**overall, "scope": "site", "institution": "county-a", "labelled": 12, "drift": {"psi": 0.9}}

    class Fixed(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return iter(in_service_families([overall, site]))  # type: ignore[list-item]

    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    assert 'prescreen_model_accuracy{model_version="v1",task="ecg-rhythm"} 0.9' in text
    assert 'prescreen_model_labelled_studies{model_version="v1",task="ecg-rhythm"} 40.0' in text
    assert 'prescreen_model_psi{model_version="v1",task="ecg-rhythm"} 0.31' in text
    assert "county-a" not in text  # per site only in /v1/monitoring
    assert "prescreen_model_specificity{" not in text  # no normal study labelled yet: no figure
