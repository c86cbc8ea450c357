"""The promotion gate end to end, with real small trained models (no mocked scores).

Chest radiographs (PneumoniaMNIST, 64×64) are where a clearly better model can be trained in
seconds: a weak one (120 images, one epoch) and a better one (800 images, one epoch) are trained
with the real trainer and exported with complete cards; the gate measures both on the held-out
``val_*`` images of the npz (524, never trained on). For the ECG task, a one-epoch model on
150 CinC records is refused against the shipped model, as in the acceptance check (there, 300
records; an ECG model that beats another on both accuracy and sensitivity takes far longer to
train than a test may).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prescreen.cli import app
from prescreen.config import get_settings
from prescreen.models.card import ModelCard
from prescreen.models.model_store import ModelStore, StoredModel
from prescreen.models.task import get_task
from prescreen.pipeline.runtime import open_store
from prescreen.store.model_events import ModelEventRecord, list_events
from prescreen.training.config import RunConfig
from prescreen.training.export import export_run
from prescreen.training.promote import activation_refusal
from prescreen.training.trainer import Trainer

pytestmark = [pytest.mark.data, pytest.mark.e2e]
runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def train_and_export(task_name: str, data: Path, out: Path, limit: int | None, epochs: int = 1) -> Path:
    """A real run of the trainer and the exporter (complete card: calibration, operating points, shift)."""
    task = get_task(task_name)
    dataset = task.load_dataset(data, get_settings().cache_dir, False, "train")
    cfg = RunConfig(task=task.name, data=data, out=out, epochs=epochs, batch_size=64, limit=limit, seed=0)
    Trainer(task, cfg, progress=False).fit(dataset)
    export_run(out)
    return out


@pytest.fixture(scope="module")
def cxr_runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cxr-runs")
    data = shared_data / "pneumoniamnist"
    return {
        "weak": train_and_export("chest-xray", data, base / "weak", limit=120),
        "better": train_and_export("chest-xray", data, base / "better", limit=800),
    }


@pytest.fixture(scope="module")
def ecg_folder(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 CinC 2017 records (symlinks, seeded choice) with their own REFERENCE.csv."""
    src = shared_data / "cinc2017"
    rows = [line.split(",") for line in (src / "REFERENCE.csv").read_text().split()]
    random.Random(0).shuffle(rows)
    folder = tmp_path_factory.mktemp("cinc150")
    for record, _ in rows[:150]:
        for ext in ("hea", "dat"):
            (folder / f"{record}.{ext}").symlink_to(src / f"{record}.{ext}")
    (folder / "REFERENCE.csv").write_text("".join(f"{r},{c}\n" for r, c in rows[:150]))
    return folder


def stored(run: Path, card: ModelCard | None = None) -> StoredModel:
    return ModelStore().add(run / "model.onnx", card or ModelCard.load(run / "card.json"))


def events(task: str) -> list[ModelEventRecord]:
    return list_events(open_store(get_settings()).sessions, task)


def test_gate_promotes_the_better_model_and_refuses_the_worse(
    cxr_runs: dict[str, Path], shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESCREEN_ACTOR", "li.wei")
    weak, better = stored(cxr_runs["weak"]), stored(cxr_runs["better"])
    assert weak.card.missing_for_release() == [] and better.card.missing_for_release() == []
    shipped = ModelStore().active("chest-xray").tag

    # a model that was never active is no rollback: it goes through the gate (or is forced)
    code, out = cli("models", "activate", "chest-xray", weak.tag)
    assert code == 2 and "models promote" in out, out
    code, out = cli("models", "activate", "chest-xray", weak.tag, "--force", "--reason", "baseline for the test")
    assert code == 0 and f"{weak.tag} is now the active chest-xray model (was {shipped})" in out, out

    # better over weak, on the task's default evaluation set (val_* of the npz, never trained on)
    code, out = cli("models", "promote", "chest-xray", better.tag)
    assert code == 0, out
    assert f"promoted: {better.tag} is now the active chest-xray model (was {weak.tag})" in out
    assert "verdict: PASS" in out and "n=524" in out and "card: complete" in out
    assert ModelStore().active("chest-xray").tag == better.tag

    # and the weak one back over the better: refused, exit 2, the better stays active
    code, out = cli("models", "promote", "chest-xray", weak.tag, "--data", str(shared_data / "pneumoniamnist"))
    assert code == 2, out
    assert "verdict: REFUSED" in out and "Δaccuracy lower 95 % bound" in out
    assert f"{weak.tag} not promoted" in out and f"{better.tag} stays active" in out
    assert ModelStore().active("chest-xray").tag == better.tag

    # a rollback to a model that was active before needs no gate
    code, out = cli("models", "activate", "chest-xray", weak.tag)
    assert code == 0, out

    record = events("chest-xray")
    assert [(e.action, e.tag, e.previous_tag) for e in record] == [
        ("activate", weak.tag, shipped),
        ("promote", better.tag, weak.tag),
        ("refuse", weak.tag, better.tag),
        ("activate", weak.tag, better.tag),
    ]
    assert {e.actor for e in record} == {"li.wei"}
    forced, promoted, refused, rollback = record
    assert forced.detail == {"kind": "forced", "forced": True, "reason": "baseline for the test"}
    assert rollback.detail == {"kind": "rollback", "forced": False, "reason": None}
    for event, passed in ((promoted, True), (refused, False)):
        assert event.detail is not None
        detail = event.detail
        assert detail["passed"] is passed and detail["card_missing"] == []
        assert detail["data"]["n"] == 524 and detail["comparison"]["resamples"] == 1000
        assert detail["margins"] == {"accuracy": -0.01, "sensitivity": -0.02}
        json.dumps(detail, allow_nan=False)  # stored as plain JSON
    delta = promoted.detail["comparison"]["delta"] if promoted.detail else {}
    assert delta["accuracy"]["low"] >= -0.01 and delta["sensitivity"]["low"] >= -0.02
    assert refused.detail and refused.detail["comparison"]["delta"]["accuracy"]["low"] < -0.01
    # the refusal's figures mirror the promotion's (same records, same resamples, models swapped)
    assert refused.detail["comparison"]["delta"]["accuracy"]["value"] == pytest.approx(
        -delta["accuracy"]["value"], abs=1e-6
    )

    code, out = cli("models", "history", "chest-xray")
    assert code == 0
    for word in ("promote", "refuse", "activate", "li.wei", "forced: baseline for the test", "rollback", "Δaccuracy"):
        assert word in out, word


def test_incomplete_card_is_refused_naming_what_is_missing(cxr_runs: dict[str, Path]) -> None:
    card = ModelCard.load(cxr_runs["better"] / "card.json")
    bare = card.model_copy(update={"calibration": None, "operating_points": {}, "shift": {}})
    candidate = stored(cxr_runs["better"], bare)
    shipped = ModelStore().active("chest-xray").tag
    code, out = cli("models", "promote", "chest-xray", candidate.tag)
    assert code == 2, out
    missing = ["balanced", "safety", "calibration", "prevalence table", "perturbation table"]
    assert f"the candidate's model card is incomplete: it lacks {', '.join(missing)}" in out
    assert ModelStore().active("chest-xray").tag == shipped
    [event] = events("chest-xray")
    assert event.action == "refuse" and event.detail is not None
    assert event.detail["card_missing"] == missing


def test_a_task_without_an_active_model_takes_a_complete_candidate(cxr_runs: dict[str, Path]) -> None:
    store = ModelStore()
    candidate = stored(cxr_runs["better"])
    active = json.loads(store.active_file.read_text())
    del active["chest-xray"]
    store.active_file.write_text(json.dumps(active))
    code, out = cli("models", "promote", "chest-xray", candidate.tag)
    assert code == 0, out
    assert "chest-xray has no active model: nothing to compare with" in out
    assert ModelStore().active("chest-xray").tag == candidate.tag
    [event] = events("chest-xray")
    assert event.action == "promote" and event.previous_tag is None
    assert event.detail is not None and event.detail["comparison"] is None


def test_one_epoch_ecg_model_is_refused_against_the_shipped_one(ecg_folder: Path, tmp_path: Path) -> None:
    """The acceptance check in small: a one-epoch ECG model is measured against the shipped one
    only on the records it neither trained nor was validated on (its split rebuilt from its card),
    is far worse, and is refused."""
    run = train_and_export("ecg-rhythm", ecg_folder, tmp_path / "ecg-weak", limit=None)
    candidate = stored(run)
    shipped = ModelStore().active("ecg-rhythm").tag
    code, out = cli("models", "promote", "ecg-rhythm", candidate.tag, "--data", str(ecg_folder))
    assert code == 2, out
    assert "left out the 127 records the candidate trained or was validated on" in out
    assert "measured on the 23 of 150 records new to both models" in out
    assert "Δaccuracy lower 95 % bound" in out and "n=23" in out
    code, out = cli("models", "list", "--task", "ecg-rhythm")
    assert code == 0
    [row] = [line for line in out.splitlines() if candidate.tag in line]
    assert "yes" not in row.split()
    assert ModelStore().active("ecg-rhythm").tag == shipped
    assert [e.action for e in events("ecg-rhythm")] == ["refuse"]


@pytest.mark.parametrize(
    ("tag", "active", "known", "shipped", "force", "allowed"),
    [
        ("m:2", "m:3", {"m:2", "m:3"}, False, False, True),  # was active before: rollback
        ("m:1", "m:3", set(), True, False, True),  # the shipped model
        ("m:3", "m:3", set(), False, False, True),  # already active
        ("m:9", "m:3", {"m:2", "m:3"}, False, False, False),  # never active: through the gate
        ("m:9", None, set(), False, False, False),
        ("m:9", "m:3", set(), False, True, True),  # forced (recorded as such)
    ],
)
def test_activation_refusal_table(
    tag: str, active: str | None, known: set[str], shipped: bool, force: bool, allowed: bool
) -> None:
    refusal = activation_refusal(tag, active, known, shipped, force)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert "prescreen models promote" in refusal and tag in refusal


def test_records_a_model_trained_on_are_left_out_of_the_comparison(
    tiny_model: StoredModel, tiny_run: Path, synthetic_cinc: Path
) -> None:
    import numpy as np

    from prescreen.errors import DatasetError
    from prescreen.training.characterize import rebuild_split, seen_ids
    from prescreen.training.promote import unseen_records

    task = get_task("ecg-rhythm")
    data = task.load_dataset(synthetic_cinc, None, False, "eval")
    train, val, test = rebuild_split(tiny_model.card, data)
    seen = seen_ids(tiny_model.card, data)
    assert seen == set(train.ids) | set(val.ids) and not seen & set(test.ids)
    with np.load(tiny_run / "predictions.npz") as run:  # cut again exactly as the run cut it
        assert sorted(val.ids) == sorted(run["val_ids"].tolist())
        assert sorted(test.ids) == sorted(run["test_ids"].tolist())
    with pytest.raises(DatasetError, match="new to both models"):
        unseen_records(data, [("candidate", tiny_model)])  # 6 test records are too few to compare on
    other = data.subset(list(range(len(data))))
    other.digest = "not-the-training-data"
    kept, notes = unseen_records(other, [("candidate", tiny_model)])
    assert len(kept) == len(data) and notes == []
