"""Golden outputs of the shipped models: each one, on fixed inputs from the data sets, gives the
recorded label and scores to 1e-5. These pin the whole inference path (content routing, readers,
preprocessing, ONNX, flag rule); a refactor that changes any number fails here.

The figures were recorded with the shipped models before the pipeline refactor; they are not
accuracies, only regression anchors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prescreen.models.model_store import ModelStore
from prescreen.pipeline.engine import ScreeningEngine

pytestmark = pytest.mark.data

GOLDEN = {
    "cinc-normal": (
        ("cinc2017/A00001.hea", "cinc2017/A00001.dat"),
        "ecg-rhythm",
        False,
        "normal",
        0.068051,
        {"normal": 0.931949, "af": 0.025759, "other": 0.01631, "noisy": 0.025982},
        0.366183,
    ),
    "cinc-af": (
        ("cinc2017/A00004.hea", "cinc2017/A00004.dat"),
        "ecg-rhythm",
        True,
        "af",
        0.993954,
        {"normal": 0.006046, "af": 0.988181, "other": 0.004072, "noisy": 0.001702},
        0.366183,
    ),
    "us-uncompressed": (
        ("dicom/US1_UNCR.dcm",),
        "breast-us",
        False,
        "benign",
        0.005505,
        {"normal": 0.000318, "benign": 0.994177, "malignant": 0.005505},
        0.463159,
    ),
    "chest-cr": (
        ("dicom/cr_chest_rsna_sample.dcm",),
        "chest-xray",
        False,
        "normal",
        0.03377,
        {"normal": 0.96623, "pneumonia": 0.03377},
        0.467139,
    ),
}


@pytest.fixture(scope="module")
def engine() -> ScreeningEngine:
    return ScreeningEngine(ModelStore())


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_shipped_model_gives_recorded_output(engine: ScreeningEngine, shared_data: Path, case: str) -> None:
    paths, task, flagged, label, score, probabilities, threshold = GOLDEN[case]
    files = {Path(p).name: (shared_data / p).read_bytes() for p in paths}

    result = engine.screen(files)

    assert result.task == task
    assert result.model_name == task
    assert result.flagged is flagged
    assert result.label == label
    assert result.score == pytest.approx(score, abs=1e-5)
    assert result.threshold == pytest.approx(threshold, abs=1e-5)
    assert set(result.probabilities) == set(probabilities)
    for name, value in probabilities.items():
        assert result.probabilities[name] == pytest.approx(value, abs=1e-5), name
