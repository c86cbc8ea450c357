"""The ``prescreen_*`` Prometheus series, computed from the database at scrape time.

BentoML serves ``GET /metrics`` with its own request metrics and appends what the service's
``__metrics__`` returns: :func:`render_metrics`. Counting in the database (not in process-local
counters) keeps the figures right across worker threads, processes and replicas, and across
restarts. Each scrape runs the handful of aggregate queries of :func:`prescreen.store.stats.store_stats`
(which never take SQLite's write lock). Only aggregates leave: labels are tasks, model versions, statuses,
worklists, priorities, states, escalation levels and alarm kinds, never a study or a patient.

The README's "Metrics" section names every series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from prescreen.domain import JobState, OperatingPointName
from prescreen.errors import ServiceUnavailableError
from prescreen.store.monitoring import GroupRow
from prescreen.store.stats import BREACH_LEVEL, LATENCY_BUCKETS, StoreStats

log = logging.getLogger(__name__)

MetricsProvider = Callable[[], Iterable[Metric]]
"""More series for the same scrape (e.g. in-service accuracy and PSI per model version from the
monitoring store: ``prescreen_model_accuracy``, ``prescreen_model_psi``); one that fails is left out
of that scrape and logged."""

_OPEN_JOB_STATES = (JobState.PENDING.value, JobState.RUNNING.value)
_FINISHED_JOB_STATES = (JobState.DONE.value, JobState.UNSCREENABLE.value, JobState.FAILED.value)


class StoreCollector(Collector):
    """Yields the ``prescreen_*`` families of one scrape.

    Args:
        stats: counts the store (raises :class:`~prescreen.errors.ServiceUnavailableError` when the
            database does not answer: the scrape then says ``prescreen_metrics_store_up 0``).
        tasks: tasks whose per-task series are shown even at zero (the active models' tasks).
        providers: more series, see :data:`MetricsProvider`.
    """

    def __init__(
        self, stats: Callable[[], StoreStats], tasks: Sequence[str] = (), providers: Sequence[MetricsProvider] = ()
    ) -> None:
        self._stats = stats
        self._tasks = tuple(tasks)
        self._providers = tuple(providers)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("prescreen_metrics_store_up", "1 when the database answered this scrape, else 0")
        try:
            stats = self._stats()
        except ServiceUnavailableError as exc:
            log.warning("metrics: %s", exc)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            yield from families(stats, self._tasks)
        for provider in self._providers:
            try:
                yield from list(provider())
            except Exception:  # one broken provider must not take the whole scrape down
                log.exception("metrics: a provider failed; its series are left out of this scrape")
        yield up
        took = GaugeMetricFamily("prescreen_metrics_scrape_seconds", "Seconds this scrape's queries took")
        took.add_metric([], time.perf_counter() - started)
        yield took


def render_metrics(
    stats: Callable[[], StoreStats], tasks: Sequence[str] = (), providers: Sequence[MetricsProvider] = ()
) -> str:
    """The ``prescreen_*`` series in the Prometheus text format (see :class:`StoreCollector`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(stats, tasks, providers))
    return generate_latest(registry).decode("utf-8")


def families(stats: StoreStats, tasks: Sequence[str] = ()) -> list[Metric]:
    """The metric families of one :class:`StoreStats`; ``tasks`` get their per-task series at zero."""
    return [*_study_families(stats, tasks), *_queue_families(stats, tasks), *_reading_families(stats)]


def _study_families(stats: StoreStats, tasks: Sequence[str]) -> list[Metric]:
    received = CounterMetricFamily("prescreen_studies_received", "Studies received and stored")
    received.add_metric([], sum(stats.studies_by_status.values()))
    screened = CounterMetricFamily(
        "prescreen_studies_screened", "Studies a model screened, by task (once per task)", labels=["task"]
    )
    for task in sorted({*tasks, *stats.studies_screened}):
        screened.add_metric([task], stats.studies_screened.get(task, 0))
    failed = CounterMetricFamily("prescreen_studies_failed", "Studies whose screening failed (no model result)")
    failed.add_metric([], stats.studies_by_status.get("failed", 0))
    by_status = GaugeMetricFamily("prescreen_studies", "Studies stored now, by status", labels=["status"])
    for status, n in sorted(stats.studies_by_status.items()):
        by_status.add_metric([status], n)
    series = CounterMetricFamily(
        "prescreen_series_screened", "Series screened, by task and model version", labels=["task", "model_version"]
    )
    for (task, version), n in sorted(stats.results.items()):
        series.add_metric([task, version], n)
    flags = CounterMetricFamily(
        "prescreen_flags", "Series flagged, by task and operating point", labels=["task", "operating_point"]
    )
    points = [p.value for p in OperatingPointName]
    for task in sorted({*tasks, *(t for t, _ in stats.flags)}):
        for point in points:
            flags.add_metric([task, point], stats.flags.get((task, point), 0))
    shadow = CounterMetricFamily(
        "prescreen_shadow_results",
        "Findings of shadow (candidate) models, by task and model version",
        labels=["task", "model_version"],
    )
    for (task, version), n in sorted(stats.shadow_results.items()):
        shadow.add_metric([task, version], n)
    return [received, screened, failed, by_status, series, flags, shadow]


def _queue_families(stats: StoreStats, tasks: Sequence[str]) -> list[Metric]:
    depth = GaugeMetricFamily("prescreen_queue_jobs", "Screening jobs waiting or running", labels=["state"])
    for state in _OPEN_JOB_STATES:
        depth.add_metric([state], stats.jobs.get(state, 0))
    age = GaugeMetricFamily("prescreen_queue_oldest_pending_seconds", "Age of the oldest pending screening job")
    age.add_metric([], stats.oldest_pending_seconds)
    finished = CounterMetricFamily("prescreen_jobs_finished", "Screening jobs finished, by outcome", labels=["state"])
    for state in _FINISHED_JOB_STATES:
        finished.add_metric([state], stats.jobs.get(state, 0))
    latency = HistogramMetricFamily(
        "prescreen_screening_seconds", "Model seconds to screen one series, by task", labels=["task"]
    )
    for task in sorted({*tasks, *stats.latency}):
        histogram = stats.latency.get(task)
        cumulative = histogram.cumulative if histogram else (0,) * len(LATENCY_BUCKETS)
        count = histogram.count if histogram else 0
        buckets = [(repr(float(b)), c) for b, c in zip(LATENCY_BUCKETS, cumulative, strict=True)]
        latency.add_metric([task], [*buckets, ("+Inf", count)], histogram.total if histogram else 0.0)
    return [depth, age, finished, latency]


def _reading_families(stats: StoreStats) -> list[Metric]:
    items = GaugeMetricFamily(
        "prescreen_worklist_items",
        "Open worklist items, by worklist, priority and review state",
        labels=["worklist", "priority", "state"],
    )
    for (worklist, priority, state), n in sorted(stats.worklist_open.items()):
        items.add_metric([worklist, priority, state], n)
    overdue = GaugeMetricFamily(
        "prescreen_worklist_overdue_items",
        "Open worklist items past their due time, by worklist and priority",
        labels=["worklist", "priority"],
    )
    for (worklist, priority), n in sorted(stats.worklist_overdue.items()):
        overdue.add_metric([worklist, priority], n)
    escalations = CounterMetricFamily(
        "prescreen_escalations",
        "SLA escalations (level: % of the target reached while open), by worklist and level",
        labels=["worklist", "level"],
    )
    breaches = CounterMetricFamily(
        "prescreen_sla_breaches",
        "Worklist items that reached their SLA target while open, by worklist and priority",
        labels=["worklist", "priority"],
    )
    by_level: dict[tuple[str, str], int] = {}
    for (worklist, priority, level), n in sorted(stats.escalations.items()):
        key = (worklist, str(level))
        by_level[key] = by_level.get(key, 0) + n
        if level == BREACH_LEVEL:
            breaches.add_metric([worklist, priority], n)
    for labels, n in sorted(by_level.items()):
        escalations.add_metric(list(labels), n)
    alarms = CounterMetricFamily(
        "prescreen_alarms", "Model monitoring alarms, by kind and task", labels=["kind", "task"]
    )
    for (kind, task), n in sorted(stats.alarms.items()):
        alarms.add_metric([kind, task], n)
    return [items, overdue, escalations, breaches, alarms]


def in_service_families(groups: Sequence[GroupRow]) -> list[Metric]:
    """In-service figures per model version over all sites (per site: ``GET /v1/monitoring``) from the
    monitoring store: accuracy, sensitivity, specificity against the physicians' labels, the number
    of labelled studies behind them, and the score drift (PSI) against the card's validation scores."""
    labels = ["task", "model_version"]
    rates = {
        name: GaugeMetricFamily(
            f"prescreen_model_{name}",
            f"In-service {name} against the physicians' labels (last N labelled)",
            labels=labels,
        )
        for name in ("accuracy", "sensitivity", "specificity")
    }
    labelled = GaugeMetricFamily(
        "prescreen_model_labelled_studies", "Labelled studies behind the in-service figures", labels=labels
    )
    psi = GaugeMetricFamily(
        "prescreen_model_psi",
        "Population stability index of recent flag scores vs the card's validation",
        labels=labels,
    )
    for group in groups:
        if group["scope"] != "overall":  # per site only in /v1/monitoring: no institution names here
            continue
        key = [group["task"], group["model_version"]]
        for name, family in rates.items():
            value = group[name]["value"]  # type: ignore[literal-required]
            if value is not None:
                family.add_metric(key, float(value))
        labelled.add_metric(key, float(group["labelled"]))
        if group["drift"]["psi"] is not None:
            psi.add_metric(key, float(group["drift"]["psi"]))
    return [*rates.values(), labelled, psi]
