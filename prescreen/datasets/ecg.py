"""The in-memory ECG record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from prescreen.errors import InvalidStudyError


@dataclass(frozen=True)
class EcgRecord:
    """An ECG as leads × samples in millivolts.

    Args:
        signal: float32 array of shape ``(leads, samples)`` in mV.
        fs: sampling rate in Hz.
        lead_names: one name per lead (``"II"``, ``"ECG"``, ...).
        source: free metadata about where the record came from (format, record name);
            never patient-identifying data.

    Raises:
        InvalidStudyError: when the shapes, rate or values make no ECG.
    """

    signal: npt.NDArray[np.float32]
    fs: float
    lead_names: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.signal.ndim != 2:
            raise InvalidStudyError(f"expected an ECG of shape (leads, samples), got {self.signal.ndim} dimensions")
        if not np.isfinite(self.fs) or self.fs <= 0:
            raise InvalidStudyError(f"sampling rate must be a positive number, got {self.fs}")
        if len(self.lead_names) != self.signal.shape[0]:
            raise InvalidStudyError(f"{self.signal.shape[0]} leads but {len(self.lead_names)} lead names")
        if self.signal.shape[1] == 0:
            raise InvalidStudyError("the record has no samples")

    @property
    def n_leads(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs
