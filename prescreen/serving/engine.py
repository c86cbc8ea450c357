"""The screening engine: active models of every task, loaded once, and the choice of task."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom

from prescreen.config import get_settings
from prescreen.datasets.readers import ECG_SOP_CLASSES, is_dicom
from prescreen.errors import (
    ExplanationNotFoundError,
    InvalidStudyError,
    ModelError,
    UnknownTaskError,
    UnsupportedStudyError,
)
from prescreen.models.explain import occlusion_map, save_overlay
from prescreen.models.onnx_model import FloatArray, OnnxModel, ScreenResult
from prescreen.models.store import ModelStore
from prescreen.models.task import task_names


def route_task(files: Mapping[str, bytes], requested: str | None = None) -> str:
    """Which task screens these files: the requested one, else by content.

    WFDB records and DICOM ECG waveforms → ``ecg-rhythm``; DICOM ``US`` → ``breast-us``;
    DICOM ``CR``/``DX`` of the chest (or with no body part) → ``chest-xray``. PNG/JPEG carry no
    such context and need ``requested``.

    Raises:
        InvalidStudyError: no file, an unreadable DICOM, or a PNG/JPEG without a task.
        UnsupportedStudyError: no task covers the files' content.
    """
    if requested:
        return requested
    if not files:
        raise InvalidStudyError("no file was sent; send the study as multipart field 'file'")
    names = [n.lower() for n in files]
    if any(n.endswith(".hea") for n in names):
        return "ecg-rhythm"
    for name, data in files.items():
        if is_dicom(data) or name.lower().endswith(".dcm"):
            return _route_dicom(name, data)
    if any(n.endswith(RASTER_SUFFIXES) for n in names) or any(d.startswith(RASTER_MAGIC) for d in files.values()):
        raise InvalidStudyError("a PNG/JPEG study needs a 'task' field (chest-xray or breast-us)")
    raise UnsupportedStudyError(
        "no model screens this study: send a WFDB record, a DICOM (ECG, US, chest CR/DX), "
        "or a PNG/JPEG with a 'task' field"
    )


EXPLANATION_ID = re.compile(r"^[0-9a-f]{32}$")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def _route_dicom(name: str, data: bytes) -> str:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise InvalidStudyError(f"file {name!r} is not a readable DICOM file: {exc}") from exc
    if str(ds.get("SOPClassUID", "")) in ECG_SOP_CLASSES:
        return "ecg-rhythm"
    modality = str(ds.get("Modality", "")) or "unknown"
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if modality == "US":
        return "breast-us"
    if modality in ("CR", "DX") and body_part in ("", "CHEST"):
        return "chest-xray"
    part = f" of body part {body_part}" if body_part else ""
    raise UnsupportedStudyError(f"no model screens DICOM modality {modality}{part}")


class ScreeningEngine:
    """Holds one ``OnnxModel`` per task with an active model.

    Args:
        store: the model store; the active model of each known task is loaded.

    Raises:
        ModelError: no task has an active model.
    """

    def __init__(self, store: ModelStore, explanations_dir: Path | None = None) -> None:
        self.store = store
        self.explanations_dir = explanations_dir
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
        empty = [n for n, data in files.items() if not data]
        if empty:
            raise InvalidStudyError(f"file {empty[0]!r} is empty")
        name = route_task(files, task)
        model = self.models.get(name)
        if model is None and name not in task_names():
            raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
        if model is None:
            raise UnsupportedStudyError(f"no active model for task {name!r}; known: {', '.join(self.models)}")
        x = model.task.preprocess(model.task.read_files(files))
        result = model.screen_signal(x)
        if result.flagged and model.task.input_spec.get("kind") == "image" and self.explanations_dir:
            name = self._keep_for_explanation(x[0], result)
            result = dataclasses.replace(result, explanation_url=f"/v1/explanations/{name}.png")
        return result

    def _keep_for_explanation(self, frame: FloatArray, result: ScreenResult) -> str:
        """Keep the model input of a flagged image; the overlay is drawn when first asked for."""
        assert self.explanations_dir is not None
        self.explanations_dir.mkdir(parents=True, exist_ok=True)
        self._expire_explanations()
        name = uuid.uuid4().hex
        np.save(self.explanations_dir / f"{name}.npy", frame)
        title = f"{result.task}: {result.label} (score {result.score:.2f})"
        (self.explanations_dir / f"{name}.json").write_text(json.dumps({"task": result.task, "title": title}))
        return name

    def _expire_explanations(self) -> None:
        """Delete explanation inputs and overlays older than the TTL: they are patient images."""
        assert self.explanations_dir is not None
        cutoff = time.time() - get_settings().explanation_ttl_hours * 3600
        for path in self.explanations_dir.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue

    def explanation_png(self, name: str) -> Path:
        """The overlay PNG of a flagged image, drawn on first request (occlusion sensitivity).

        Raises:
            ExplanationNotFoundError: no such explanation.
        """
        folder = self.explanations_dir
        if folder is None or not EXPLANATION_ID.fullmatch(name) or not (folder / f"{name}.json").is_file():
            raise ExplanationNotFoundError(f"no explanation {name!r}")
        png = folder / f"{name}.png"
        if not png.is_file():
            meta = json.loads((folder / f"{name}.json").read_text())
            model = self.models.get(meta["task"])
            if model is None:
                raise ExplanationNotFoundError(f"the model of explanation {name!r} is no longer loaded")
            frame = np.load(folder / f"{name}.npy")
            with self._lock:
                save_overlay(frame, occlusion_map(model, frame), png, meta["title"])
        return png
