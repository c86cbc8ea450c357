"""Core types shared by every layer: the one ``Finding``, the study a report names, series and
instances, and the string vocabularies (states, priorities) as ``StrEnum``.

A ``StrEnum`` member *is* its string (``StudyStatus.SCREENED == "screened"``), so the values stored in
the database, sent in JSON and written in routing rules stay exactly what they were; the enums give
them one definition and a type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class StudyStatus(StrEnum):
    """Where a study is on its way: ``received → screening → screened | failed | unscreenable``; on
    an edge node ``received → forwarding → forwarded``."""

    RECEIVED = "received"
    SCREENING = "screening"
    SCREENED = "screened"
    FAILED = "failed"
    UNSCREENABLE = "unscreenable"
    FORWARDING = "forwarding"
    FORWARDED = "forwarded"


SCREENING_OUTCOMES: tuple[StudyStatus, ...] = (StudyStatus.SCREENED, StudyStatus.UNSCREENABLE, StudyStatus.FAILED)
"""Study statuses after screening ended; such a study is routed into worklists."""


class JobState(StrEnum):
    """A screening job (one series): ``pending → running → done | unscreenable | failed``."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    UNSCREENABLE = "unscreenable"
    FAILED = "failed"


OPEN_JOB_STATES: tuple[JobState, ...] = (JobState.PENDING, JobState.RUNNING)


class DeliveryKind(StrEnum):
    """What a delivery sends: the study's DICOM SR, or the whole study (edge forwarding)."""

    DICOM_SR = "dicom-sr"
    FORWARD = "forward"


class DeliveryState(StrEnum):
    """A delivery: ``pending → sending → delivered``, back to ``pending`` for a retry, or ``failed``
    after the last attempt."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ReviewState(StrEnum):
    """A worklist item under double review (see :mod:`prescreen.triage.review`)."""

    UNREAD = "unread"
    CLAIMED = "claimed"
    DRAFT = "draft"
    AWAITING_REVIEW = "awaiting_review"
    RETURNED = "returned"
    FINAL = "final"


class Priority(StrEnum):
    """A worklist item's priority, most urgent first (see :mod:`prescreen.triage.priority`)."""

    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        """0 for stat (most urgent), 1 for urgent, 2 for routine."""
        return list(Priority).index(self)


class OrderPriority(StrEnum):
    """The priority of the order a study was made for, as stored and shown.

    Senders spell it in several vocabularies (DICOM Requested Procedure Priority ``STAT``, ``HIGH``,
    ``ROUTINE``, ``MEDIUM``, ``LOW``; HL7 v2 table 0027 ``S``, ``A``, ``R``, ...; ``ASAP``, ``URGENT``);
    :meth:`parse` maps every one of them onto these five values, and :attr:`level` says which worklist
    priority the order asks for. The same value decides screening order: an order with a level (stat
    or urgent) is screened first.
    """

    STAT = "STAT"
    HIGH = "HIGH"
    ROUTINE = "ROUTINE"
    MEDIUM = "MEDIUM"
    LOW = "LOW"

    @classmethod
    def parse(cls, value: str | None) -> OrderPriority | None:
        """The order priority a sender's value means, ``None`` for none.

        Raises:
            ValueError: a value of no known vocabulary (the message lists the accepted ones).
        """
        if value is None or not value.strip():
            return None
        found = ORDER_PRIORITY_ALIASES.get(value.strip().upper())
        if found is None:
            aliases = [a for a in ORDER_PRIORITY_ALIASES if a not in cls.__members__]
            raise ValueError(f"order_priority must be one of {', '.join(cls)} (or {', '.join(aliases)})")
        return found

    @property
    def level(self) -> Priority | None:
        """The worklist priority this order asks for, or ``None`` when it asks for none."""
        return ORDER_LEVELS.get(self)

    @property
    def screened_first(self) -> bool:
        """Whether studies of this order go to the front of the screening queue."""
        return self.level is not None


ORDER_PRIORITY_ALIASES: dict[str, OrderPriority] = {
    "STAT": OrderPriority.STAT,
    "S": OrderPriority.STAT,
    "HIGH": OrderPriority.HIGH,
    "URGENT": OrderPriority.HIGH,
    "ASAP": OrderPriority.HIGH,
    "A": OrderPriority.HIGH,
    "ROUTINE": OrderPriority.ROUTINE,
    "R": OrderPriority.ROUTINE,
    "MEDIUM": OrderPriority.MEDIUM,
    "LOW": OrderPriority.LOW,
}
"""Every accepted spelling (upper case) → the stored value: DICOM (0040,1003) Requested Procedure
Priority and HL7 v2 table 0027 (S stat, A ASAP, R routine)."""

ORDER_LEVELS: dict[OrderPriority, Priority] = {OrderPriority.STAT: Priority.STAT, OrderPriority.HIGH: Priority.URGENT}
"""Orders that raise a routed priority; the others leave it as the rule says."""


@dataclass(frozen=True)
class SeriesRef:
    """A stored series and the context routing looks at."""

    id: str
    series_uid: str
    study_id: str
    modality: str | None = None
    body_part: str | None = None


@dataclass(frozen=True)
class InstanceRef:
    """One stored file of a series: the name it is read under and its blob."""

    file_name: str
    blob_key: str


class OperatingPointName(StrEnum):
    """The two decision thresholds every model carries (both chosen on validation data only).

    ``BALANCED`` maximizes a prevalence-independent criterion (Youden's J); a finding's ``flagged``
    is its decision. ``SAFETY`` is the highest threshold whose validation sensitivity is at least
    0.95, never above the balanced one, so it flags everything the balanced point flags and more.
    """

    BALANCED = "balanced"
    SAFETY = "safety"


@dataclass(frozen=True)
class OperatingPoint:
    """The decision of one operating point: its threshold and whether the score reached it."""

    threshold: float
    flagged: bool


def points_json(finding: Finding) -> dict[str, dict[str, float | bool]]:
    """A finding's operating points as stored and sent: ``{name: {"threshold", "flagged"}}``."""
    return {name: {"threshold": p.threshold, "flagged": p.flagged} for name, p in finding.operating_points.items()}


def points_from_json(data: object, score: float, threshold: float) -> dict[str, OperatingPoint]:
    """Operating points read back from storage; a result stored before operating points existed
    gets its one threshold as both points."""
    if isinstance(data, dict) and data:
        return {
            str(name): OperatingPoint(float(p["threshold"]), bool(p["flagged"]))
            for name, p in data.items()
            if isinstance(p, dict)
        }
    return {name.value: OperatingPoint(threshold, score >= threshold) for name in OperatingPointName}


@dataclass(frozen=True)
class Finding:
    """The AI result of one study or series: made by inference, stored, and shown as it is by the
    API, the pages, the DICOM SR and the FHIR report.

    Attributes:
        task: the task that screened it (``ecg-rhythm``, ``chest-xray``, ``breast-us``).
        model_name: the model's name (its card's ``name``).
        model_version: the model's version.
        flagged: whether the score reached the operating threshold (abnormal).
        label: the reported class, consistent with the flag.
        score: the abnormality score in [0, 1].
        threshold: the operating threshold of the model.
        probabilities: probability of each class.
        series_uid: Series Instance UID of the screened series, once stored.
        created_at: when the result was stored.
        explanation_url: where the explanation overlay of a flagged image is (``/v1/screen`` only).
        instance_uid: the instance whose score is the finding's (the highest of a multi-image
            series): its SOP Instance UID, or its file name for a file without one.
        instances_screened: how many instances were screened.
        instances_total: how many the series holds; more than screened when the per-study budget
            (``PRESCREEN_MAX_INSTANCES_PER_STUDY``) made the screening a representative sample.
        operating_points: the decision at each operating point (``balanced``, ``safety``);
            ``flagged`` is the balanced one.
        shadow: made by a shadow (candidate) model: stored beside the active model's finding,
            never routed or reported.
        seconds: how long the screening took (model inference of the series), when measured.
        summary: what a whole-record analysis found (``holter``: beat counts, heart rate, events),
            JSON-serialisable; ``None`` for the other tasks.
    """

    task: str
    model_name: str
    model_version: str
    flagged: bool
    label: str
    score: float
    threshold: float
    probabilities: dict[str, float] = field(default_factory=dict)
    series_uid: str | None = None
    created_at: datetime | None = None
    explanation_url: str | None = None
    instance_uid: str | None = None
    instances_screened: int = 1
    instances_total: int = 1
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    shadow: bool = False
    seconds: float | None = None
    summary: dict[str, Any] | None = None

    @property
    def sampled(self) -> bool:
        """Whether only a sample of the series' instances was screened."""
        return self.instances_screened < self.instances_total

    @property
    def flagged_safety(self) -> bool:
        """The decision at the safety point (the balanced flag where no safety point is known)."""
        point = self.operating_points.get(OperatingPointName.SAFETY)
        return self.flagged if point is None else point.flagged


@dataclass(frozen=True)
class StudySummary:
    """A stored study as a report names it: its id, Study Instance UID and status, and the patient
    (identifiers only; absent for a caller who may not see them)."""

    id: str
    study_uid: str
    status: str
    patient_id: str | None = None
    patient_name: str | None = None
    institution: str | None = None


class FileKind(StrEnum):
    """What kind of file a study was sent as; each ``Task`` declares the kinds it accepts."""

    WFDB = "wfdb"
    DICOM_WAVEFORM = "dicom-waveform"
    DICOM_IMAGE = "dicom-image"
    RASTER = "raster"


class RecordLength(StrEnum):
    """Short strips (rhythm screening) and long ambulatory recordings (Holter) go to different
    tasks; the border is ``PRESCREEN_HOLTER_MIN_SECONDS``."""

    SHORT = "short"
    LONG = "long"


@dataclass(frozen=True)
class DicomHeader:
    """What content routing reads of a DICOM header (parsed at receipt, or once when screening)."""

    sop_class_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
