"""The screening engine: the active model of every task, loaded once; a study's files → its task
(by the tasks' declarations) → ONNX → ``Finding``; explanation overlays of flagged images; the
shadow (candidate) model of a task, picked up while running when ``shadow.json`` changes."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from prescreen.config import get_settings
from prescreen.datasets.files import StudyFiles, study_files
from prescreen.domain import Finding
from prescreen.errors import (
    ExplanationNotFoundError,
    InvalidStudyError,
    ModelError,
    NotAssessableError,
    PrescreenError,
    StudyTooLargeError,
    UnknownTaskError,
    UnsupportedStudyError,
)
from prescreen.models.explain import occlusion_map, overlay_png
from prescreen.models.model_store import ModelStore
from prescreen.models.onnx_model import FloatArray, OnnxModel
from prescreen.models.routing import route_task
from prescreen.models.task import Progress, task_names
from prescreen.security.keyring import keyring_for

EXPLANATION_ID = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger(__name__)


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file from the last one seen: mtime, inode (an atomic replace makes a
    new one) and size; ``None`` when there is no file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_ino, st.st_size


def _check_duration(study: object, max_seconds: float | None) -> None:
    duration = getattr(study, "duration_s", None)
    if max_seconds is not None and duration is not None and duration > max_seconds:
        raise StudyTooLargeError(
            f"the record lasts {duration / 60:.0f} min; /v1/screen screens records of this kind up to "
            f"{max_seconds / 60:.0f} min in the request: send it to /v1/studies, which screens it in the queue"
        )


def split_instances(files: StudyFiles) -> list[list[str]]:
    """The instances of a study, each as the names of its files: a WFDB record is one instance (its
    header with its signal files); any other file is one instance of its own, in name order."""
    names = sorted(files)
    if any(name.lower().endswith(".hea") for name in names):
        return [names]
    return [[name] for name in names]


def sample_instances(total: int, budget: int) -> list[int]:
    """Indices of the instances to screen: all of them within ``budget``, else ``budget`` of them
    evenly spaced from first to last (a representative sample, in order)."""
    if total <= budget:
        return list(range(total))
    if budget == 1:
        return [0]
    return sorted({round(i * (total - 1) / (budget - 1)) for i in range(budget)})


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
        #: the shadow model of each task that has one, by task; and its tag
        self.shadow_models: dict[str, OnnxModel] = {}
        self._shadow_tags: dict[str, str] = {}
        self._shadow_stamp: tuple[int, int, int] | None = None
        self._shadow_lock = threading.Lock()
        self.refresh_shadows()

    def screen(
        self,
        files: Mapping[str, bytes],
        task: str | None = None,
        *,
        in_request: bool = False,
        progress: Progress | None = None,
    ) -> Finding:
        """Screen one study: each instance (every frame of it), within the per-study budget; the
        finding is that of the instance with the highest flag score, naming it and how many were
        screened (raises ``InvalidStudyError`` / ``UnsupportedStudyError``). A task that analyses
        whole records (``holter``) analyses the study's one record instead.

        Args:
            files: the study's files by name.
            task: the task to use; chosen from the content when ``None``.
            in_request: screened while an HTTP request waits (``/v1/screen``): a record longer than
                ``PRESCREEN_MAX_SCREEN_RECORD_SECONDS`` (``..._HOLTER_SECONDS`` for an ambulatory
                record) is refused with ``StudyTooLargeError`` before it is screened.
            progress: told the fraction of a whole-record analysis done so far.
        """
        if not files:
            raise InvalidStudyError("no file was sent; send the study as multipart field 'file'")
        empty = [n for n, data in files.items() if not data]
        if empty:
            raise InvalidStudyError(f"file {empty[0]!r} is empty")
        files = study_files(files)
        name = route_task(files, task)
        model = self.models.get(name)
        if model is None and name not in task_names():
            raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
        if model is None:
            raise UnsupportedStudyError(f"no active model for task {name!r}; known: {', '.join(self.models)}")
        settings = get_settings()
        if model.task.analyse is not None:
            limit = settings.max_screen_holter_seconds if in_request else None
            return self._analyse_with(model, files, limit, progress)
        result, x = self._screen_with(model, files, settings.max_screen_record_seconds if in_request else None)
        if result.flagged and model.task.input_spec.get("kind") == "image" and self.explanations_dir:
            name = self._keep_for_explanation(x[0], result)
            result = dataclasses.replace(result, explanation_url=f"/v1/explanations/{name}.png")
        return result

    def _screen_with(
        self, model: OnnxModel, files: StudyFiles, max_seconds: float | None
    ) -> tuple[Finding, FloatArray]:
        """Screen a study's instances with ``model``: the finding of the highest-scoring instance
        (with how many were screened and the seconds taken) and that instance's model input."""
        started = time.monotonic()
        instances = split_instances(files)
        chosen = sample_instances(len(instances), get_settings().max_instances_per_study)
        screened: list[tuple[Finding, FloatArray]] = []
        not_assessable: list[NotAssessableError] = []
        for index in chosen:
            part = files.subset(instances[index])
            try:
                study = model.task.read_files(part)
                _check_duration(study, max_seconds)
                x = model.task.preprocess(study)
            except NotAssessableError as exc:  # one blank image of many: the others decide
                not_assessable.append(exc)
                continue
            finding = model.screen_signal(x)
            screened.append((dataclasses.replace(finding, instance_uid=part.instance_uid(instances[index][0])), x))
        if not screened:
            raise not_assessable[0]
        result, x = max(screened, key=lambda pair: pair[0].score)  # the first of equal scores
        result = dataclasses.replace(
            result,
            instances_screened=len(screened),
            instances_total=len(instances),
            seconds=round(time.monotonic() - started, 4),
        )
        return result, x

    def _analyse_with(
        self, model: OnnxModel, files: StudyFiles, max_seconds: float | None, progress: Progress | None
    ) -> Finding:
        """Analyse a study's one long record as a whole (``holter``)."""
        started = time.monotonic()
        record = model.task.read_files(files)
        _check_duration(record, max_seconds)
        result = model.analyse_record(record, progress)
        return dataclasses.replace(result, seconds=round(time.monotonic() - started, 4))

    # -- shadow models ---------------------------------------------------------------------
    def refresh_shadows(self) -> None:
        """Load or drop shadow models when ``shadow.json`` changed since the last look (one ``stat``
        when it did not), so ``prescreen models shadow`` takes effect in a running service at its
        next job. A shadow model that cannot be loaded is logged and left out: it never stops the
        service."""
        stamp = _file_stamp(self.store.shadow_file)
        if stamp == self._shadow_stamp:
            return
        with self._shadow_lock:
            if stamp == self._shadow_stamp:
                return
            models: dict[str, OnnxModel] = {}
            tags: dict[str, str] = {}
            for name in task_names():
                try:
                    stored = self.store.shadow(name)
                    if stored is None:
                        continue
                    loaded = self.shadow_models.get(name)
                    keep = loaded is not None and self._shadow_tags.get(name) == stored.tag
                    models[name] = loaded if keep and loaded else OnnxModel(stored.onnx_path, stored.card)
                    tags[name] = stored.tag
                except PrescreenError as exc:
                    log.warning("shadow model of %s not loaded: %s", name, exc)
            if tags != self._shadow_tags:
                log.info("shadow models now: %s", ", ".join(f"{t} {tag}" for t, tag in sorted(tags.items())) or "none")
            self.shadow_models, self._shadow_tags, self._shadow_stamp = models, tags, stamp

    def shadow_tag(self, task: str) -> str | None:
        """``NAME:VERSION`` of the shadow model the engine holds for ``task`` (after a refresh)."""
        self.refresh_shadows()
        return self._shadow_tags.get(task)

    def shadow_screen(self, task: str) -> Callable[[Mapping[str, bytes]], Finding] | None:
        """A function that screens a series' files with the shadow model of ``task`` (its finding
        marked ``shadow``, no explanation kept), or ``None`` when the task has no shadow model."""
        self.refresh_shadows()
        model = self.shadow_models.get(task)
        if model is None:
            return None
        return functools.partial(self._screen_shadow, model)

    def _screen_shadow(self, model: OnnxModel, files: Mapping[str, bytes]) -> Finding:
        result, _ = self._screen_with(model, study_files(files), None)
        return dataclasses.replace(result, shadow=True)

    def _keep_for_explanation(self, frame: FloatArray, result: Finding) -> str:
        """Keep the model input of a flagged image; the overlay is drawn when first asked for."""
        assert self.explanations_dir is not None
        self.explanations_dir.mkdir(parents=True, exist_ok=True)
        self._expire_explanations()
        name = uuid.uuid4().hex
        buffer = io.BytesIO()
        np.save(buffer, frame)
        # the model input is a patient image: sealed at rest like every blob (SM4-GCM, the name as AAD)
        sealed = keyring_for(get_settings()).seal(buffer.getvalue(), name.encode())
        (self.explanations_dir / f"{name}.npy.sm4").write_bytes(sealed)
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

    def explanation_png(self, name: str) -> bytes:
        """The overlay PNG of a flagged image, drawn on first request (occlusion sensitivity) and kept
        sealed (SM4-GCM) until it expires.

        Raises:
            ExplanationNotFoundError: no such explanation.
        """
        folder = self.explanations_dir
        if folder is None or not EXPLANATION_ID.fullmatch(name) or not (folder / f"{name}.json").is_file():
            raise ExplanationNotFoundError(f"no explanation {name!r}")
        keyring = keyring_for(get_settings())
        png = folder / f"{name}.png.sm4"
        if png.is_file():
            return keyring.open(png.read_bytes(), f"{name}.png".encode())
        meta = json.loads((folder / f"{name}.json").read_text())
        model = self.models.get(meta["task"])
        if model is None:
            raise ExplanationNotFoundError(f"the model of explanation {name!r} is no longer loaded")
        frame = np.load(io.BytesIO(keyring.open((folder / f"{name}.npy.sm4").read_bytes(), name.encode())))
        with self._lock:
            drawn = overlay_png(frame, occlusion_map(model, frame), meta["title"])
        temp = png.with_suffix(".tmp")
        temp.write_bytes(keyring.seal(drawn, f"{name}.png".encode()))
        temp.replace(png)
        return drawn
