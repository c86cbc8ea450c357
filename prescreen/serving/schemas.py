"""Typed response models of the API; each is built from the core types of :mod:`prescreen.domain`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from prescreen.domain import Finding


class ModelRef(BaseModel):
    """The model that made a result."""

    name: str
    version: str


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
