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
from itertools import combinations
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
    novelty_of_test_part,
    onnx_entry,
    onnx_predictor,
    parity,
    shrink_to_limit,
)
from prescreen.training.trainer import Trainer, TrainResult, predict_probs

CV_FILE = "cv.json"


def train_folds(
    task: Task, cfg: RunConfig, data: LabelledSet, progress: bool = True, nested: bool = False
) -> list[TrainResult]:
    """Train fold 0..k-1 of ``cfg.folds`` into ``cfg.out/fold-i`` and write ``cv.json``.

    With ``nested``, also train one model per pair of folds ``i < j`` into ``cfg.out/pair-i-j``,
    holding out both (k(k-1)/2 more models, each on (k-2)/k of the training side). A record of
    fold ``i`` is then scored by the mean of the k-1 pair models that held out ``i``: an ensemble
    that never saw it, shaped like the shipped one (k-1 members instead of k, each trained on a
    different subset), on whose scores the export chooses calibration and operating points.

    A run folder that already holds a finished run of the same configuration is kept, not
    retrained, so that an interrupted cross-validation resumes where it stopped.

    Raises:
        ModelError: fewer than 2 folds (3 with ``nested``).
    """
    if cfg.folds < (3 if nested else 2):
        raise ModelError(
            f"{'a nested ' if nested else ''}cross-validation needs --folds of {3 if nested else 2} or "
            f"more, not {cfg.folds}"
        )
    names = [f"fold-{k}" for k in range(cfg.folds)]
    configs = [cfg.model_copy(update={"fold": k, "out": cfg.out / name}) for k, name in enumerate(names)]
    pair_folds = list(combinations(range(cfg.folds), 2)) if nested else []
    configs += [
        cfg.model_copy(update={"fold": i, "second_fold": j, "out": cfg.out / pair_run(i, j)}) for i, j in pair_folds
    ]
    results = [_finished(c, data.digest) or Trainer(task, c, progress).fit(data) for c in configs]
    spec: dict[str, object] = {"task": task.name, "folds": cfg.folds, "runs": names}
    if nested:
        spec["nested"] = [pair_run(i, j) for i, j in pair_folds]
    (cfg.out / CV_FILE).write_text(json.dumps(spec, indent=2))
    return results


def pair_run(i: int, j: int) -> str:
    """The run folder of a nested cross-validation's model that held out folds ``i < j``."""
    return f"pair-{i}-{j}"


def _pairs_holding_out(i: int, k: int) -> list[tuple[int, int]]:
    """The nested models (pairs of folds, sorted) of a ``k``-fold cross-validation that held out fold ``i``."""
    return [(min(i, j), max(i, j)) for j in range(k) if j != i]


def _finished(cfg: RunConfig, digest: str) -> TrainResult | None:
    """The result of a finished run in ``cfg.out`` that ``cfg`` would train again, or ``None``.

    Same options (the folder it sits in and the data path's spelling aside) and the same data
    (by digest): a run on data that has since changed is trained again, not kept.
    """
    try:
        done = RunConfig.model_validate_json((cfg.out / "run.json").read_text())
        summary = json.loads((cfg.out / "train.json").read_text())
    except (OSError, ValueError):
        return None

    def comparable(c: RunConfig) -> RunConfig:
        return c.model_copy(update={"out": Path(), "data": c.data.resolve()})

    if (
        comparable(done) != comparable(cfg)
        or summary.get("data_digest") != digest
        or not (cfg.out / "checkpoint.pt").is_file()
        or not (cfg.out / "predictions.npz").is_file()
    ):
        return None
    return TrainResult(
        cfg.out,
        int(summary["best_epoch"]),
        float(summary["best_val_flag_auroc"]),
        int(summary["epochs_run"]),
        float(summary["train_seconds"]),
        int(summary.get("kept_epoch", summary["best_epoch"])),
        float(summary.get("kept_val_flag_auroc", summary["best_val_flag_auroc"])),
    )


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


def nested_out_of_fold_predictor(
    task: Task, pair_nets: dict[tuple[int, int], torch.nn.Module], fold_sizes: list[int]
) -> Callable[[list[FloatArray]], FloatArray]:
    """Like ``out_of_fold_predictor``, for a nested cross-validation: each record of fold ``i`` is
    scored by the mean of the pair models ``(i, j)`` (sorted), every one of which held out fold ``i``.

    Raises:
        ValueError: a pair model is missing, or a call's signals are not as many as the folds' records.
    """
    k = len(fold_sizes)
    wanted = set(combinations(range(k), 2))
    if set(pair_nets) != wanted:
        raise ValueError(
            f"a nested {k}-fold cross-validation needs the {len(wanted)} pair models, got {len(pair_nets)}"
        )
    bounds = np.cumsum([0, *fold_sizes])

    def predict(signals: list[FloatArray]) -> FloatArray:
        if len(signals) != bounds[-1]:
            raise ValueError(f"expected the {bounds[-1]} out-of-fold records in fold order, got {len(signals)}")
        parts = []
        for i in range(k):
            part = signals[bounds[i] : bounds[i + 1]]
            nets = [pair_nets[pair] for pair in _pairs_holding_out(i, k)]
            parts.append(np.mean([predict_probs(task, net, part) for net in nets], axis=0))
        out: FloatArray = np.concatenate(parts).astype(np.float32)
        return out

    return predict


def nested_out_of_fold_probs(folder: Path, pairs: list[str], fold_val_ids: list[np.ndarray]) -> FloatArray:
    """Probabilities of each out-of-fold record (in fold order) from the mean of the k-1 pair
    models that held out its fold, read from their stored validation predictions.

    Raises:
        ExportError: a pair run is missing, or does not hold out exactly its two folds' records.
    """
    k = len(fold_val_ids)
    by_pair: dict[tuple[int, int], dict[str, FloatArray]] = {}
    for i, j in combinations(range(k), 2):
        name = pair_run(i, j)
        if name not in pairs or not (folder / name / "predictions.npz").is_file():
            raise ExportError(f"{folder / name} is missing: the nested cross-validation is not finished")
        with np.load(folder / name / "predictions.npz") as p:
            ids, probs = p["val_ids"], p["val_probs"]
        expected = set(fold_val_ids[i].tolist()) | set(fold_val_ids[j].tolist())
        if set(ids.tolist()) != expected:
            raise ExportError(f"{folder / name} does not hold out exactly folds {i} and {j}")
        by_pair[(i, j)] = {str(r): pr for r, pr in zip(ids, probs, strict=True)}
    rows = [
        np.mean([by_pair[pair][str(r)] for pair in _pairs_holding_out(i, k)], axis=0)
        for i in range(k)
        for r in fold_val_ids[i]
    ]
    out: FloatArray = np.asarray(rows, np.float32)
    return out


def _ensemble_caveat(nested: bool, held_out: bool, k: int, checkpoint: str) -> str:
    """What the card says about the gap between the scores that chose the points and the shipped ensemble."""
    unmeasured = ", and no test part was held out to measure the ensemble itself"
    differ = "its figures on new data may differ from the out-of-fold ones"
    measured = (
        ": its own figures at both points on the held-out test part are in shift.test_at_operating_points."
        if held_out
        else f"{unmeasured} on records new to every member: {differ}."
    )
    picked = (
        " Each model's epoch was chosen by validation AUROC on the records it later scores, which flatters "
        "those scores a little."
        if checkpoint == "best"
        else ""
    )
    if nested:
        return (
            f"Calibration and both operating points were chosen on nested out-of-fold scores: means of {k - 1} "
            f"models, each trained on {k - 2}/{k} of the training side, none trained on the record. The shipped "
            f"model averages {k} models trained on {k - 1}/{k}: close in shape, not identical{measured} The fold "
            "models' single-model figures at the same points are in "
            f"shift.single_models_out_of_fold_at_operating_points.{picked}"
        )
    return (
        "Calibration and both operating points were chosen on the fold models' out-of-fold scores; the shipped "
        "model averages the fold models, whose scores are softer"
        + (measured if held_out else f"{unmeasured}: {differ} (it tends to flag more at the same threshold).")
        + picked
    )


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
    pairs: list[str] = spec.get("nested", [])
    nested = bool(pairs)
    fold_sizes = [len(p["val_ids"]) for p in preds]
    # the scores that choose calibration and thresholds: an ensemble's that never saw the record
    # (nested), or a single fold model's
    choosing_probs = nested_out_of_fold_probs(folder, pairs, [p["val_ids"] for p in preds]) if nested else oof_probs
    test_labels = preds[0]["test_labels"]
    data = task.load_dataset(cfg.data, get_settings().cache_dir, progress, "train")
    if data.digest != summary["data_digest"]:
        raise ExportError(
            f"the data in {cfg.data} changed since training (digest differs): run the same prescreen train command "
            "again, which retrains every fold on the data as it is now"
        )
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
    if nested:
        chosen_on = (
            f"nested out-of-fold predictions of a {len(runs)}-fold stratified group cross-validation over the "
            f"training side (n={len(oof_labels)}): each record scored by the mean of the {len(runs) - 1} models "
            "that held out its fold and one other"
        )
    found = characterize(task, oof_labels, choosing_probs, chosen_on)
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
        perturbed_on = "the out-of-fold records (no test part was held out), each scored by " + (
            f"the mean of the {len(runs) - 1} nested models that did not train on it"
            if nested
            else "the fold model that did not train on it"
        )
        if nested:
            pair_nets = {(i, j): load_run(folder / pair_run(i, j))[3] for i, j in combinations(range(len(runs)), 2)}
            oof_predict = nested_out_of_fold_predictor(task, pair_nets, fold_sizes)
        else:
            oof_predict = out_of_fold_predictor(task, [net for _, _, _, net in loaded], fold_sizes)
        perturbations = perturbation_table(
            task, oof_labels, check, oof_predict, temperature, found.operating_points, cfg.seed
        )
    shift = {
        **found.shift,
        "perturbations": perturbations,
        "perturbations_measured_on": perturbed_on,
        # the points were chosen on single fold models' (or nested ensembles') out-of-fold scores,
        # not the shipped ensemble's, so its own figures at each point on the test part are stated too
        "test_at_operating_points": [
            {"operating_point": name, **{k: _round4(v) for k, v in point_metrics.items()}}
            for name, point_metrics in _at_points(task, test_labels, test_probs, temperature, found).items()
        ],
    }
    if held_out:
        shift.update(
            novelty_of_test_part(
                task, data, preds[0]["test_ids"], test_labels, apply_temperature(test_probs, temperature), balanced
            )
        )
    if nested:  # what single fold models' scores would have done at the same points: the ensemble effect
        shift["single_models_out_of_fold_at_operating_points"] = [
            {"operating_point": name, **{k: _round4(v) for k, v in point_metrics.items()}}
            for name, point_metrics in _at_points(task, oof_labels, oof_probs, temperature, found).items()
        ]
    common = {"dataset_path": str(cfg.data), "dataset_digest": summary["data_digest"]}
    validation = evaluate_probs(
        task,
        oof_labels,
        apply_temperature(choosing_probs, temperature),
        balanced,
        split="nested out-of-fold (cross-validation)" if nested else "out-of-fold (cross-validation)",
        **common,
        note=(
            f"each record predicted by the mean of the {len(runs) - 1} nested models that did not train on it"
            if nested
            else "each record predicted by the fold model that did not train on it"
        )
        + "; chose calibration and thresholds",
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
    member_seconds = sum(float(m["train_seconds"]) for m in members)
    nested_seconds = sum(float(json.loads((folder / n / "train.json").read_text())["train_seconds"]) for n in pairs)
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
            # what making this model cost: the shipped members and, when nested, the pair models
            "train_seconds_total": round(member_seconds + nested_seconds, 1),
            "config": json.loads(cfg.model_copy(update={"fold": None, "out": folder}).model_dump_json()),
            "members": members,
            **({"nested_models": len(pairs), "nested_train_seconds": round(nested_seconds, 1)} if nested else {}),
        },
        onnx=onnx_entry(onnx_path, max_diff, len(examples), quantized),
        validation=validation,
        test=test,
        caveats=[*task.caveats, _ensemble_caveat(nested, held_out, len(runs), cfg.checkpoint)],
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
