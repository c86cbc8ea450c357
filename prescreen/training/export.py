"""Export a training run to ONNX with a parity check, and write its model card."""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn

from prescreen.config import get_settings
from prescreen.datasets.collections import LabelledSet
from prescreen.errors import ExportError, ModelError
from prescreen.evaluation.evaluate import evaluate_probs, flag_truth
from prescreen.evaluation.novelty import novelty_table
from prescreen.evaluation.operating import characterize, perturbation_table
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import INPUT_NAME, OUTPUT_NAME, FloatArray, make_session, sha256_file
from prescreen.models.task import Task, get_task
from prescreen.training.config import RunConfig
from prescreen.training.groups import nearest_distance
from prescreen.training.quantize import describe as describe_quantization
from prescreen.training.quantize import quantize_weights

PARITY_TOLERANCE = 1e-4
MAX_MODEL_BYTES = 10_000_000
"""A shipped model file (an ensemble included) stays within 10 MB; a larger one is INT8-quantized."""
MAX_QUANTIZED_DISAGREEMENT = 0.01
"""The share of validation decisions an INT8 model may change against its FP32 original."""


class MeanSoftmax(nn.Module):
    """Softmax of each member network, averaged: the ONNX file outputs class probabilities.

    One member is a plain model; several make an ensemble (same inputs, mean probabilities).
    """

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(net(signal), dim=1) for net in self.nets]
        return torch.stack(probs).mean(dim=0)


def load_run(run_dir: Path) -> tuple[RunConfig, dict[str, Any], Task, nn.Module]:
    """Config, training summary, task and best-checkpoint network of a run folder.

    Raises:
        ModelError: the folder is not a finished training run.
    """
    needed = ["run.json", "train.json", "checkpoint.pt", "predictions.npz"]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        raise ModelError(f"{run_dir} is not a finished training run (missing {', '.join(missing)})")
    try:
        cfg = RunConfig.model_validate_json((run_dir / "run.json").read_text())
        summary = json.loads((run_dir / "train.json").read_text())
        with np.load(run_dir / "predictions.npz") as preds:
            missing_keys = {"val_ids", "val_labels", "val_probs", "test_ids", "test_labels", "test_probs"} - set(preds)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{run_dir} holds a corrupt run file: {exc}") from exc
    if missing_keys:
        raise ModelError(f"{run_dir}/predictions.npz lacks {', '.join(sorted(missing_keys))}")
    task = get_task(cfg.task)
    net = task.build_network()
    try:
        net.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True))
    except Exception as exc:
        raise ModelError(f"checkpoint {run_dir / 'checkpoint.pt'} cannot be loaded: {exc}") from exc
    return cfg, summary, task, net.eval()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch → ONNX with the dynamo exporter and a dynamic batch dimension."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model.eval(),
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"signal": {0: torch.export.Dim("batch", min=1, max=4096)}},
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {exc}") from exc


def parity(model: nn.Module, onnx_path: Path, inputs: np.ndarray[Any, Any]) -> float:
    """Max |torch - ONNX Runtime| over ``inputs``; raises ``ExportError`` above the tolerance."""
    session = make_session(onnx_path)
    with torch.inference_mode():
        expected = model(torch.from_numpy(inputs)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    diff = float(np.max(np.abs(expected - got)))
    if not np.isfinite(diff) or diff > PARITY_TOLERANCE:
        raise ExportError(f"ONNX output differs from torch by {diff:.2e} (> {PARITY_TOLERANCE:.0e})")
    return diff


def onnx_predictor(task: Task, path: Path) -> Callable[[list[FloatArray]], FloatArray]:
    """Preprocessed signals → class probabilities of an ONNX file (uncalibrated)."""
    session = make_session(path)

    def predict(signals: list[FloatArray]) -> FloatArray:
        return task.predict_by_windows(signals, lambda w: session.run([OUTPUT_NAME], {INPUT_NAME: w})[0])

    return predict


def quantize(fp32: Path, int8: Path) -> None:
    """Store the weights of ``fp32``'s convolutions and matrix products as INT8 per output channel
    (``prescreen.training.quantize``): a file about four times smaller that still runs FP32 kernels."""
    try:
        model = quantize_weights(onnx.load(str(fp32)))
        onnx.checker.check_model(model)
        onnx.save(model, str(int8))
    except ExportError:
        raise
    except Exception as exc:  # onnx raises its own classes (and protobuf's)
        raise ExportError(f"INT8 quantization failed: {exc}") from exc


def shrink_to_limit(
    task: Task, onnx_path: Path, check: list[FloatArray], temperature: float, threshold: float, where: str
) -> dict[str, Any] | None:
    """INT8-quantize ``onnx_path`` in place when it exceeds ``MAX_MODEL_BYTES``, after checking that
    its decisions (calibrated, at ``threshold``) on ``check`` differ from FP32 on at most 1 %.

    Returns:
        what was done, for the card; ``None`` when the file was small enough.

    Raises:
        ExportError: quantization failed, or it changes more than 1 % of the decisions.
    """
    size = onnx_path.stat().st_size
    if size <= MAX_MODEL_BYTES:
        return None
    int8 = onnx_path.with_name(onnx_path.stem + "-int8.onnx")
    quantize(onnx_path, int8)
    flags = [
        task.flag_scores(apply_temperature(onnx_predictor(task, p)(check), temperature)) >= threshold
        for p in (onnx_path, int8)
    ]
    disagreement = float(np.mean(flags[0] != flags[1]))
    if disagreement > MAX_QUANTIZED_DISAGREEMENT:
        int8.unlink()
        raise ExportError(f"INT8 decisions differ from FP32 on {disagreement:.1%} of {len(check)} records (> 1 %)")
    int8.replace(onnx_path)
    return {
        "method": describe_quantization(onnx.load(str(onnx_path))),
        "fp32_size_bytes": size,
        "decision_disagreement_vs_fp32": round(disagreement, 4),
        "checked_on": f"{len(check)} {where} records, balanced operating point",
    }


def novelty_of_test_part(
    task: Task,
    data: LabelledSet,
    test_ids: npt.NDArray[Any],
    test_labels: npt.NDArray[Any],
    calibrated_test: FloatArray,
    threshold: float,
) -> dict[str, Any]:
    """The card's ``shift`` entries for an image task's held-out test part by novelty: each test
    image's pHash distance to the nearest image outside the test part (the training side) and the
    figures per distance band at ``threshold`` (``prescreen.evaluation.novelty``); empty for other
    tasks or without a test part."""
    if task.input_spec.get("kind") != "image" or not len(test_ids):
        return {}
    test_set = {str(r) for r in test_ids}
    by_id = {rid: i for i, rid in enumerate(data.ids)}
    seen = [signal for rid, signal in zip(data.ids, data.signals, strict=True) if rid not in test_set]
    distance = nearest_distance([data.signals[by_id[str(r)]] for r in test_ids], seen)
    score = task.flag_scores(calibrated_test)
    return {
        "novelty": novelty_table(distance, flag_truth(task, test_labels), score, threshold),
        "novelty_measured_on": f"the held-out test part ({len(test_ids)} images), balanced operating point; distance: "
        f"pHash bits (of 64) to the nearest of the {len(seen)} images outside it",
    }


def onnx_entry(
    onnx_path: Path, max_diff: float, parity_inputs: int, quantized: dict[str, Any] | None
) -> dict[str, Any]:
    """The card's ``onnx`` entry: the file, its digest and size, the parity check and any quantization."""
    return {
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "size_bytes": onnx_path.stat().st_size,
        "parity_max_abs_diff": max_diff,
        "parity_inputs": parity_inputs,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        **({"quantized": quantized} if quantized else {}),
    }


def export_run(run_dirs: Path | list[Path], out: Path | None = None, progress: bool = False) -> tuple[Path, ModelCard]:
    """Export one run, or several runs of one split as an ensemble: ONNX file, parity check,
    threshold on the validation split, card.

    Args:
        run_dirs: one training run folder, or several trained on the same data and split
            (same ``split_seed``), whose probabilities are averaged.
        out: folder for ``model.onnx`` and ``card.json`` (default: the single run's folder,
            or ``<first run>-ensemble``).

    Returns:
        the ONNX path and the card (also written as ``card.json`` beside it).

    Raises:
        ModelError: not a run folder; ExportError: runs that do not share their data and
            split, or an export/parity failure.
    """
    runs = [run_dirs] if isinstance(run_dirs, Path) else list(run_dirs)
    if not runs:
        raise ModelError("no run folder given")
    loaded = [load_run(r) for r in runs]
    cfg, summary, task, _ = loaded[0]
    preds = [np.load(r / "predictions.npz") for r in runs]
    for run, (_, s, t, _), p in zip(runs[1:], loaded[1:], preds[1:], strict=True):
        same = (
            t.name == task.name
            and s["data_digest"] == summary["data_digest"]
            and np.array_equal(p["val_ids"], preds[0]["val_ids"])
            and np.array_equal(p["test_ids"], preds[0]["test_ids"])
        )
        if not same:
            raise ExportError(f"{run} was not trained on the same task, data and split as {runs[0]}")
    val_labels, test_labels = preds[0]["val_labels"], preds[0]["test_labels"]
    val_probs = np.mean([p["val_probs"] for p in preds], axis=0)
    test_probs = np.mean([p["test_probs"] for p in preds], axis=0)
    data = task.load_dataset(cfg.data, get_settings().cache_dir, progress, "train")
    if data.digest != summary["data_digest"]:
        raise ExportError(f"the data in {cfg.data} changed since training (digest differs)")
    by_id = {rid: i for i, rid in enumerate(data.ids)}
    val_windows = np.concatenate([task.windows(data.signals[by_id[str(r)]]) for r in preds[0]["val_ids"][:64]])
    wrapped = MeanSoftmax([net for _, _, _, net in loaded]).eval()
    folder = out or (runs[0] if len(runs) == 1 else runs[0].with_name(runs[0].name + "-ensemble"))
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    export_onnx(wrapped, torch.from_numpy(val_windows[:2]), onnx_path)
    max_diff = parity(wrapped, onnx_path, val_windows)
    val_signals = [data.signals[by_id[str(r)]] for r in preds[0]["val_ids"]]
    found = characterize(task, val_labels, val_probs, f"validation split (n={len(val_labels)})")
    temperature, threshold = found.calibration.temperature, found.operating_points["balanced"].threshold
    quantized = shrink_to_limit(task, onnx_path, val_signals, temperature, threshold, "validation")
    predict = onnx_predictor(task, onnx_path)
    if quantized:  # the shipped (INT8) model's own probabilities make the card's figures
        val_probs = predict(val_signals)
        if len(test_labels):
            test_probs = predict([data.signals[by_id[str(r)]] for r in preds[0]["test_ids"]])
    found.shift["perturbations"] = perturbation_table(
        task, val_labels, val_signals, predict, temperature, found.operating_points, cfg.seed
    )
    calibrated_val = apply_temperature(val_probs, found.calibration.temperature)
    calibrated_test = apply_temperature(test_probs, found.calibration.temperature) if len(test_labels) else test_probs
    common = {"dataset_path": str(cfg.data), "dataset_digest": summary["data_digest"]}
    validation = evaluate_probs(
        task,
        val_labels,
        calibrated_val,
        threshold,
        split="validation split",
        **common,
        note="the split that chose the checkpoint and the threshold",
    )
    test = None
    if len(test_labels):
        test = evaluate_probs(
            task,
            test_labels,
            calibrated_test,
            threshold,
            split="held-out test split",
            **common,
            note="records never used for training, early stopping or the threshold",
        )
    if len(test_labels):
        found.shift.update(
            novelty_of_test_part(task, data, preds[0]["test_ids"], test_labels, calibrated_test, threshold)
        )
    training = {**summary, "config": json.loads(cfg.model_dump_json())}
    if len(runs) > 1:
        members = [{**s, "seed": c.seed, "run": str(r)} for r, (c, s, _, _) in zip(runs, loaded, strict=True)]
        training = {
            "ensemble_of": len(runs),
            "data_path": summary["data_path"],
            "data_digest": summary["data_digest"],
            "split_seed": cfg.split_seed,
            "train_seconds_total": round(sum(float(m["train_seconds"]) for m in members), 1),
            "members": members,
        }
    card = ModelCard(
        task=task.name,
        name=task.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=list(task.classes),
        normal_classes=list(task.normal_classes),
        flag_rule=task.flag_rule,
        input_spec=task.input_spec,
        operating_threshold=round(threshold, 6),
        threshold_chosen_on=f"validation split (n={len(val_labels)}), maximizing Youden's J",
        training=training,
        onnx=onnx_entry(onnx_path, max_diff, len(val_windows), quantized),
        validation=validation,
        test=test,
        caveats=list(task.caveats),
        calibration=found.calibration,
        operating_points=found.operating_points,
        score_reference=found.score_reference,
        shift=found.shift,
        validation_scheme=(
            f"stratified record-level split (seed {cfg.split_seed}): train / validation / test"
            if cfg.group_by == "record"
            else f"stratified group split by {cfg.group_by} (seed {cfg.split_seed}): no group in two parts"
        ),
    )
    card.save(folder / "card.json")
    return onnx_path, card
