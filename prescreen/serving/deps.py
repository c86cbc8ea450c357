"""Shared FastAPI dependencies: the engine, the study store, the SLA targets and the claim lease."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Request

from prescreen.config import Settings, get_settings
from prescreen.errors import ServiceUnavailableError
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.pipeline.runtime import sla_targets
from prescreen.store.ingest import Ingestor
from prescreen.triage.priority import SlaTargets


def _started(request: Request, name: str, what: str) -> Any:
    """``app.state.<name>``, set once the service has started.

    Raises:
        ServiceUnavailableError: the service is starting and ``what`` is not ready yet (503).
    """
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ServiceUnavailableError(f"the service is starting: {what}")
    return value


def get_engine(request: Request) -> ScreeningEngine:
    """The app's screening engine (``app.state.engine``)."""
    engine: ScreeningEngine = _started(request, "engine", "models are not loaded yet")
    return engine


def get_ingestor(request: Request) -> Ingestor:
    """The app's study store (``app.state.ingestor``)."""
    ingestor: Ingestor = _started(request, "ingestor", "the study store is not open yet")
    return ingestor


def get_targets() -> SlaTargets:
    """The report targets per priority, from the settings."""
    return sla_targets(get_settings())


def claim_lease(settings: Settings | None = None) -> timedelta:
    """How long a claim holds an item."""
    return timedelta(minutes=(settings or get_settings()).claim_lease_minutes)


EngineDep = Annotated[ScreeningEngine, Depends(get_engine)]
IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]
TargetsDep = Annotated[SlaTargets, Depends(get_targets)]
