"""The screening engine: active models of every task, loaded once, and the choice of task."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping

import pydicom

from prescreen.datasets.readers import ECG_SOP_CLASSES, is_dicom
from prescreen.errors import InvalidStudyError, ModelError, UnsupportedStudyError
from prescreen.models.onnx_model import OnnxModel, ScreenResult
from prescreen.models.store import ModelStore
from prescreen.models.task import task_names


def route_task(files: Mapping[str, bytes], requested: str | None = None) -> str:
    """Which task screens these files: the requested one, else by content.

    WFDB records and DICOM ECG waveforms go to ``ecg-rhythm``.

    Raises:
        UnsupportedStudyError: no task covers the files' content.
    """
    if requested:
        return requested
    names = [n.lower() for n in files]
    if any(n.endswith(".hea") for n in names):
        return "ecg-rhythm"
    for name, data in files.items():
        if is_dicom(data) or name.lower().endswith(".dcm"):
            try:
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            except Exception as exc:
                raise InvalidStudyError(f"file {name!r} is not a readable DICOM file: {exc}") from exc
            if str(ds.get("SOPClassUID", "")) in ECG_SOP_CLASSES:
                return "ecg-rhythm"
            raise UnsupportedStudyError(
                f"no model screens DICOM modality {ds.get('Modality', 'unknown')} "
                f"(SOP class {ds.get('SOPClassUID', 'missing')})"
            )
    raise UnsupportedStudyError(
        "no model screens this study: send a WFDB record (.hea + .dat/.mat) or a DICOM ECG waveform"
    )


class ScreeningEngine:
    """Holds one ``OnnxModel`` per task with an active model.

    Args:
        store: the model store; the active model of each known task is loaded.

    Raises:
        ModelError: no task has an active model.
    """

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: dict[str, OnnxModel] = {}
        self._lock = threading.Lock()
        for name in task_names():
            try:
                stored = store.active(name)
            except ModelError:
                continue
            model = OnnxModel(stored.onnx_path, stored.card)
            self.models[name] = model
        if not self.models:
            raise ModelError("no active model for any task; export and activate one first")

    def screen(self, files: Mapping[str, bytes], task: str | None = None) -> ScreenResult:
        """Screen one study (raises ``InvalidStudyError`` / ``UnsupportedStudyError``)."""
        if not files:
            raise InvalidStudyError("no file was sent; send the study as multipart field 'file'")
        name = route_task(files, task)
        model = self.models.get(name)
        if model is None:
            raise UnsupportedStudyError(f"no active model for task {name!r}; known: {', '.join(self.models)}")
        return model.screen_files(files)
