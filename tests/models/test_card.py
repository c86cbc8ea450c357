"""The model card (save, load, headline) and the Task helpers of ``ecg-rhythm``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prescreen.errors import ModelError, UnknownTaskError
from prescreen.models.card import Evaluation, MetricValue, ModelCard, Target
from prescreen.models.task import get_task, task_names


def _evaluation(split: str, accuracy: float, n: int = 100) -> Evaluation:
    return Evaluation(
        split=split,
        dataset_path="/data/cinc2017",
        dataset_digest="d" * 64,
        n=n,
        metrics={
            "accuracy": MetricValue(value=accuracy, ci_low=accuracy - 0.02, ci_high=accuracy + 0.01),
            "auroc": MetricValue(value=None, ci_low=None, ci_high=None),
        },
        target=Target(metric="accuracy", threshold=0.95, met=accuracy >= 0.95),
        challenge_f1=0.81,
        confusion=[[50, 2, 0, 0], [1, 20, 0, 0], [3, 0, 20, 0], [0, 0, 1, 3]],
        when="2024-01-01T00:00:00+00:00",
        note="synthetic",
    )


def _card(**overrides: object) -> ModelCard:
    fields: dict[str, object] = {
        "task": "ecg-rhythm",
        "name": "ecg-rhythm",
        "version": "v1",
        "created": "2024-01-01T00:00:00+00:00",
        "classes": ["normal", "af", "other", "noisy"],
        "normal_classes": ["normal"],
        "flag_rule": "flagged when the score 1 - P(normal) reaches the operating threshold",
        "input_spec": {"sampling_rate_hz": 150.0, "window_samples": 4500},
        "operating_threshold": 0.42,
        "threshold_chosen_on": "validation split",
        "training": {"epochs": 3, "seed": 0},
        "onnx": {"sha256": "e" * 64, "opset": 17},
        "validation": _evaluation("validation split", 0.93),
        "test": _evaluation("held-out test split", 0.94),
        "caveats": ["research use only"],
    }
    fields.update(overrides)
    return ModelCard.model_validate(fields)


# --- ModelCard -----------------------------------------------------------------------------


def test_card_round_trip(tmp_path: Path) -> None:
    card = _card(evaluations=[_evaluation("/data/other", 0.96, n=40)])
    path = tmp_path / "card.json"
    card.save(path)
    assert path.is_file()
    assert not path.with_suffix(".tmp").exists()  # written atomically through a temp file
    loaded = ModelCard.load(path)
    assert loaded == card
    assert loaded.test is not None
    assert loaded.test.metrics["accuracy"].value == pytest.approx(0.94)
    assert loaded.test.metrics["auroc"].value is None
    assert loaded.evaluations[0].n == 40
    assert loaded.operating_threshold == 0.42


def test_card_save_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    _card(version="v1").save(path)
    _card(version="v2").save(path)
    assert ModelCard.load(path).version == "v2"


def test_headline_prefers_latest_evaluation() -> None:
    first = _evaluation("/data/a", 0.90)
    latest = _evaluation("/data/b", 0.97)
    card = _card(evaluations=[first, latest])
    assert card.headline == latest
    assert card.headline is not None and card.headline.split == "/data/b"


def test_headline_falls_back_to_test_then_validation() -> None:
    card = _card()
    assert card.headline is not None and card.headline.split == "held-out test split"
    card = _card(test=None)
    assert card.headline is not None and card.headline.split == "validation split"
    assert _card(test=None, validation=None).headline is None


def test_load_corrupt_json_raises_model_error(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text('{"task": "ecg-rhythm", ')
    with pytest.raises(ModelError, match="not a valid card"):
        ModelCard.load(path)


def test_load_json_missing_fields_raises_model_error(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text('{"task": "ecg-rhythm"}')
    with pytest.raises(ModelError, match="not a valid card"):
        ModelCard.load(path)


def test_load_missing_file_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        ModelCard.load(tmp_path / "absent.json")


# --- Task helpers --------------------------------------------------------------------------


def test_flag_scores_are_one_minus_p_normal() -> None:
    task = get_task("ecg-rhythm")
    assert task.classes[0] == "normal"
    probs = np.array(
        [[0.9, 0.05, 0.03, 0.02], [0.1, 0.6, 0.2, 0.1], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]],
        dtype=np.float32,
    )
    scores = task.flag_scores(probs)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [0.1, 0.9, 1.0, 0.75], atol=1e-6)
    assert task.normal_index == [0]


def test_label_for_follows_the_flag() -> None:
    task = get_task("ecg-rhythm")
    p = np.array([0.5, 0.3, 0.15, 0.05])
    assert task.label_for(p, flagged=False) == "normal"
    assert task.label_for(p, flagged=True) == "af"  # most likely non-normal class
    q = np.array([0.1, 0.2, 0.6, 0.1])
    assert task.label_for(q, flagged=True) == "other"
    assert task.label_for(q, flagged=False) == "normal"  # never a flagged class when not flagged
    r = np.array([0.05, 0.1, 0.15, 0.7])
    assert task.label_for(r, flagged=True) == "noisy"


def test_flag_rule_mentions_normal_class() -> None:
    assert "P(normal)" in get_task("ecg-rhythm").flag_rule


def test_unknown_task_names_the_known_ones() -> None:
    assert "ecg-rhythm" in task_names()
    with pytest.raises(UnknownTaskError, match=r"unknown task 'nope'; known tasks: .*ecg-rhythm"):
        get_task("nope")
