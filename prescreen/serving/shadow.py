"""Shadow mode over HTTP: ``GET /v1/models/{task}/shadow`` and the page ``/ui/models/{task}/shadow``
compare a task's shadow (candidate) model with its active model on the same live studies:
agreement of the balanced flag, flag rates, latency and, once reports are signed with the
physician's label, the accuracy of both. Set or clear the shadow with ``prescreen models shadow``.

Only aggregate figures are shown: no study, patient or series identifier.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from prescreen.errors import NotFoundError, PrescreenError
from prescreen.models.task import task_names
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.serving.auth import Permission, needs
from prescreen.serving.deps import EngineDep, IngestorDep, get_engine, get_ingestor
from prescreen.serving.pages import error_page, page_user, render, same_origin, to_login
from prescreen.store.ingest import Ingestor
from prescreen.store.shadow import ShadowComparison, shadow_comparison
from prescreen.store.users import Principal

shadow_router = APIRouter(prefix="/v1/models", tags=["models"])
shadow_pages_router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(same_origin)])


class ShadowOut(BaseModel):
    """A task's shadow model against its active model, per shadow model version that screened."""

    task: str
    active_model: str | None = Field(description="NAME:VERSION of the model this service routes by")
    shadow_model: str | None = Field(description="NAME:VERSION screening in shadow now; null when shadow mode is off")
    comparisons: list[ShadowComparison] = Field(
        description="per shadow model version, most recent first: the live series both screened (n), "
        "agreement of the balanced flag with its Wilson 95 % interval, each side's flag rate, latency "
        "(mean, p95 seconds) and accuracy on the series whose final report carries the physician's label"
    )


def _known(task: str) -> None:
    if task not in task_names():
        raise NotFoundError(f"unknown task {task!r}; known tasks: {', '.join(task_names())}")


def _report(engine: ScreeningEngine, ingestor: Ingestor, task: str) -> ShadowOut:
    _known(task)
    model = engine.models.get(task)
    with ingestor.sessions() as session:
        comparisons = shadow_comparison(session, task)
    return ShadowOut(
        task=task,
        active_model=f"{model.card.name}:{model.card.version}" if model else None,
        shadow_model=engine.shadow_tag(task),
        comparisons=comparisons,
    )


@shadow_router.get("/{task}/shadow", dependencies=needs(Permission.MODELS_READ))
def shadow_report(task: str, engine: EngineDep, ingestor: IngestorDep) -> ShadowOut:
    """How the shadow model of ``task`` compares with the active model on the same live studies
    (404 for an unknown task)."""
    return _report(engine, ingestor, task)


PageModelsReader = Annotated[Principal | None, Depends(page_user(Permission.MODELS_READ))]


@shadow_pages_router.get("/models/{task}/shadow")
def shadow_page(request: Request, task: str, user: PageModelsReader) -> Response:
    """The comparison as a page (Chinese), for signed-in users."""
    if user is None:
        return to_login(request)
    try:
        report = _report(get_engine(request), get_ingestor(request), task)
    except PrescreenError as exc:
        return error_page(request, user, exc)
    return render("shadow.html", user=user, report=report.model_dump())


shadow_routes = APIRouter()
"""Both routers, for ``create_app`` to include at once."""
shadow_routes.include_router(shadow_router)
shadow_routes.include_router(shadow_pages_router)
