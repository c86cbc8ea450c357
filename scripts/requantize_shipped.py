"""Rewrite a shipped, dynamically quantized model into INT8-weights form and update its card.

The shipped ``ecg-rhythm`` and ``breast-us`` files were made with ONNX Runtime's dynamic
quantization (INT8 weights *and* activations, ``ConvInteger``), 4-5x slower here than FP32. Their
run folders, and so their FP32 originals, are gone. ``dynamic_to_weight_only`` keeps the very same
INT8 weights and drops only the activation quantization. The thresholds and calibration were chosen
on the FP32 models' scores and stay; every card figure that was measured with the shipped file's own
outputs is measured again with the new file on the same records:

- ``ecg-rhythm`` (one validation/test split): validation, test and the perturbation table. The split
  is cut again from the card's seed; the old file must reproduce the card's test figures on it.
- ``breast-us`` (nested cross-validation, no test part): none of its figures came from the shipped
  file, only the decision check, done again on all the images.

Usage: ``python scripts/requantize_shipped.py TASK [DATA_DIR]`` (run from the repository root).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx

from prescreen.config import get_settings
from prescreen.evaluation.evaluate import evaluate_probs
from prescreen.evaluation.operating import perturbation_table
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import sha256_file
from prescreen.models.task import get_task
from prescreen.training.config import RunConfig
from prescreen.training.export import onnx_predictor
from prescreen.training.quantize import describe, dynamic_to_weight_only
from prescreen.training.trainer import split_indices


def main(task_name: str, data_dir: str | None) -> None:
    folder = Path("prescreen/shipped") / task_name
    card = ModelCard.load(folder / "card.json")
    task = get_task(task_name)
    old_path = folder / "model.onnx"
    if sha256_file(old_path) != card.onnx["sha256"]:
        raise SystemExit(f"{old_path} is not the file its card describes")
    data_path = Path(data_dir or card.training["data_path"])
    data = task.load_dataset(data_path, get_settings().cache_dir, True, "train")
    if data.digest != card.training["data_digest"]:
        raise SystemExit(f"the data in {data_path} is not the data the card was made on")
    new_path = folder / "model-int8-weights.onnx"
    onnx.save(dynamic_to_weight_only(onnx.load(str(old_path))), str(new_path))
    temperature = card.calibration.temperature if card.calibration else 1.0
    threshold = card.operating_threshold
    old_predict, new_predict = onnx_predictor(task, old_path), onnx_predictor(task, new_path)

    def flags(probs: np.ndarray) -> np.ndarray:
        return task.flag_scores(apply_temperature(probs, temperature)) >= threshold

    if "cross_validation_folds" in card.training:
        if card.test is not None:
            raise SystemExit("a cross-validation card with a test part: its test figures would need measuring again")
        check_signals = list(data.signals)
        where = f"{len(check_signals)} records (all of the cross-validation), balanced operating point"
    else:
        cfg = RunConfig(task=task_name, data=data_path, out=Path("unused"), split_seed=card.training["split_seed"])
        _, val_i, test_i = split_indices(cfg, data)
        val_labels, test_labels = data.labels[val_i], data.labels[test_i]
        val_signals = [data.signals[i] for i in val_i]
        test_signals = [data.signals[i] for i in test_i]
        common = {"dataset_path": card.test.dataset_path, "dataset_digest": card.test.dataset_digest}  # type: ignore[union-attr]
        reproduced = evaluate_probs(
            task,
            test_labels,
            apply_temperature(old_predict(test_signals), temperature),
            threshold,
            split="held-out test split",
            **common,
        )
        same = reproduced.n == card.test.n and reproduced.confusion == card.test.confusion  # type: ignore[union-attr]
        if not same or reproduced.metrics["accuracy"].value != card.test.metrics["accuracy"].value:  # type: ignore[union-attr]
            raise SystemExit("the old file does not reproduce the card's test figures: not the card's split")
        val_probs, test_probs = new_predict(val_signals), new_predict(test_signals)
        card.validation = evaluate_probs(
            task,
            val_labels,
            apply_temperature(val_probs, temperature),
            threshold,
            split="validation split",
            **common,
            note="the split that chose the checkpoint and the threshold",
        )
        card.test = evaluate_probs(
            task,
            test_labels,
            apply_temperature(test_probs, temperature),
            threshold,
            split="held-out test split",
            **common,
            note="records never used for training, early stopping or the threshold",
        )
        seed = int(card.training["members"][0].get("seed", 0))
        card.shift["perturbations"] = perturbation_table(
            task, val_labels, val_signals, new_predict, temperature, card.operating_points, seed
        )
        check_signals = val_signals
        where = f"{len(val_signals)} validation records, balanced operating point"
    changed = float(np.mean(flags(old_predict(check_signals)) != flags(new_predict(check_signals))))
    previous = dict(card.onnx.get("quantized", {}))
    new_path.replace(old_path)
    card.onnx.update(
        sha256=sha256_file(old_path),
        size_bytes=old_path.stat().st_size,
        quantized={
            "method": describe(onnx.load(str(old_path))),
            "fp32_size_bytes": previous.get("fp32_size_bytes"),
            "decision_disagreement_vs_dynamic_int8": round(changed, 4),
            "checked_on": where,
            "converted": datetime.now(UTC).isoformat(timespec="seconds"),
            "converted_from": {
                **previous,
                "sha256": card.onnx["sha256"],
                "note": "the same INT8 weights with activations quantized on the fly (ConvInteger); the FP32 "
                "original was not kept, so this file's own disagreement with it cannot be measured: it keeps "
                "the weight rounding and drops the activation rounding",
            },
        },
    )
    card.save(folder / "card.json")
    print(json.dumps({"task": task_name, "decisions_changed": changed, "checked_on": where}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
