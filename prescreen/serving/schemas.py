"""Typed response models of the API; each is built from the core types of :mod:`prescreen.domain`
or from the rows the store's read views return (TypedDicts: the routes return them as they are,
and FastAPI documents and validates them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from prescreen.domain import Finding
from prescreen.store.sla import AgreementGroup, TurnaroundGroup
from prescreen.store.worklist import ItemSummary


class ModelRef(BaseModel):
    """The model that made a result."""

    name: str
    version: str


class OperatingPointOut(BaseModel):
    """The decision at one operating point."""

    threshold: float
    flagged: bool


class FindingOut(BaseModel):
    """The AI result of a study (``/v1/screen``) or of one series (``/v1/studies/{id}``)."""

    task: str
    model: ModelRef
    flagged: bool
    label: str
    score: float
    probabilities: dict[str, float]
    threshold: float
    explanation_url: str | None = None
    created_at: datetime | None = None
    instance_uid: str | None = None
    instances_screened: int = 1
    instances_total: int = 1
    operating_points: dict[str, OperatingPointOut] = Field(
        default_factory=dict,
        description="the decision at each operating point of the model's card: 'balanced' (the flag above) "
        "and 'safety' (sensitivity >= 0.95 on validation; flags at least what balanced flags)",
    )
    summary: dict[str, Any] | None = Field(
        None,
        description="what a whole-record analysis found (holter): 'beats' (counts of the AAMI classes N, S, V, "
        "F, Q), 'heart_rate' (min/mean/max with times), 'burden', 'counts' and 'events' (kind, start_s, end_s, "
        "detail, flagged) with the 'flag_reasons'; absent for the other tasks",
    )

    @classmethod
    def of(cls, finding: Finding) -> FindingOut:
        return cls(
            task=finding.task,
            model=ModelRef(name=finding.model_name, version=finding.model_version),
            flagged=finding.flagged,
            label=finding.label,
            score=finding.score,
            probabilities=finding.probabilities,
            threshold=finding.threshold,
            explanation_url=finding.explanation_url,
            created_at=finding.created_at,
            instance_uid=finding.instance_uid,
            instances_screened=finding.instances_screened,
            instances_total=finding.instances_total,
            operating_points={
                name: OperatingPointOut(threshold=p.threshold, flagged=p.flagged)
                for name, p in finding.operating_points.items()
            },
            summary=finding.summary,
        )


class ModelOut(BaseModel):
    """A model this service screens with, and its card's headline evaluation."""

    task: str
    name: str
    version: str
    classes: list[str]
    threshold: float
    evaluation: dict[str, object] | None = None


class ModelsOut(BaseModel):
    models: list[ModelOut]


class StatusOut(BaseModel):
    status: str


class ServiceStatusOut(BaseModel):
    """``GET /v1/status``: readiness, the clock's synchronization and continuous capture."""

    status: str
    clock: dict[str, Any] = Field(
        description="'synchronized' (NTP keeps the clock in step, as the kernel reports; null: unknown), "
        "'max_error_ms', 'estimated_error_ms', 'source'"
    )
    replication: dict[str, bool] = Field(
        description="'configured' (PRESCREEN_REPLICA_DIR with SQLite) and 'running' (Litestream is streaming)"
    )


class UserOut(TypedDict):
    """The signed-in user."""

    id: str
    login: str
    name: str
    grade: str
    specialties: list[str]
    institution: str | None
    institutions: list[str]
    roles: list[str]
    second_factor: bool


class WorklistCount(TypedDict):
    """A worklist and its number of open items."""

    worklist: str
    open: int


class WorklistsOut(TypedDict):
    """The worklists of the user's specialties."""

    worklists: list[WorklistCount]


class WorklistPage(TypedDict):
    """A worklist's open items, most urgent first (up to the limit), and how many are open."""

    worklist: str
    items: list[ItemSummary]
    total: int


class TurnaroundStats(TypedDict):
    groups: list[TurnaroundGroup]


class AgreementStats(TypedDict):
    groups: list[AgreementGroup]
