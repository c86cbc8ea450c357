"""Shared FastAPI dependencies: the engine, the study store, the SLA targets and the claim lease."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from prescreen.config import Settings, get_settings
from prescreen.errors import ServiceUnavailableError
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.pipeline.runtime import sla_targets
from prescreen.store.ingest import Ingestor
from prescreen.triage.priority import SlaTargets


def get_engine(request: Request) -> ScreeningEngine:
    """The app's screening engine (``app.state.engine``).

    Raises:
        ServiceUnavailableError: the service is starting and its models are not loaded yet (503).
    """
    engine: ScreeningEngine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ServiceUnavailableError("the service is starting: models are not loaded yet")
    return engine


def get_ingestor(request: Request) -> Ingestor:
    """The app's study store (``app.state.ingestor``).

    Raises:
        ServiceUnavailableError: the service is starting and its store is not open yet (503).
    """
    ingestor: Ingestor | None = getattr(request.app.state, "ingestor", None)
    if ingestor is None:
        raise ServiceUnavailableError("the service is starting: the study store is not open yet")
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
