"""Shadow mode in the screening step, with real parts: the shipped ECG model active, a second real
ONNX model (the shipped file stored again as ``ecg-candidate`` with another operating threshold) as
the shadow, a real ``ScreeningEngine``, the real triage step and a real database and blob store.

Both findings are stored; the worklist is routed by the active finding only; a shadow set or
cleared by another ``ModelStore`` (as the CLI does) is picked up without restarting; a failing
shadow never fails the job."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from prescreen.config import Settings
from prescreen.domain import Finding, JobState
from prescreen.errors import ModelError
from prescreen.models.card import ModelCard
from prescreen.models.model_store import SHIPPED_DIR, ModelStore, StoredModel
from prescreen.pipeline.engine import ScreeningEngine
from prescreen.pipeline.loop import StepLoop
from prescreen.pipeline.screening import ScreeningStep, ShadowScreens
from prescreen.pipeline.triage import TriageStep
from prescreen.store.blobs import FileBlobStore
from prescreen.store.ingest import store_files
from prescreen.store.schema import Job, Result
from prescreen.store.schema_lifecycle import ShadowResult
from prescreen.store.schema_triage import WorklistItem
from prescreen.triage.priority import SlaTargets
from prescreen.triage.rules import load_default_rules
from tests.fixtures_ecg import write_cinc_folder

Sessions = sessionmaker[Session]
ECG = "ecg-rhythm"
PATIENT = "PID-SHADOW-7"


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic single-lead WFDB records (one of each CinC class)."""
    return write_cinc_folder(tmp_path_factory.mktemp("shadow-ecg"), n_per_class=1, seed=3)


def files_of(folder: Path, name: str) -> dict[str, bytes]:
    return {f"{name}{ext}": (folder / f"{name}{ext}").read_bytes() for ext in (".hea", ".dat")}


@pytest.fixture
def record(records: Path) -> dict[str, bytes]:
    """One record as uploaded files."""
    return files_of(records, "S00000")


def add_candidate(store: ModelStore, threshold: float) -> StoredModel:
    """The shipped ECG model's ONNX file stored again as another model, with its own threshold."""
    folder = SHIPPED_DIR / ECG
    card = ModelCard.load(folder / "card.json").model_copy(
        update={"name": "ecg-candidate", "operating_threshold": threshold, "operating_points": {}}
    )
    return store.add(folder / "model.onnx", card)


def loop(sessions: Sessions, blobs: FileBlobStore, engine: ScreeningEngine, shadow: ShadowScreens | None) -> StepLoop:
    settings = Settings(study_quiet_seconds=0, job_max_attempts=2)
    triage = TriageStep(sessions, load_default_rules(), SlaTargets())
    step = ScreeningStep(sessions, blobs, engine.screen, settings, shadow)
    return StepLoop("screening", [triage, step], poll_seconds=0.1)


def run_until_idle(worker: StepLoop) -> None:
    for _ in range(10):
        if not worker.run_round():
            return
    raise AssertionError("the worker kept finding work")


def upload(sessions: Sessions, blobs: FileBlobStore, files: Mapping[str, bytes]) -> str:
    return store_files(sessions, blobs, files, patient_id=PATIENT, institution="clinic-7")[0].study_id


def rows(sessions: Sessions) -> tuple[list[Result], list[ShadowResult], list[WorklistItem]]:
    with sessions() as s:
        return (
            list(s.scalars(select(Result).order_by(Result.created_at))),
            list(s.scalars(select(ShadowResult).order_by(ShadowResult.created_at))),
            list(s.scalars(select(WorklistItem).order_by(WorklistItem.created_at))),
        )


def test_shadow_screens_beside_the_active_model_and_never_routes(
    sessions: Sessions, blobs: FileBlobStore, records: Path, record: dict[str, bytes]
) -> None:
    store = ModelStore()
    active = store.active(ECG)
    engine = ScreeningEngine(store)
    assert engine.shadow_models == {}
    # a threshold on the other side of the active finding: the shadow's flag is the opposite one
    flagged_by_active = engine.screen(record).flagged
    candidate = add_candidate(ModelStore(), 1.5 if flagged_by_active else 0.0)
    worker = loop(sessions, blobs, engine, engine.shadow_screen)

    ModelStore().set_shadow(ECG, candidate.tag)  # as `prescreen models shadow` does, engine running
    study_id = upload(sessions, blobs, record)
    run_until_idle(worker)
    (result,), (shadow,), (item,) = rows(sessions)
    assert (result.model_name, result.model_version) == (active.card.name, active.card.version)
    assert f"{shadow.model_name}:{shadow.model_version}" == candidate.tag
    assert shadow.series_id == result.series_id and shadow.task == ECG
    assert shadow.score == pytest.approx(result.score)  # the same weights, another threshold
    assert (result.flagged, shadow.flagged) == (flagged_by_active, not flagged_by_active)
    assert shadow.seconds is not None and shadow.seconds > 0 and shadow.operating_points
    # the worklist is routed by the active finding alone
    assert item.study_id == study_id and item.task == ECG
    assert (item.flagged, item.label, item.score) == (result.flagged, result.label, result.score)

    ModelStore().clear_shadow(ECG)  # `--off`, engine still running
    upload(sessions, blobs, files_of(records, "S00001"))
    run_until_idle(worker)
    results, shadows, items = rows(sessions)
    assert (len(results), len(shadows), len(items)) == (2, 1, 2)
    assert engine.shadow_models == {}


def test_shadow_refused_for_another_task_or_the_active_model() -> None:
    store = ModelStore()
    with pytest.raises(ModelError, match="not chest-xray"):
        store.set_shadow("chest-xray", store.active(ECG).tag)
    with pytest.raises(ModelError, match="is the active"):
        store.set_shadow(ECG, store.active(ECG).tag)
    with pytest.raises(ModelError, match="not found"):
        store.set_shadow(ECG, "ecg-rhythm:nope")
    assert store.shadow(ECG) is None and store.clear_shadow(ECG) is None


def test_a_failing_shadow_does_not_fail_the_job(
    sessions: Sessions, blobs: FileBlobStore, record: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    engine = ScreeningEngine(ModelStore())
    calls: list[str] = []

    def broken(files: Mapping[str, bytes]) -> Finding:
        raise RuntimeError(f"model exploded on {PATIENT}")

    def shadow(task: str) -> Callable[[Mapping[str, bytes]], Finding] | None:
        calls.append(task)
        return broken

    worker = loop(sessions, blobs, engine, shadow)
    study_id = upload(sessions, blobs, record)
    with caplog.at_level(logging.INFO, logger="prescreen.pipeline.screening"):
        run_until_idle(worker)
    assert calls == [ECG]
    (result,), shadows, (item,) = rows(sessions)
    assert shadows == [] and item.study_id == study_id and item.flagged == result.flagged
    with sessions() as s:
        assert s.scalars(select(Job.state)).all() == [JobState.DONE]
    assert "shadow screening of job" in caplog.text and "RuntimeError" in caplog.text
    assert PATIENT not in caplog.text  # no patient data in the log


def test_a_shadow_model_that_cannot_load_is_left_out(
    sessions: Sessions, blobs: FileBlobStore, record: dict[str, bytes]
) -> None:
    store = ModelStore()
    candidate = add_candidate(store, 0.5)
    store.set_shadow(ECG, candidate.tag)
    candidate.onnx_path.write_bytes(b"not onnx any more")  # corrupt in the store
    engine = ScreeningEngine(store)  # starts all the same
    assert engine.shadow_models == {} and engine.shadow_screen(ECG) is None
    upload(sessions, blobs, record)
    run_until_idle(loop(sessions, blobs, engine, engine.shadow_screen))
    results, shadows, _ = rows(sessions)
    assert len(results) == 1 and shadows == []
