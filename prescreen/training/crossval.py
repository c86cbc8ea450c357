"""k-fold group cross-validation: train one model per fold, then export their ensemble with the
operating points chosen on the out-of-fold predictions.

Small sets (BUSI has ~170 malignant images in all) cannot pin a threshold on one validation split
of ~25 positives. Here every training-side record is predicted once by the fold model that did
not train on it; calibration and both operating points are chosen on those out-of-fold
predictions, and the held-out test part (never used for training, early stopping or thresholds)
gives the test figures and the perturbation table. The shipped model is the mean of the fold
models (each trained on (k-1)/k of the training side), INT8-quantized when the ensemble would
exceed the size limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from prescreen.config import get_settings
from prescreen.datasets.collections import LabelledSet
from prescreen.errors import ExportError, ModelError
from prescreen.evaluation.evaluate import evaluate_probs, flag_truth
from prescreen.evaluation.metrics import binary_metrics
from prescreen.evaluation.operating import Characterization, characterize, perturbation_table
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import FloatArray
from prescreen.models.task import Task
from prescreen.training.config import RunConfig
from prescreen.training.export import (
    MeanSoftmax,
    export_onnx,
    load_run,
    onnx_entry,
    onnx_predictor,
    parity,
    shrink_to_limit,
)
from prescreen.training.trainer import Trainer, TrainResult, predict_probs

CV_FILE = "cv.json"


def train_folds(task: Task, cfg: RunConfig, data: LabelledSet, progress: bool = True) -> list[TrainResult]:
    """Train fold 0..k-1 of ``cfg.folds`` into ``cfg.out/fold-i`` and write ``cv.json``."""
    if cfg.folds < 2:
        raise ModelError(f"cross-validation needs --folds of 2 or more, not {cfg.folds}")
    results = []
    for k in range(cfg.folds):
        fold_cfg = cfg.model_copy(update={"fold": k, "out": cfg.out / f"fold-{k}"})
        results.append(Trainer(task, fold_cfg, progress).fit(data))
    (cfg.out / CV_FILE).write_text(
        json.dumps({"task": task.name, "folds": cfg.folds, "runs": [f"fold-{k}" for k in range(cfg.folds)]}, indent=2)
    )
    return results


def is_cross_validation(folder: Path) -> bool:
    return (folder / CV_FILE).is_file()


def _round4(x: float) -> float | None:
    return None if x != x else round(float(x), 4)


def _at_points(
    task: Task, labels: np.ndarray, probs: FloatArray, temperature: float, found: Characterization
) -> dict[str, dict[str, float]]:
    """Sensitivity, specificity and accuracy of the shipped model at each operating point."""
    if not len(labels):
        return {}
    truth = flag_truth(task, labels)
    score = task.flag_scores(apply_temperature(probs, temperature))
    out = {}
    for name, spec in found.operating_points.items():
        m = binary_metrics(truth, score, spec.threshold)
        out[name] = {k: m[k] for k in ("sensitivity", "specificity", "accuracy")} | {"n": float(len(labels))}
    return out


def out_of_fold_predictor(
    task: Task, nets: list[torch.nn.Module], fold_sizes: list[int]
) -> Callable[[list[FloatArray]], FloatArray]:
    """Signals in out-of-fold order (fold 0's validation records, then fold 1's, …) → class
    probabilities, each record predicted by the one fold model that did not train on it.

    Raises:
        ValueError: ``nets`` and ``fold_sizes`` differ in length, or a call's signals are not as
            many as the folds' validation records.
    """
    if len(nets) != len(fold_sizes):
        raise ValueError(f"{len(nets)} fold models for {len(fold_sizes)} folds")
    bounds = np.cumsum([0, *fold_sizes])

    def predict(signals: list[FloatArray]) -> FloatArray:
        if len(signals) != bounds[-1]:
            raise ValueError(f"expected the {bounds[-1]} out-of-fold records in fold order, got {len(signals)}")
        parts = [
            predict_probs(task, net, signals[a:b]) for net, a, b in zip(nets, bounds[:-1], bounds[1:], strict=True)
        ]
        out: FloatArray = np.concatenate(parts).astype(np.float32)
        return out

    return predict


def export_cross_validation(folder: Path, out: Path | None = None, progress: bool = False) -> tuple[Path, ModelCard]:
    """Export the fold models of a cross-validation folder as one ensemble with a complete card.

    Raises:
        ModelError: not a finished cross-validation; ExportError: export, parity or quantization failure.
    """
    spec = json.loads((folder / CV_FILE).read_text())
    runs = [folder / r for r in spec["runs"]]
    loaded = [load_run(r) for r in runs]
    cfg, summary, task, _ = loaded[0]
    preds = [dict(np.load(r / "predictions.npz")) for r in runs]
    for run, p in zip(runs[1:], preds[1:], strict=True):
        if not np.array_equal(p["test_ids"], preds[0]["test_ids"]):
            raise ExportError(f"{run} was not cut from the same split as {runs[0]} (test parts differ)")
    oof_ids = np.concatenate([p["val_ids"] for p in preds])
    if len(set(oof_ids.tolist())) != len(oof_ids):
        raise ExportError("the folds' validation parts overlap: not a cross-validation")
    oof_labels = np.concatenate([p["val_labels"] for p in preds])
    oof_probs = np.concatenate([p["val_probs"] for p in preds]).astype(np.float32)
    test_labels = preds[0]["test_labels"]
    data = task.load_dataset(cfg.data, get_settings().cache_dir, progress, "train")
    if data.digest != summary["data_digest"]:
        raise ExportError(f"the data in {cfg.data} changed since training (digest differs)")
    by_id = {rid: i for i, rid in enumerate(data.ids)}
    test_signals = [data.signals[by_id[str(r)]] for r in preds[0]["test_ids"]]
    target = out or folder
    target.mkdir(parents=True, exist_ok=True)
    wrapped = MeanSoftmax([net for _, _, _, net in loaded]).eval()
    examples = np.concatenate([task.windows(data.signals[by_id[str(r)]]) for r in oof_ids[:32]])
    fp32 = target / "model-fp32.onnx"
    export_onnx(wrapped, torch.from_numpy(examples[:2]), fp32)
    max_diff = parity(wrapped, fp32, examples)
    chosen_on = (
        f"out-of-fold predictions of a {len(runs)}-fold stratified group cross-validation over the training side "
        f"(n={len(oof_labels)})"
    )
    found = characterize(task, oof_labels, oof_probs, chosen_on)
    temperature = found.calibration.temperature
    balanced = found.operating_points["balanced"].threshold
    onnx_path = target / "model.onnx"
    fp32.replace(onnx_path)
    check = [data.signals[by_id[str(r)]] for r in oof_ids]
    quantized = shrink_to_limit(task, onnx_path, check, temperature, balanced, "out-of-fold")
    predict = onnx_predictor(task, onnx_path)
    held_out = len(test_labels) > 0
    test_probs = np.zeros((0, len(task.classes)), np.float32)
    if held_out:
        test_probs = predict(test_signals)
        perturbed_on = "the held-out test part"
        perturbations = perturbation_table(
            task, test_labels, test_signals, predict, temperature, found.operating_points, cfg.seed
        )
    else:  # every record was in the cross-validation: each is scored by the model that did not train on it
        perturbed_on = (
            "the out-of-fold records (no test part was held out), each scored by the fold model that did not "
            "train on it"
        )
        oof_predict = out_of_fold_predictor(task, [net for _, _, _, net in loaded], [len(p["val_ids"]) for p in preds])
        perturbations = perturbation_table(
            task, oof_labels, check, oof_predict, temperature, found.operating_points, cfg.seed
        )
    shift = {
        **found.shift,
        "perturbations": perturbations,
        "perturbations_measured_on": perturbed_on,
        # the points were chosen on single fold models' out-of-fold scores; the shipped ensemble's
        # scores are softer, so its own sensitivity at each point on the test part is stated too
        "test_at_operating_points": [
            {"operating_point": name, **{k: _round4(v) for k, v in point_metrics.items()}}
            for name, point_metrics in _at_points(task, test_labels, test_probs, temperature, found).items()
        ],
    }
    common = {"dataset_path": str(cfg.data), "dataset_digest": summary["data_digest"]}
    validation = evaluate_probs(
        task,
        oof_labels,
        apply_temperature(oof_probs, temperature),
        balanced,
        split="out-of-fold (cross-validation)",
        **common,
        note="each record predicted by the fold model that did not train on it; chose calibration and thresholds",
    )
    test = (
        evaluate_probs(
            task,
            test_labels,
            apply_temperature(test_probs, temperature),
            balanced,
            split="held-out test split",
            **common,
            note="groups never used for training, early stopping or the thresholds; the shipped ensemble",
        )
        if held_out
        else None
    )
    members = [{**s, "fold": c.fold, "run": str(r)} for r, (c, s, _, _) in zip(runs, loaded, strict=True)]
    card = ModelCard(
        task=task.name,
        name=task.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=list(task.classes),
        normal_classes=list(task.normal_classes),
        flag_rule=task.flag_rule,
        input_spec=task.input_spec,
        operating_threshold=balanced,
        threshold_chosen_on=f"{chosen_on}: maximum Youden J",
        training={
            "ensemble_of": len(runs),
            "cross_validation_folds": len(runs),
            "data_path": summary["data_path"],
            "data_digest": summary["data_digest"],
            "split_seed": cfg.split_seed,
            "group_by": cfg.group_by,
            "train_seconds_total": round(sum(float(m["train_seconds"]) for m in members), 1),
            "config": json.loads(cfg.model_copy(update={"fold": None, "out": folder}).model_dump_json()),
            "members": members,
        },
        onnx=onnx_entry(onnx_path, max_diff, len(examples), quantized),
        validation=validation,
        test=test,
        caveats=[
            *task.caveats,
            "Calibration and both operating points were chosen on the fold models' out-of-fold scores; the shipped "
            "model averages the fold models, whose scores are softer"
            + (
                ": its own figures at both points on the held-out test part are in shift.test_at_operating_points."
                if held_out
                else ", and no test part was held out to measure the ensemble itself: its figures on new data may "
                "differ from the out-of-fold ones (it tends to flag more at the same threshold)."
            ),
        ],
        calibration=found.calibration,
        operating_points=found.operating_points,
        score_reference=found.score_reference,
        shift=shift,
        validation_scheme=(
            f"{len(runs)}-fold stratified group cross-validation (groups: {cfg.group_by}) over the training side; "
            + (
                f"a group-disjoint {cfg.test_fraction:.0%} test part held out (seed {cfg.split_seed})"
                if held_out
                else f"no test part: every record is in the cross-validation (seed {cfg.split_seed})"
            )
        ),
    )
    card.save(target / "card.json")
    return onnx_path, card
