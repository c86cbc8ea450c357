"""The FastAPI app: one router per resource, the engine reached through a dependency."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prescreen.config import get_settings
from prescreen.errors import InvalidStudyError, ServiceBusyError, StudyTooLargeError
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.security.audit import AuditEntry, AuditEvent
from prescreen.security.clock import clock_status
from prescreen.serving.auth import Permission, Principal, actor_of, needs, require
from prescreen.serving.deps import EngineDep
from prescreen.serving.errors import CatchAll, error_response, install_error_handlers
from prescreen.serving.openapi import install_openapi
from prescreen.serving.process import IdleTrim
from prescreen.serving.schemas import FindingOut, ModelOut, ModelsOut, ServiceStatusOut, StatusOut
from prescreen.store.audit import record_now

screen_router = APIRouter(prefix="/v1", tags=["screen"])
models_router = APIRouter(prefix="/v1", tags=["models"])
health_router = APIRouter(tags=["health"])


@screen_router.post("/screen", response_model_exclude_none=True)
def screen(
    request: Request,
    user: Annotated[Principal | None, Depends(require(Permission.SCREEN))],  # before the engine: 401 first
    engine: EngineDep,
    file: Annotated[
        list[UploadFile] | None,
        File(description="A WFDB .hea with its .dat/.mat, DICOM files of one study, or one PNG/JPEG"),
    ] = None,
    task: Annotated[str | None, Form(description="Task name; chosen from the content when absent")] = None,
) -> FindingOut:
    """Screen one study sent as multipart files (field name ``file``, repeated). At most
    ``PRESCREEN_MAX_CONCURRENT_SCREENS`` are screened at once; a request that finds no slot within
    ``PRESCREEN_SCREEN_WAIT_SECONDS`` gets 503 with ``Retry-After``. Nothing is stored but the
    audit record of who sent what (file count and bytes, the task asked for; no patient field). It
    is committed while the study is screened, and every answer, a finding or an error, waits for it:
    no screening is answered unaudited, and the commit overlaps the screening instead of following it."""
    limit = get_settings().max_upload_bytes
    files: dict[str, bytes] = {}
    for upload in file or []:
        name = (upload.filename or "").rsplit("/", 1)[-1]
        if not name:
            raise InvalidStudyError("every uploaded file needs a file name")
        if name in files:
            raise InvalidStudyError(f"file {name!r} was sent twice")
        files[name] = upload.file.read(limit + 1)
        if sum(len(v) for v in files.values()) > limit:
            raise StudyTooLargeError(f"the upload exceeds the limit of {limit} bytes")
    settings = get_settings()
    slots: threading.BoundedSemaphore = request.app.state.screen_slots
    if not slots.acquire(timeout=settings.screen_wait_seconds):
        raise ServiceBusyError(f"all {settings.max_concurrent_screens} screening slots are busy; try again shortly")
    audited = _audit_screening(request, user, files, task)
    try:
        finding = engine.screen(files, task, in_request=True)
    finally:
        slots.release()
        request.app.state.idle_trim.touch()
        if audited is not None:
            audited.result()  # raises when the record could not be written: no answer without it
    return FindingOut.of(finding)


def _audit_screening(
    request: Request, user: Principal | None, files: dict[str, bytes], task: str | None
) -> Future[object] | None:
    """Start committing the audit record of a screening request on the audit pool; ``None`` when
    the app has no store (an engine alone, in tests)."""
    ingestor = getattr(request.app.state, "ingestor", None)
    if ingestor is None:
        return None
    detail = {"files": len(files), "bytes": sum(len(v) for v in files.values()), "task": task}
    entry = AuditEntry(AuditEvent.SCREENED, actor_of(request, user), detail=detail)
    pool: ThreadPoolExecutor = request.app.state.audit_pool
    return pool.submit(record_now, ingestor.sessions, entry)


@screen_router.get("/explanations/{name}.png", dependencies=needs(Permission.SCREEN))
def explanation(engine: EngineDep, name: str) -> Response:
    """The occlusion-sensitivity overlay PNG named in a screening response (drawn on first request)."""
    png = engine.explanation_png(name)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@models_router.get("/models", dependencies=needs(Permission.MODELS_READ))
def list_models(engine: EngineDep) -> ModelsOut:
    """The models this service screens with, one per task, with their cards' headline figures."""
    out = []
    for name, model in sorted(engine.models.items()):
        head = model.card.headline
        out.append(
            ModelOut(
                task=name,
                name=model.card.name,
                version=model.card.version,
                classes=list(model.card.classes),
                threshold=model.card.operating_threshold,
                evaluation=head.model_dump() if head else None,
            )
        )
    return ModelsOut(models=out)


@health_router.get("/healthz", dependencies=needs(Permission.HEALTH))
def healthz() -> StatusOut:
    return StatusOut(status="ok")


@health_router.get("/readyz", dependencies=needs(Permission.HEALTH))
def readyz(request: Request) -> JSONResponse:
    ready = getattr(request.app.state, "engine", None) is not None
    content = {"status": "ready" if ready else "starting", **_operating_state(request)}
    return JSONResponse(status_code=200 if ready else 503, content=content)


@health_router.get("/v1/status", dependencies=needs(Permission.HEALTH))
def service_status(request: Request) -> ServiceStatusOut:
    """Readiness with what an operator and an auditor check: whether the server clock, which dates
    signatures and audit records, is NTP-synchronized (the kernel's view), and whether continuous
    capture to ``PRESCREEN_REPLICA_DIR`` is running. (Under BentoML, ``/readyz`` is BentoML's own.)"""
    ready = getattr(request.app.state, "engine", None) is not None
    return ServiceStatusOut(status="ready" if ready else "starting", **_operating_state(request))


def _operating_state(request: Request) -> dict[str, Any]:
    runtime = getattr(request.app.state, "runtime", None)
    replicator = getattr(runtime, "replicator", None)
    replication = {"configured": replicator is not None, "running": bool(replicator and replicator.alive)}
    return {"clock": clock_status().as_json(), "replication": replication}


class UploadLimit:
    """Refuse bodies over the limit (413): at once when ``Content-Length`` says so, and while
    reading a chunked body that declares no length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                response = error_response(413, "too_large", f"the upload exceeds the limit of {self.limit} bytes")
                await response(scope, receive, send)
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.limit:
                        raise StudyTooLargeError(f"the upload exceeds the limit of {self.limit} bytes")
                return message

            await self.app(scope, limited_receive, send)
            return
        await self.app(scope, receive, send)


def create_app(engine: ScreeningEngine | None = None) -> FastAPI:
    """The REST API; ``engine`` may be attached later (``app.state.engine``)."""
    app = FastAPI(title="prescreen", version="0.1.0", description="AI pre-screening of medical studies")
    app.state.engine = engine
    # at most this many studies are decoded and screened at once: memory and CPU stay bounded
    app.state.screen_slots = threading.BoundedSemaphore(get_settings().max_concurrent_screens)
    app.state.audit_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audit")  # screening's records
    app.state.idle_trim = IdleTrim()  # a decoded image's memory goes back to the system after a burst
    install_error_handlers(app)
    install_openapi(app)
    from prescreen.serving.account import auth_router
    from prescreen.serving.account_pages import account_pages_router
    from prescreen.serving.audit import audit_router
    from prescreen.serving.dicomweb import dicomweb_router
    from prescreen.serving.holter_pages import holter_pages_router
    from prescreen.serving.monitoring import monitoring_routes
    from prescreen.serving.pages import pages_router
    from prescreen.serving.shadow import shadow_routes
    from prescreen.serving.studies import studies_router
    from prescreen.serving.worklists import worklists_router

    api_routers = (
        screen_router,
        models_router,
        studies_router,
        dicomweb_router,
        auth_router,
        worklists_router,
        audit_router,
    )
    for router in (*api_routers, pages_router, health_router):
        app.include_router(router)
    app.include_router(account_pages_router)  # /ui/mfa, /ui/step-up, /ui/audit
    app.include_router(holter_pages_router)  # /ui/items/{id}/series/{uid}/events/{k}.png
    app.include_router(shadow_routes)  # GET /v1/models/{task}/shadow and its page
    app.include_router(monitoring_routes)  # GET /v1/monitoring and the page /ui/models
    app.add_middleware(UploadLimit, limit=get_settings().max_upload_bytes)
    app.add_middleware(CatchAll)
    return app
