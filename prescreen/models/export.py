"""Export a training run to ONNX with a parity check, and write its model card."""

from __future__ import annotations

import json
import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prescreen.config import get_settings
from prescreen.errors import ExportError, ModelError
from prescreen.evaluation.evaluate import evaluate_probs, flag_truth
from prescreen.evaluation.threshold import choose_threshold
from prescreen.models.card import ModelCard
from prescreen.models.onnx_model import INPUT_NAME, OUTPUT_NAME, make_session, sha256_file
from prescreen.models.task import Task, get_task
from prescreen.training.config import RunConfig

PARITY_TOLERANCE = 1e-4


class WithSoftmax(nn.Module):
    """The network followed by softmax, so the ONNX file outputs class probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(signal), dim=1)


def load_run(run_dir: Path) -> tuple[RunConfig, dict[str, Any], Task, nn.Module]:
    """Config, training summary, task and best-checkpoint network of a run folder.

    Raises:
        ModelError: the folder is not a finished training run.
    """
    needed = ["run.json", "train.json", "checkpoint.pt", "predictions.npz"]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        raise ModelError(f"{run_dir} is not a finished training run (missing {', '.join(missing)})")
    cfg = RunConfig.model_validate_json((run_dir / "run.json").read_text())
    summary = json.loads((run_dir / "train.json").read_text())
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


def export_run(run_dir: Path, progress: bool = False) -> tuple[Path, ModelCard]:
    """Export ``run_dir``: ONNX file, parity check, threshold on validation, card.

    Returns:
        the ONNX path (``run_dir/model.onnx``) and the card (also ``run_dir/card.json``).

    Raises:
        ModelError: not a run folder; ExportError: export or parity failed.
    """
    cfg, summary, task, net = load_run(run_dir)
    preds = np.load(run_dir / "predictions.npz")
    val_labels, val_probs = preds["val_labels"], preds["val_probs"]
    test_labels, test_probs = preds["test_labels"], preds["test_probs"]
    threshold = choose_threshold(flag_truth(task, val_labels), task.flag_scores(val_probs))
    data = task.load_dataset(cfg.data, get_settings().cache_dir, progress)
    if data.digest != summary["data_digest"]:
        raise ExportError(f"the data in {cfg.data} changed since training (digest differs)")
    by_id = {rid: i for i, rid in enumerate(data.ids)}
    val_windows = np.concatenate([task.windows(data.signals[by_id[str(r)]]) for r in preds["val_ids"][:64]])
    wrapped = WithSoftmax(net).eval()
    onnx_path = run_dir / "model.onnx"
    export_onnx(wrapped, torch.from_numpy(val_windows[:2]), onnx_path)
    max_diff = parity(wrapped, onnx_path, val_windows)
    common = {"dataset_path": str(cfg.data), "dataset_digest": summary["data_digest"]}
    validation = evaluate_probs(
        task,
        val_labels,
        val_probs,
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
            test_probs,
            threshold,
            split="held-out test split",
            **common,
            note="records never used for training, early stopping or the threshold",
        )
    card = ModelCard(
        task=task.name,
        name=task.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=list(task.classes),
        normal_classes=list(task.normal_classes),
        flag_rule=task.flag_rule,
        input_spec=task.input_spec,
        operating_threshold=round(threshold, 6),
        threshold_chosen_on=f"validation split (n={len(val_labels)}), maximizing flag accuracy",
        training={**summary, "config": json.loads(cfg.model_dump_json())},
        onnx={
            "file": "model.onnx",
            "sha256": sha256_file(onnx_path),
            "size_bytes": onnx_path.stat().st_size,
            "parity_max_abs_diff": max_diff,
            "parity_inputs": len(val_windows),
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
        },
        validation=validation,
        test=test,
    )
    card.save(run_dir / "card.json")
    return onnx_path, card
