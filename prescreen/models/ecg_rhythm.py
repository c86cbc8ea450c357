"""The ``ecg-rhythm`` task: single-lead rhythm screening (CinC 2017 classes)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np

from prescreen.datasets.collections import LabelledSet, load_cinc2017
from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.files import ECG_SOP_CLASSES
from prescreen.datasets.readers import read_ecg_files
from prescreen.datasets.transforms import CropOrPad, FloatArray, Windows, assess_ecg, augment_ecg, ecg_preprocess
from prescreen.domain import FileKind, RecordLength
from prescreen.errors import NotAssessableError
from prescreen.models.networks import ResNet1d
from prescreen.models.task import Accepts, Task, register

FS = 150.0
WINDOW_S = 30
LENGTH = int(FS * WINDOW_S)
CLASSES = ("normal", "af", "other", "noisy")
INPUT_SPEC = {
    "kind": "ecg",
    "leads": "lead II of a multi-lead record, else the only lead",
    "sampling_rate_hz": FS,
    "window_samples": LENGTH,
    "window_stride_samples": LENGTH // 2,
    "filter": "Butterworth band-pass 0.5-40 Hz, zero phase",
    "normalisation": "per-record z-score, clipped to +-20",
    "aggregation": "mean of class probabilities over windows",
    "tensor": "float32 (batch, 1, window_samples)",
}
_PREPROCESS = ecg_preprocess(FS)
CAVEATS = (
    "Trained and measured on single-lead handheld (AliveCor) recordings of CinC 2017; 12-lead and Holter "
    "records are screened on lead II, a use the training data does not cover.",
    "CinC 2017 has no patient ids: the record is the unit of the split.",
    "The 'other' rhythm class is heterogeneous; most errors are normal <-> other confusions.",
    "The flag-accuracy target of 0.95 is not met on held-out data; treat the flag as triage support only.",
)


def _train_view(x: FloatArray, rng: np.random.Generator) -> FloatArray:
    return augment_ecg(CropOrPad(LENGTH)(x, rng), rng)[None, :]


def _load(folder: Path, cache_dir: Path | None, progress: bool, purpose: str = "eval") -> LabelledSet:
    spec = {k: v for k, v in INPUT_SPEC.items() if k != "aggregation"}
    return load_cinc2017(folder, CLASSES, _PREPROCESS, spec, cache_dir, progress)


def read_for_screening(files: Mapping[str, bytes]) -> EcgRecord:
    """Read an uploaded ECG and refuse one without content to judge (``NotAssessableError``)."""
    record = read_ecg_files(files)
    reason = assess_ecg(record)
    if reason is not None:
        raise NotAssessableError(f"not assessable: {reason}")
    return record


@register("ecg-rhythm")
def ecg_rhythm() -> Task:
    return Task(
        name="ecg-rhythm",
        classes=CLASSES,
        normal_classes=("normal",),
        input_spec=INPUT_SPEC,
        default_data="cinc2017",
        accepts=Accepts(
            (FileKind.WFDB, FileKind.DICOM_WAVEFORM), sop_classes=tuple(ECG_SOP_CLASSES), length=RecordLength.SHORT
        ),
        read_files=read_for_screening,
        preprocess=_PREPROCESS,
        windows=Windows(LENGTH, LENGTH // 2),
        train_view=_train_view,
        build_network=partial(ResNet1d, len(CLASSES), (32, 64, 96, 128, 160), 2),
        load_dataset=_load,
        caveats=CAVEATS,
        f1_unscored=("noisy",),
        train_defaults={"epochs": 35, "batch_size": 64, "lr": 2e-3, "patience": 8, "weight_decay": 1e-3},
    )
