"""The model card: a JSON file beside the ONNX file saying what the model is and how good."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from prescreen.errors import ModelError


class MetricValue(BaseModel):
    value: float | None
    ci_low: float | None
    ci_high: float | None


class Target(BaseModel):
    metric: str
    threshold: float
    met: bool


class Evaluation(BaseModel):
    """One measurement of the model on one data set."""

    split: str = Field(description="what the data was: 'held-out test split', 'validation split', or a folder")
    dataset_path: str
    dataset_digest: str
    n: int
    metrics: dict[str, MetricValue]
    target: Target
    challenge_f1: float | None = None
    confusion: list[list[int]] | None = None
    when: str | None = None
    note: str | None = None


class ModelCard(BaseModel):
    """Everything a reader, an auditor or the service needs to know about one model version."""

    task: str
    name: str
    version: str = ""
    created: str
    classes: list[str]
    normal_classes: list[str]
    flag_rule: str
    input_spec: dict[str, Any]
    operating_threshold: float
    threshold_chosen_on: str
    training: dict[str, Any]
    onnx: dict[str, Any] = Field(default_factory=dict)
    validation: Evaluation | None = None
    test: Evaluation | None = None
    evaluations: list[Evaluation] = Field(default_factory=list)
    caveats: list[str] = Field(default_factory=list)

    @property
    def headline(self) -> Evaluation | None:
        """The figure to show: the latest evaluation on data other than the training set,
        else the held-out test split (an evaluation on the training data is no accuracy)."""
        training_digest = self.training.get("data_digest")
        independent = [e for e in self.evaluations if e.dataset_digest != training_digest]
        return independent[-1] if independent else self.test or self.validation

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read a card.

        Raises:
            ModelError: the file is missing or not a valid card.
        """
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise ModelError(f"model card {path} not found") from exc
        except (ValueError, ValidationError) as exc:
            raise ModelError(f"model card {path} is not a valid card: {exc}") from exc
