"""The model store: BentoML's, under ``$PRESCREEN_HOME/bentoml``, plus which model is active.

Each stored model holds ``model.onnx`` and ``card.json``; the card also rides along as the
BentoML model's metadata. ``active.json`` in the prescreen home names one model per task;
``shadow.json`` names the shadow (candidate) model of a task, screened beside the active one on live
studies and never routed.
Shipped default models (``prescreen/shipped/<task>/``) are imported, and activated, the first
time the store is used.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prescreen.config import Settings, get_settings
from prescreen.errors import ModelError
from prescreen.models.card import Evaluation, ModelCard
from prescreen.models.onnx_model import sha256_file

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "shipped"


@dataclass(frozen=True)
class StoredModel:
    tag: str
    task: str
    path: Path
    card: ModelCard
    active: bool

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"


def _bentoml() -> Any:
    import bentoml  # imported late: BENTOML_HOME must be set first (get_settings does it)

    return bentoml


class ModelStore:
    """Add, list, activate and look up models.

    Args:
        settings: where the home is; defaults to the process settings.
        import_shipped: import the shipped default models on first use.
    """

    def __init__(self, settings: Settings | None = None, import_shipped: bool = True) -> None:
        self.settings = settings or get_settings()
        self.active_file = self.settings.home / "active.json"
        self.shadow_file = self.settings.home / "shadow.json"
        self.settings.home.mkdir(parents=True, exist_ok=True)
        from bentoml._internal.models import ModelStore as BentoModelStore

        models_dir = self.settings.bentoml_home / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        # an explicit store (not BentoML's process-wide singleton) so the home follows settings
        self._bento_store = BentoModelStore(str(models_dir))
        if import_shipped:
            self.ensure_shipped()

    # -- active models ---------------------------------------------------------------------
    def _active(self) -> dict[str, str]:
        if not self.active_file.is_file():
            return {}
        try:
            data = json.loads(self.active_file.read_text())
        except ValueError as exc:
            raise ModelError(f"{self.active_file} is corrupt ({exc}); fix or delete it and activate again") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ModelError(f"{self.active_file} is not a task → NAME:VERSION map; fix or delete it")
        return data

    def _write_active(self, active: dict[str, str]) -> None:
        tmp = self.active_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(active, indent=2, sort_keys=True))
        tmp.replace(self.active_file)

    def activate(self, task: str, tag: str) -> StoredModel:
        """Make ``tag`` the active model of ``task``.

        Raises:
            ModelError: no such model, or it belongs to another task.
        """
        model = self.get(tag)
        if model.task != task:
            raise ModelError(f"model {tag} is a {model.task} model, not {task}")
        active = self._active()
        active[task] = model.tag
        self._write_active(active)
        return self.get(model.tag)

    def active(self, task: str) -> StoredModel:
        """The active model of ``task``.

        Raises:
            ModelError: the task has no active model.
        """
        tag = self._active().get(task)
        if tag is None:
            raise ModelError(f"no active model for task {task}; export one and run 'prescreen models activate'")
        return self.get(tag)

    def active_tag(self, task: str) -> str | None:
        """``NAME:VERSION`` of the active model of ``task``, ``None`` when it has none."""
        return self._active().get(task)

    # -- shadow models ---------------------------------------------------------------------
    def _shadows(self) -> dict[str, str]:
        if not self.shadow_file.is_file():
            return {}
        try:
            data = json.loads(self.shadow_file.read_text())
        except ValueError as exc:
            raise ModelError(f"{self.shadow_file} is corrupt ({exc}); fix or delete it, then set the shadow") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ModelError(f"{self.shadow_file} is not a task → NAME:VERSION map; fix or delete it")
        return data

    def _write_shadows(self, shadows: dict[str, str]) -> None:
        tmp = self.shadow_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(shadows, indent=2, sort_keys=True))
        tmp.replace(self.shadow_file)  # atomic: a running service never reads half a file

    def set_shadow(self, task: str, tag: str) -> StoredModel:
        """Make ``tag`` the shadow model of ``task``: it screens every live study of the task beside
        the active model; its findings are stored, never routed. Replaces an earlier shadow.

        Raises:
            ModelError: no such model, it belongs to another task, or it is the active model.
        """
        model = self.get(tag)
        if model.task != task:
            raise ModelError(f"model {tag} is a {model.task} model, not {task}")
        if model.active:
            raise ModelError(f"model {model.tag} is the active {task} model; a shadow must be another model")
        shadows = self._shadows()
        shadows[task] = model.tag
        self._write_shadows(shadows)
        return model

    def clear_shadow(self, task: str) -> str | None:
        """Stop shadowing ``task``; returns the tag of the shadow model it had, if any."""
        shadows = self._shadows()
        previous = shadows.pop(task, None)
        if previous is not None:
            self._write_shadows(shadows)
        return previous

    def shadow_tag(self, task: str) -> str | None:
        """``NAME:VERSION`` that ``shadow.json`` names for ``task``, as written (even if since removed)."""
        return self._shadows().get(task)

    def shadow(self, task: str) -> StoredModel | None:
        """The shadow model of ``task``, or ``None``: none set, or it has since become the active
        model (a model never shadows itself).

        Raises:
            ModelError: the shadow model named is no longer in the store, or the file is corrupt.
        """
        tag = self.shadow_tag(task)
        if tag is None:
            return None
        model = self.get(tag)
        return None if model.active else model

    # -- models ----------------------------------------------------------------------------
    def add(self, onnx_path: Path, card: ModelCard, source: str = "export") -> StoredModel:
        """Copy an ONNX file and its card into the store; returns the stored model (version set)."""
        bentoml = _bentoml()
        labels = {"task": card.task, "source": source}
        with bentoml.models.create(
            card.name, labels=labels, metadata=_metadata(card), _model_store=self._bento_store
        ) as bm:
            shutil.copyfile(onnx_path, bm.path_of("model.onnx"))
            stored_card = card.model_copy(update={"version": bm.tag.version})
            stored_card.save(Path(bm.path_of("card.json")))
            tag = str(bm.tag)
        return self.get(tag)

    def get(self, tag: str) -> StoredModel:
        """A stored model by ``name:version`` (or ``name`` for its latest).

        Raises:
            ModelError: not found, or its card is unreadable.
        """
        bentoml = _bentoml()
        try:
            bm = bentoml.models.get(tag, _model_store=self._bento_store)
        except Exception as exc:
            raise ModelError(f"model {tag} not found in the model store") from exc
        path = Path(bm.path)
        card = ModelCard.load(path / "card.json")
        full = str(bm.tag)
        return StoredModel(full, card.task, path, card, self._active().get(card.task) == full)

    def list(self, task: str | None = None) -> list[StoredModel]:
        bentoml = _bentoml()
        out: list[StoredModel] = []
        for bm in bentoml.models.list(_model_store=self._bento_store):
            try:
                model = self.get(str(bm.tag))
            except ModelError:
                continue
            if task is None or model.task == task:
                out.append(model)
        return sorted(out, key=lambda m: (m.task, m.card.created), reverse=False)

    def record_evaluation(self, tag: str, evaluation: Evaluation) -> None:
        """Append an evaluation to the stored model's card, so ``models list`` shows it."""
        model = self.get(tag)
        card = model.card.model_copy(update={"evaluations": [*model.card.evaluations, evaluation]})
        card.save(model.path / "card.json")

    def ensure_shipped(self) -> None:
        """Import each shipped model not yet in the store; activate it where a task has none."""
        if not SHIPPED_DIR.is_dir():
            return
        active = self._active()
        for folder in sorted(p for p in SHIPPED_DIR.iterdir() if (p / "card.json").is_file()):
            card = ModelCard.load(folder / "card.json")
            digest = card.onnx.get("sha256")
            marker = self.settings.home / f".shipped-{card.task}-{str(digest)[:16]}"
            if marker.exists():
                continue
            if digest and sha256_file(folder / "model.onnx") != digest:
                raise ModelError(f"shipped model {folder.name} does not match its card: reinstall prescreen")
            existing = [m for m in self.list(card.task) if m.card.onnx.get("sha256") == digest]
            model = existing[0] if existing else self.add(folder / "model.onnx", card, source="shipped")
            if card.task not in active:
                active[card.task] = model.tag
                self._write_active(active)
            marker.touch()


def _metadata(card: ModelCard) -> dict[str, Any]:
    """The card as BentoML metadata (plain JSON types only)."""
    data: dict[str, Any] = _strip_none(json.loads(card.model_dump_json(exclude={"evaluations"})))
    return data


def _strip_none(value: Any) -> Any:
    """BentoML metadata refuses ``None``: drop such entries at every depth."""
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value if v is not None]
    return value
