"""Golden outputs of the shipped models: each one, on fixed inputs from the data sets, gives the
recorded label and scores to 1e-5. These pin the whole inference path (content routing, readers,
preprocessing, ONNX, flag rule); a refactor that changes any number fails here.

The figures are calibrated outputs (each card's temperature) at the cards' two operating points,
re-recorded on 2026-11-30 when the cards gained them; ``RAW`` pins the uncalibrated outputs
recorded before, so the change is the calibration alone. They are not accuracies, only
regression anchors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prescreen.models.model_store import ModelStore
from prescreen.models.onnx_model import OnnxModel
from prescreen.pipeline.engine import ScreeningEngine

pytestmark = pytest.mark.data

GOLDEN = {
    "cinc-normal": (
        ("cinc2017/A00001.hea", "cinc2017/A00001.dat"),
        "ecg-rhythm",
        False,
        "normal",
        0.030485,
        {"normal": 0.969515, "af": 0.008595, "other": 0.008779, "noisy": 0.013111},
        (0.504885, 0.160511),
    ),
    "cinc-af": (
        ("cinc2017/A00004.hea", "cinc2017/A00004.dat"),
        "ecg-rhythm",
        True,
        "af",
        0.998822,
        {"normal": 0.001178, "af": 0.997531, "other": 0.001025, "noisy": 0.000266},
        (0.504885, 0.160511),
    ),
    "us-uncompressed": (
        ("dicom/US1_UNCR.dcm",),
        "breast-us",
        False,
        "normal",
        0.197221,
        {"normal": 0.585401, "benign": 0.217378, "malignant": 0.197221},
        (0.318988, 0.084851),
    ),
    "chest-cr": (
        ("dicom/cr_chest_rsna_sample.dcm",),
        "chest-xray",
        False,
        "normal",
        0.003901,
        {"normal": 0.996099, "pneumonia": 0.003901},
        (0.46506, 0.46506),
    ),
}

#: the uncalibrated outputs (temperature 1) recorded before the cards gained calibration and
#: operating points (2026-11-29): the ONNX path itself has not changed for these models. chest-xray
#: was retrained with site augmentation on 2026-11-30 and both its rows re-recorded then; breast-us
#: was replaced by a 5-fold cross-validated ensemble the same day and its row re-recorded (the GE
#: sample is no breast image and carries no diagnosis: the row anchors the path, not a finding), and
#: re-recorded again when that ensemble was retrained with a nested cross-validation choosing its
#: operating points (2026-11-30 evening; the sample is now flagged at the safety point only);
#: ecg-rhythm was replaced by a 2-seed ensemble through the promotion gate on 2026-11-30 and its
#: rows re-recorded then; the ecg-rhythm and breast-us rows were re-recorded on 2026-12-01 when their
#: files were rewritten from dynamic INT8 (activations quantized too) to INT8 weights with FP32
#: arithmetic: same weights, scores moved by at most 3e-4
RAW = {
    "cinc-normal": {"normal": 0.925987, "af": 0.021669, "other": 0.022037, "noisy": 0.030308},
    "chest-cr": {"normal": 0.961366, "pneumonia": 0.038634},
}


@pytest.fixture(scope="module")
def engine() -> ScreeningEngine:
    return ScreeningEngine(ModelStore())


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_shipped_model_gives_recorded_output(engine: ScreeningEngine, shared_data: Path, case: str) -> None:
    paths, task, flagged, label, score, probabilities, (balanced, safety) = GOLDEN[case]
    files = {Path(p).name: (shared_data / p).read_bytes() for p in paths}

    result = engine.screen(files)

    assert result.task == task
    assert result.model_name == task
    assert result.flagged is flagged
    assert result.label == label
    assert result.score == pytest.approx(score, abs=1e-5)
    assert result.threshold == pytest.approx(balanced, abs=1e-5)
    assert result.operating_points["balanced"].threshold == pytest.approx(balanced, abs=1e-5)
    assert result.operating_points["safety"].threshold == pytest.approx(safety, abs=1e-5)
    assert result.operating_points["balanced"].flagged is flagged
    assert set(result.probabilities) == set(probabilities)
    for name, value in probabilities.items():
        assert result.probabilities[name] == pytest.approx(value, abs=1e-5), name


@pytest.mark.parametrize("case", sorted(RAW))
def test_uncalibrated_output_is_what_it_was(shared_data: Path, case: str) -> None:
    paths, task, *_ = GOLDEN[case]
    stored = ModelStore().active(task)
    raw = OnnxModel(stored.onnx_path, stored.card.model_copy(update={"calibration": None}))
    files = {Path(p).name: (shared_data / p).read_bytes() for p in paths}
    result = raw.screen_signal(raw.task.preprocess(raw.task.read_files(files)))
    for name, value in RAW[case].items():
        assert result.probabilities[name] == pytest.approx(value, abs=1e-5), name
    assert result.task == task
