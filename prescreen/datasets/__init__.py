"""What a study is in memory, and how files become one."""

from __future__ import annotations

from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.readers import read_dicom_ecg, read_ecg_files, read_wfdb

__all__ = ["EcgRecord", "read_dicom_ecg", "read_ecg_files", "read_wfdb"]
