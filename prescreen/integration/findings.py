"""What the results-out paths (DICOM SR, FHIR) receive: one screened series, plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Finding:
    """The AI result of one series.

    Args:
        series_uid: Series Instance UID of the screened series.
        task: the task that screened it (``ecg-rhythm``, ``chest-xray``, ``breast-us``).
        model_name: name of the model (its card's ``name``).
        model_version: version of the model.
        flagged: whether the score reached the operating threshold (abnormal).
        label: the most likely class.
        score: the abnormality score in [0, 1].
        threshold: the operating threshold of the model.
        probabilities: probability of each class.
        created_at: when the result was made.
    """

    series_uid: str
    task: str
    model_name: str
    model_version: str
    flagged: bool
    label: str
    score: float
    threshold: float
    probabilities: dict[str, float] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True)
class StudySummary:
    """The study a report is about (identifiers only; patient fields may be absent)."""

    id: str
    study_uid: str
    status: str
    patient_id: str | None = None
    patient_name: str | None = None
    institution: str | None = None
