"""BentoML's request series with identifiers taken out of their ``endpoint`` label.

BentoML labels its request metrics with the raw request path, so ``/v1/studies/<study id>``,
``/dicomweb/studies/<Study Instance UID>`` and ``/v1/worklist-items/<item id>/claim`` would each
become series of their own: identifiers in the metrics, and a series per study. Before
``GET /metrics`` serves BentoML's text, :func:`sanitize_endpoints` rewrites each ``endpoint`` to a
template and adds up the series that become the same:

* a path segment after the first that holds a digit or is longer than 40 characters (ids, DICOM
  UIDs, file names made of ids) becomes ``{id}``;
* a path whose first segment is none of the service's (:data:`KNOWN_PREFIXES`: a scanner's probe)
  becomes ``/{other}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

KNOWN_PREFIXES: frozenset[str] = frozenset(
    {
        "",  # the root page
        "v1",
        "dicomweb",
        "ui",
        "healthz",
        "readyz",
        "livez",
        "metrics",
        "docs",
        "redoc",
        "openapi.json",
        "docs.json",
        "schema.json",
        "static_content",
        "tasks",  # the BentoML API of the service
    }
)
"""First path segments of the service's routes (the API, the pages, BentoML's own)."""

_ID_SEGMENT = re.compile(r"\d|.{41,}")


def endpoint_template(path: str, prefixes: Collection[str] = KNOWN_PREFIXES) -> str:
    """The template of a request path: identifiers as ``{id}``, unknown paths as ``/{other}``.

    Args:
        path: the request path (no query string).
        prefixes: the first path segments to keep.
    """
    segments = path.split("/")[1:]
    if not segments or segments[0] not in prefixes:
        return "/{other}"
    return "/" + "/".join([segments[0], *("{id}" if _ID_SEGMENT.search(s) else s for s in segments[1:])])


def sanitize_endpoints(content: str, prefixes: Collection[str] = KNOWN_PREFIXES) -> str:
    """Prometheus text with every ``endpoint`` label templated (:func:`endpoint_template`) and the
    samples that then share name and labels added up (counters, histogram buckets, sums and counts,
    and in-progress gauges all add; of ``*_created`` timestamps the earliest is kept). Text that does
    not parse is dropped (and logged): it is never served with identifiers in it.

    Args:
        content: Prometheus text exposition (BentoML's).
        prefixes: the first path segments to keep.
    """
    try:
        families = list(text_string_to_metric_families(content))
    except ValueError as exc:
        log.warning("metrics: BentoML's exposition did not parse (%s); left out of this scrape", exc)
        return ""
    merged: list[Metric] = []
    for family in families:
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for sample in family.samples:
            labels = dict(sample.labels)
            if "endpoint" in labels:
                labels["endpoint"] = endpoint_template(labels["endpoint"], prefixes)
            key = (sample.name, tuple(labels.items()))
            if key not in values:
                values[key] = sample.value
            elif sample.name.endswith("_created"):  # when the first of them was created
                values[key] = min(values[key], sample.value)
            else:
                values[key] += sample.value
        metric = Metric(family.name, family.documentation, family.type, family.unit)
        for (name, labels_items), value in values.items():
            metric.add_sample(name, dict(labels_items), value)
        merged.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(merged))
    return generate_latest(registry).decode("utf-8")


class _Fixed(Collector):
    """Yields the metric families it was given."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
