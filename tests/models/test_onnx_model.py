"""``OnnxModel``: the SHA-256 check against the card, loading errors, screening (score, flag at
the threshold, label), and the JSON shape of its result (``Finding`` as the API sends it).

The models are tiny ONNX graphs built here by hand, so their output is known exactly: the
chest-xray stand-in outputs ``[1 - m, m]`` where ``m`` is the mean of the input frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from prescreen.domain import Finding
from prescreen.errors import InvalidStudyError, ModelError
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import INPUT_NAME, OUTPUT_NAME, OnnxModel, sha256_file
from prescreen.models.task import get_task
from prescreen.serving.schemas import FindingOut
from tests.fixtures_images import blob_image, png_bytes

SHIPPED = Path(__file__).resolve().parents[2] / "prescreen" / "shipped"


def mean_model(path: Path) -> Path:
    """A chest-xray-shaped ONNX model: ``(N, 1, H, W)`` → ``[1 - mean, mean]`` per row."""
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),
        helper.make_node("Sub", ["one", "m1"], ["rest"]),
        helper.make_node("Concat", ["rest", "m1"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, "h", "w"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def card_for(path: Path | None, threshold: float = 0.5, task: str = "chest-xray", **onnx_extra: object) -> ModelCard:
    t = get_task(task)
    onnx_info: dict[str, object] = {"file": "model.onnx", **onnx_extra}
    if path is not None:
        onnx_info["sha256"] = sha256_file(path)
    return ModelCard(
        task=task,
        name="toy",
        version="v1",
        created="2024-01-01T00:00:00+00:00",
        classes=list(t.classes),
        normal_classes=list(t.normal_classes),
        flag_rule=t.flag_rule,
        input_spec=t.input_spec,
        operating_threshold=threshold,
        threshold_chosen_on="by hand",
        training={},
        onnx=onnx_info,
    )


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return mean_model(tmp_path / "model.onnx")


def frames(*means: float, size: int = 8) -> np.ndarray:
    return np.stack([np.full((size, size), m, dtype=np.float32) for m in means])


# --------------------------------------------------------------------------- integrity


def test_sha256_file_is_the_plain_digest(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over one read chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_model_whose_file_differs_from_its_card_is_refused(toy: Path) -> None:
    card = card_for(toy)
    card.onnx["sha256"] = "0" * 64
    with pytest.raises(ModelError, match="SHA-256") as info:
        OnnxModel(toy, card)
    assert str(toy) in str(info.value)
    assert "\n" not in str(info.value)


def test_replaced_file_is_refused(toy: Path, tmp_path: Path) -> None:
    """The card was written for one file; another valid model under the same name is refused."""
    card = card_for(toy)
    other = mean_model(tmp_path / "other.onnx")
    data = onnx.load(str(other))
    data.doc_string = "a different build"
    onnx.save(data, str(toy))
    with pytest.raises(ModelError, match="does not match its card"):
        OnnxModel(toy, card)


def test_verification_can_be_skipped_and_a_card_without_digest_is_not_checked(toy: Path) -> None:
    card = card_for(toy)
    card.onnx["sha256"] = "0" * 64
    assert OnnxModel(toy, card, verify=False).task.name == "chest-xray"
    assert OnnxModel(toy, card_for(None)).card.name == "toy"


def test_corrupt_file_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx protobuf at all" * 10)
    with pytest.raises(ModelError, match="cannot be loaded by ONNX Runtime"):
        OnnxModel(bad, card_for(bad))  # digest matches: the load itself fails


def test_missing_file_without_digest_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(tmp_path / "model.onnx", card_for(None))


def test_missing_file_with_digest_is_a_model_error(toy: Path, tmp_path: Path) -> None:
    card = card_for(toy)
    folder = tmp_path / "exported"
    folder.mkdir()
    card.save(folder / "card.json")  # a folder whose model.onnx went missing
    with pytest.raises(ModelError, match="not found"):
        OnnxModel.from_folder(folder)


def test_from_folder_loads_a_shipped_model(tmp_path: Path) -> None:
    folder = tmp_path / "chest"
    shutil.copytree(SHIPPED / "chest-xray", folder)
    model = OnnxModel.from_folder(folder)
    assert model.task.name == "chest-xray"
    probs = model.predict_signals([np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)])
    assert probs.shape == (1, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_from_folder_refuses_a_tampered_shipped_model(tmp_path: Path) -> None:
    folder = tmp_path / "chest"
    shutil.copytree(SHIPPED / "chest-xray", folder)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        OnnxModel.from_folder(folder)


def test_card_of_an_unknown_task_is_refused(toy: Path) -> None:
    from prescreen.errors import UnknownTaskError

    card = card_for(toy).model_copy(update={"task": "knee-mri"})
    with pytest.raises(UnknownTaskError):
        OnnxModel(toy, card)


# --------------------------------------------------------------------------- screening


def test_probabilities_are_the_graph_output_averaged_over_frames(toy: Path) -> None:
    model = OnnxModel(toy, card_for(toy))
    np.testing.assert_allclose(model.predict_windows(frames(0.25, 0.75)[:, None]), [[0.75, 0.25], [0.25, 0.75]])
    probs = model.predict_signals([frames(0.2, 0.6), frames(0.5)])
    np.testing.assert_allclose(probs, [[0.6, 0.4], [0.5, 0.5]], atol=1e-6)


@pytest.mark.parametrize(
    ("threshold", "flagged"),
    [(0.25, True), (0.2499, True), (0.0, True), (float(np.nextafter(0.25, 1.0)), False), (0.9, False)],
)
def test_flag_is_score_at_or_above_the_threshold(toy: Path, threshold: float, flagged: bool) -> None:
    model = OnnxModel(toy, card_for(toy, threshold=threshold))
    result = model.screen_signal(frames(0.25))  # score 1 - P(normal) = 0.25 exactly
    assert result.score == 0.25
    assert result.flagged is flagged
    assert result.threshold == threshold
    # the label sides with the flag even though 'normal' (0.75) is the more likely class
    assert result.label == ("pneumonia" if flagged else "normal")


def test_screen_result_carries_the_card_identity_and_rounded_probabilities(toy: Path) -> None:
    model = OnnxModel(toy, card_for(toy, threshold=0.3))
    result = model.screen_signal(frames(1 / 3))
    assert (result.task, result.model_name, result.model_version) == ("chest-xray", "toy", "v1")
    assert result.probabilities == {
        "normal": pytest.approx(2 / 3, abs=1e-6),
        "pneumonia": pytest.approx(1 / 3, abs=1e-6),
    }
    for value in [result.score, *result.probabilities.values()]:
        assert value == round(value, 6)
    assert result.flagged
    assert result.explanation_url is None


def test_screen_files_reads_preprocesses_and_screens(toy: Path) -> None:
    model = OnnxModel(toy, card_for(toy, threshold=0.5))
    png = png_bytes(blob_image(40, 1, np.random.default_rng(0)))
    result = model.screen_files({"x.png": png})
    # preprocessing z-scores each frame: the toy model sees mean 0 → score 0
    assert result.score == pytest.approx(0.0, abs=1e-5)
    assert not result.flagged
    with pytest.raises(InvalidStudyError):
        model.screen_files({"x.png": b"garbage"})


# --------------------------------------------------------------------------- JSON
# (``ScreenResult.to_json`` became ``Finding`` + the API's ``FindingOut``; the shape is the contract)


def finding_json(finding: Finding) -> dict[str, object]:
    """The body ``/v1/screen`` answers with (its route excludes ``None`` fields)."""
    return FindingOut.of(finding).model_dump(mode="json", exclude_none=True)


def test_finding_json_shape() -> None:
    finding = Finding(
        task="breast-us",
        model_name="breast-us",
        model_version="abc",
        flagged=True,
        label="malignant",
        score=0.8,
        threshold=0.46,
        probabilities={"normal": 0.1, "benign": 0.1, "malignant": 0.8},
    )
    body = finding_json(finding)
    assert body == {
        "task": "breast-us",
        "model": {"name": "breast-us", "version": "abc"},
        "flagged": True,
        "label": "malignant",
        "score": 0.8,
        "probabilities": {"normal": 0.1, "benign": 0.1, "malignant": 0.8},
        "threshold": 0.46,
        "instances_screened": 1,
        "instances_total": 1,
        "operating_points": {},
    }
    with_url = finding_json(dataclasses.replace(finding, explanation_url="/v1/explanations/x.png"))
    assert with_url == {**body, "explanation_url": "/v1/explanations/x.png"}


def test_json_of_a_real_result_is_plain_json(toy: Path) -> None:
    result = OnnxModel(toy, card_for(toy)).screen_signal(frames(0.7, 0.9))
    assert type(result.flagged) is bool and type(result.score) is float  # not numpy scalars
    body = json.loads(json.dumps(finding_json(result)))
    assert body["flagged"] is True
    assert body["label"] == "pneumonia"
    assert body["score"] == pytest.approx(0.8, abs=1e-6)
    assert list(body["probabilities"]) == ["normal", "pneumonia"]
    assert body["model"] == {"name": "toy", "version": "v1"}
    assert "explanation_url" not in body


@pytest.mark.parametrize("folder", sorted(p for p in SHIPPED.iterdir() if (p / "card.json").is_file()), ids=str)
def test_a_shipped_card_says_how_its_file_is_quantized(folder: Path) -> None:
    from prescreen.models.onnx_model import int8_weights_only
    from prescreen.training.quantize import describe

    card = ModelCard.load(folder / "card.json")
    quantized = card.onnx.get("quantized")
    model_file = folder / "model.onnx"
    if quantized is None:  # FP32: nothing to fold at load
        assert not int8_weights_only(model_file)
        return
    assert int8_weights_only(model_file)  # the service folds its weights into FP32 at load
    assert quantized["method"] == describe(onnx.load(str(model_file)))
    assert model_file.stat().st_size <= 10_000_000 < quantized["fp32_size_bytes"]
