"""The BentoML service: loads the active ONNX models once and serves the FastAPI app; starts the
store, the screening workers, the outbox and the DICOM listener beside it.

Run with ``prescreen serve`` (or ``bentoml serve prescreen.serving.service:Prescreen``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from prescreen.config import get_settings

get_settings()  # sets BENTOML_HOME and BENTOML_DO_NOT_TRACK before bentoml is imported

import bentoml  # noqa: E402

from prescreen.evaluation.monitoring import MonitoringPolicy  # noqa: E402
from prescreen.models.model_store import ModelStore  # noqa: E402
from prescreen.pipeline.engine import ScreeningEngine  # noqa: E402
from prescreen.pipeline.monitoring import ModelCards  # noqa: E402
from prescreen.pipeline.runtime import start_runtime  # noqa: E402
from prescreen.serving.app import create_app  # noqa: E402
from prescreen.serving.metrics import in_service_families, render_metrics  # noqa: E402
from prescreen.serving.metrics_endpoints import sanitize_endpoints  # noqa: E402
from prescreen.serving.process import die_with_parent, restrict_to_owner, reuse_freed_memory  # noqa: E402
from prescreen.store.monitoring import model_versions, monitoring_groups, scored_studies  # noqa: E402
from prescreen.store.stats import read_only, store_stats  # noqa: E402

api = create_app()


def tls_config() -> dict[str, object]:
    """BentoML's ``ssl`` configuration: HTTPS only, when ``PRESCREEN_TLS_CERT`` and ``PRESCREEN_TLS_KEY``
    name a certificate and its key (the same port then refuses plain HTTP)."""
    settings = get_settings()
    if settings.tls_cert is None or settings.tls_key is None:
        return {"enabled": False}
    return {"enabled": True, "certfile": str(settings.tls_cert), "keyfile": str(settings.tls_key)}


@bentoml.service(name="prescreen", workers=1, traffic={"timeout": 120}, ssl=tls_config())
@bentoml.asgi_app(api, path="/")
class Prescreen:
    """Holds the ONNX Runtime sessions of the active models; the mounted app uses them."""

    def __init__(self) -> None:
        die_with_parent()  # the worker stops when BentoML's arbiter is killed, freeing the DICOM port
        reuse_freed_memory()  # a request's image buffers reuse the last one's pages (IdleTrim returns them)
        os.umask(0o077)  # as the CLI does (also when served as a Bento): the home is its owner's only
        settings = get_settings()
        restrict_to_owner(settings.home)  # and a home made before that is closed too
        self.engine = ScreeningEngine(ModelStore(), explanations_dir=settings.home / "explanations")
        self.runtime = start_runtime(settings, self.engine.screen)
        self.monitoring_cards = ModelCards.of_engine(self.engine)
        api.state.engine = self.engine
        api.state.ingestor = self.runtime.ingestor
        api.state.runtime = self.runtime

    def __is_ready__(self) -> bool:
        """Readiness is the app's: models loaded, the study store open, the background loops running
        (BentoML answers ``/readyz`` itself and asks this)."""
        loops_alive = all(loop.alive for loop in self.runtime.loops)
        return api.state.engine is not None and getattr(api.state, "ingestor", None) is not None and loops_alive

    def __metrics__(self, content: str) -> str:
        """``GET /metrics``: BentoML's own series (``content``, identifiers taken out of its endpoint
        labels), then the ``prescreen_*`` ones counted in the database at scrape time
        (:mod:`prescreen.serving.metrics`)."""
        sessions = self.runtime.sessions
        policy = MonitoringPolicy.from_settings(get_settings())

        def in_service() -> Iterable[Metric]:
            with read_only(sessions)() as session:  # never SQLite's write lock on a scrape
                cards = self.monitoring_cards(model_versions(session))
                groups = monitoring_groups(scored_studies(session), cards, policy)
            return in_service_families(groups)

        ours = render_metrics(lambda: store_stats(sessions), sorted(self.engine.models), providers=[in_service])
        return sanitize_endpoints(content) + ours

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]
    def shutdown(self) -> None:
        self.runtime.stop()

    @bentoml.api  # type: ignore[untyped-decorator]
    def tasks(self) -> list[str]:
        """Tasks with an active model (also a smoke test of the BentoML API path)."""
        return sorted(self.engine.models)
