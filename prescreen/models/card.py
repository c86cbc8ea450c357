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


class OperatingPointSpec(BaseModel):
    """One operating point of a model, as chosen on validation data."""

    threshold: float
    criterion: str = Field(description="how it was chosen, e.g. 'Youden J' or 'sensitivity >= 0.95'")
    sensitivity: float | None = None
    specificity: float | None = None
    sensitivity_wilson_low: float | None = Field(
        None, description="Wilson 95 % lower bound of the sensitivity at this threshold"
    )
    positives: int = Field(0, description="flagged-class records the sensitivity rests on")
    negatives: int = 0
    chosen_on: str = ""


class Calibration(BaseModel):
    """Temperature scaling of the class probabilities, fitted on validation data."""

    method: str = "temperature"
    temperature: float = Field(gt=0)
    fitted_on: str
    ece_before: float | None = None
    ece_after: float | None = None
    reliability: list[dict[str, float]] = Field(
        default_factory=list, description="per score bin: mean score, observed flag rate, count (after calibration)"
    )


class ScoreReference(BaseModel):
    """The validation distribution of the flag score, in fixed bins: in-service drift (PSI) is
    measured against it."""

    edges: list[float]
    proportions: list[float]
    n: int
    measured_on: str


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
    operating_points: dict[str, OperatingPointSpec] = Field(default_factory=dict)
    calibration: Calibration | None = None
    score_reference: ScoreReference | None = None
    shift: dict[str, Any] = Field(
        default_factory=dict,
        description="'prevalence': metrics re-weighted to other prevalences; 'perturbations': metrics "
        "under what a new site brings (noise, contrast, gain ...); 'novelty' (image tasks with a test part): "
        "test figures by pHash distance from the training side",
    )
    validation_scheme: str = Field("", description="how the validation data was split off (grouping, folds)")

    def thresholds(self) -> dict[str, float]:
        """Threshold per operating point; a card from before operating points has one threshold,
        which then serves as both."""
        if self.operating_points:
            return {name: spec.threshold for name, spec in self.operating_points.items()}
        return {"balanced": self.operating_threshold, "safety": self.operating_threshold}

    def missing_for_release(self) -> list[str]:
        """What a card still lacks before its model may be promoted (empty: complete)."""
        missing = [k for k in ("balanced", "safety") if k not in self.operating_points]
        if self.calibration is None:
            missing.append("calibration")
        if self.score_reference is None:
            missing.append("score reference distribution")
        if "prevalence" not in self.shift:
            missing.append("prevalence table")
        if "perturbations" not in self.shift:
            missing.append("perturbation table")
        if self.validation is None:
            missing.append("validation evaluation")
        return missing

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
