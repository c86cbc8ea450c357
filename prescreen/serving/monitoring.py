"""In-service monitoring over HTTP: ``GET /v1/monitoring`` (JSON) and the page ``/ui/models``.

Both show each model version's figures on the studies physicians labelled in their final reports
(sensitivity, specificity and accuracy with Wilson 95 % intervals against the target, and the
number of studies behind each), per institution and over all sites; the drift (PSI) of each site's
recent flag scores from the card's validation distribution; and the alarms the monitoring step
raised (:mod:`prescreen.pipeline.monitoring`). The page adds the active models with their cards'
headline figures and operating points, the history of model changes, and plots drawn here as
inline SVG (no script, nothing downloaded).

Only aggregate figures: no study, patient or series identifier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from prescreen.config import get_settings
from prescreen.errors import PrescreenError
from prescreen.evaluation.monitoring import MonitoringPolicy
from prescreen.models.card import ModelCard
from prescreen.pipeline.monitoring import ModelCards
from prescreen.serving.auth import Permission, StatsReader
from prescreen.serving.deps import IngestorDep, get_ingestor
from prescreen.serving.pages import error_page, page_user, render, same_origin, to_login
from prescreen.store.ingest import Ingestor
from prescreen.store.monitoring import (
    DriftRow,
    GroupRow,
    Snapshot,
    TrendRow,
    model_event_rows,
    model_versions,
    monitoring_snapshot,
    open_alarms,
)
from prescreen.store.users import Principal

monitoring_router = APIRouter(prefix="/v1", tags=["monitoring"])
monitoring_pages_router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(same_origin)])


class FigureOut(TypedDict):
    value: float | None
    ci_low: float | None
    ci_high: float | None


class OperatingPointOut(TypedDict):
    threshold: float
    criterion: str
    sensitivity: float | None
    specificity: float | None


class HeadlineOut(TypedDict):
    """The card's headline evaluation (held-out test split, or a later independent one)."""

    split: str
    n: int
    metrics: dict[str, FigureOut]


class ActiveModelOut(TypedDict):
    """A model this service screens with, and what its card says."""

    task: str
    name: str
    version: str
    headline: HeadlineOut | None
    operating_points: dict[str, OperatingPointOut]
    score_reference: bool


class MonitoringOut(Snapshot):
    """The in-service figures of each model version (``groups``: over all sites, then per site),
    the newest alarms (``resolved_at`` null while open), and the active models."""

    models: list[ActiveModelOut]


def _active_cards(request: Request) -> dict[str, ModelCard]:
    """task → the card of its active model (none while the models are loading)."""
    engine = getattr(request.app.state, "engine", None)
    return {task: model.card for task, model in sorted(dict(getattr(engine, "models", None) or {}).items())}


def _card_source(request: Request) -> ModelCards:
    """The cards of the versions in service: kept on the app once its engine is there."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return ModelCards()
    cached = getattr(request.app.state, "monitoring_cards", None)
    if not isinstance(cached, ModelCards):
        cached = ModelCards.of_engine(engine)
        request.app.state.monitoring_cards = cached
    return cached


def _model_out(task: str, card: ModelCard) -> ActiveModelOut:
    head = card.headline
    headline: HeadlineOut | None = None
    if head is not None:
        headline = {
            "split": head.split,
            "n": head.n,
            "metrics": {
                name: {"value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high}
                for name, m in head.metrics.items()
                if name in ("accuracy", "sensitivity", "specificity", "auroc")
            },
        }
    return {
        "task": task,
        "name": card.name,
        "version": card.version,
        "headline": headline,
        "operating_points": {
            name: {
                "threshold": spec.threshold,
                "criterion": spec.criterion,
                "sensitivity": spec.sensitivity,
                "specificity": spec.specificity,
            }
            for name, spec in card.operating_points.items()
        },
        "score_reference": card.score_reference is not None,
    }


def _monitoring(request: Request, ingestor: Ingestor, task: str | None) -> MonitoringOut:
    policy = MonitoringPolicy.from_settings(get_settings())
    cards = _card_source(request)
    with ingestor.sessions() as session:
        snapshot = monitoring_snapshot(session, cards(model_versions(session)), policy, task=task)
    models = [_model_out(t, card) for t, card in _active_cards(request).items() if task is None or t == task]
    return {**snapshot, "models": models}


@monitoring_router.get("/monitoring")
def monitoring(
    request: Request,
    ingestor: IngestorDep,
    _user: StatsReader,
    task: Annotated[str | None, Query(max_length=64, description="Only this task")] = None,
) -> MonitoringOut:
    """In-service figures per model version and institution against the physicians' labels, with
    Wilson 95 % intervals against the target, the score drift (PSI) per site, and the alarms."""
    return _monitoring(request, ingestor, task)


# --- plots (inline SVG, drawn from these coordinates by the template) ----------------------------

PLOT_W, PLOT_H = 360, 160
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 34, 8, 8, 22


def _x(i: float, lo: float, hi: float) -> float:
    span = hi - lo or 1.0
    return round(_PAD_L + (i - lo) / span * (PLOT_W - _PAD_L - _PAD_R), 1)


def _y(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    span = hi - lo or 1.0
    return round(PLOT_H - _PAD_B - (min(max(v, lo), hi) - lo) / span * (PLOT_H - _PAD_T - _PAD_B), 1)


def trend_plot(trend: Sequence[TrendRow], target: float) -> dict[str, Any] | None:
    """The rolling accuracy as a line with its 95 % band and the target as a dashed line, in a
    ``PLOT_W`` × ``PLOT_H`` box; ``None`` without points. The y axis runs from 0.5 (or lower, to
    show the band) to 1."""
    if not trend:
        return None
    lo_x, hi_x = float(trend[0]["index"]), float(trend[-1]["index"])
    if lo_x == hi_x:
        lo_x -= 1
    floor = min(0.5, math.floor(min(p["ci_low"] for p in trend) * 10) / 10)
    line = " ".join(f"{_x(p['index'], lo_x, hi_x)},{_y(p['value'], floor)}" for p in trend)
    upper = [f"{_x(p['index'], lo_x, hi_x)},{_y(p['ci_high'], floor)}" for p in trend]
    lower = [f"{_x(p['index'], lo_x, hi_x)},{_y(p['ci_low'], floor)}" for p in reversed(trend)]
    ticks = [round(floor + k * (1 - floor) / 4, 3) for k in range(5)]
    return {
        "width": PLOT_W,
        "height": PLOT_H,
        "line": line,
        "band": " ".join(upper + lower),
        "target_y": _y(target, floor),
        "target": target,
        "y_ticks": [{"y": _y(t, floor), "label": f"{t:.2f}"} for t in ticks],
        "x_left": _PAD_L,
        "x_right": PLOT_W - _PAD_R,
        "baseline": PLOT_H - _PAD_B,
        "first": int(trend[0]["index"]),
        "last": int(trend[-1]["index"]),
        "last_point": {"x": _x(trend[-1]["index"], lo_x, hi_x), "y": _y(trend[-1]["value"], floor)},
    }


def histogram_plot(drift: DriftRow) -> dict[str, Any] | None:
    """Bars of the recent scores' share per bin beside the card's reference share (outlined), in a
    ``PLOT_W`` × ``PLOT_H`` box; ``None`` without recent scores."""
    if drift["n"] == 0:
        return None
    edges, recent, reference = drift["edges"], drift["recent"], drift["reference"]
    top = max([*recent, *(reference or []), 0.01])
    top = math.ceil(top * 10) / 10
    lo, hi = edges[0], edges[-1]
    bars, ref_bars = [], []
    for i, share in enumerate(recent):
        x0, x1 = _x(edges[i], lo, hi), _x(edges[i + 1], lo, hi)
        width = max(round((x1 - x0) / 2 - 1, 1), 1.0)
        y = _y(share, 0.0, top)
        bars.append({"x": x0 + 0.5, "y": y, "w": width, "h": round(PLOT_H - _PAD_B - y, 1)})
        if reference is not None:
            ry = _y(reference[i], 0.0, top)
            ref_bars.append({"x": round(x0 + width + 1, 1), "y": ry, "w": width, "h": round(PLOT_H - _PAD_B - ry, 1)})
    return {
        "width": PLOT_W,
        "height": PLOT_H,
        "bars": bars,
        "reference": ref_bars,
        "x_ticks": [{"x": _x(e, lo, hi), "label": f"{e:g}"} for e in (edges[0], edges[len(edges) // 2], edges[-1])],
        "y_ticks": [{"y": _y(t, 0.0, top), "label": f"{t:.0%}"} for t in (0.0, top / 2, top)],
        "x_left": _PAD_L,
        "x_right": PLOT_W - _PAD_R,
        "baseline": PLOT_H - _PAD_B,
    }


def _by_version(groups: Sequence[GroupRow]) -> list[dict[str, Any]]:
    """The groups of each (task, version): the overall figures, then the sites, with their plots."""
    out: list[dict[str, Any]] = []
    for group in groups:
        plotted = {
            **group,
            "trend_plot": trend_plot(group["trend"], group["target"]["threshold"]),
            "histogram": histogram_plot(group["drift"]),
        }
        if group["scope"] == "overall":
            out.append(
                {
                    "task": group["task"],
                    "name": group["model_name"],
                    "version": group["model_version"],
                    "overall": plotted,
                    "sites": [],
                }
            )
        else:
            out[-1]["sites"].append(plotted)
    return out


PageStatsReader = Annotated[Principal | None, Depends(page_user(Permission.STATS_READ))]

KIND_LABELS: Mapping[str, str] = {"below_target": "低于目标", "score_drift": "评分漂移"}
METRIC_LABELS: Mapping[str, str] = {
    "accuracy": "准确率",
    "sensitivity": "灵敏度",
    "specificity": "特异度",
    "auroc": "AUROC",
}
STATUS_LABELS: Mapping[str, str] = {
    "below": "低于目标",
    "met": "达标",
    "uncertain": "未定（区间跨越目标）",
    "too_few": "标注不足",
}


@monitoring_pages_router.get("/models")
def models_page(request: Request, user: PageStatsReader) -> Response:
    """The active models and their in-service monitoring, as a page (Chinese)."""
    if user is None:
        return to_login(request)
    ingestor = get_ingestor(request)
    try:
        data = _monitoring(request, ingestor, None)
        with ingestor.sessions() as session:
            events = model_event_rows(session, limit=50)
    except PrescreenError as exc:
        return error_page(request, user, exc)
    return render(
        "models.html",
        user=user,
        data=data,
        versions=_by_version(data["groups"]),
        open_alarms=open_alarms(data["alarms"]),
        events=events,
        kind_labels=KIND_LABELS,
        metric_labels=METRIC_LABELS,
        status_labels=STATUS_LABELS,
    )


monitoring_routes = APIRouter()
"""Both routers, for ``create_app`` to include at once."""
monitoring_routes.include_router(monitoring_router)
monitoring_routes.include_router(monitoring_pages_router)
