"""Evaluation reports: JSON in the documented schema, Markdown with a ROC curve and a
confusion-matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from prescreen.evaluation.evaluate import PointFigures
from prescreen.evaluation.metrics import BoolArray, FloatArray
from prescreen.models.card import Evaluation

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "auroc": "AUROC",
    "balanced_accuracy": "Balanced accuracy",
}


def evaluation_json(
    task: str,
    model: dict[str, str],
    evaluation: Evaluation,
    classes: list[str],
    threshold: float,
    skipped: int,
    points: dict[str, PointFigures] | None = None,
    flag_prevalence: float | None = None,
) -> dict[str, Any]:
    """The ``--json`` document: task, model, dataset, metrics (value and 95 % CI) at ``threshold``,
    target; with ``points``, the figures at each of the model's operating points too
    (``operating_points``), and with ``flag_prevalence``, the data set's share of studies to flag."""
    doc: dict[str, Any] = {
        "task": task,
        "model": model,
        "dataset": {
            "path": evaluation.dataset_path,
            "n": evaluation.n,
            "digest": evaluation.dataset_digest,
            "skipped": skipped,
        },
        "metrics": {k: v.model_dump() for k, v in evaluation.metrics.items()},
        "target": evaluation.target.model_dump(),
        "threshold": threshold,
        "classes": classes,
        "confusion": evaluation.confusion,
        "challenge_f1": evaluation.challenge_f1,
        "ci": "95 % percentile bootstrap",
        "when": evaluation.when,
    }
    if flag_prevalence is not None:
        doc["dataset"]["flag_prevalence"] = flag_prevalence
    if points:
        doc["operating_points"] = {
            name: {
                "threshold": p.threshold,
                "flagged_share": p.flagged_share,
                "metrics": {k: v.model_dump() for k, v in p.metrics.items()},
            }
            for name, p in points.items()
        }
    return doc


def flag_share(doc: dict[str, Any]) -> str | None:
    """How many of an evaluation document's studies should be flagged, in words; ``None`` when it
    does not say."""
    prevalence = doc["dataset"].get("flag_prevalence")
    return None if prevalence is None else f"{100 * prevalence:.1f} % of these studies should be flagged"


def operating_point_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per operating point of an evaluation document: name, threshold, share flagged, then
    each metric as ``value [low, high]``; empty when the document has no operating points."""
    rows = []
    for name, p in doc.get("operating_points", {}).items():
        cells = [name, f"{p['threshold']:.4f}", f"{100 * p['flagged_share']:.1f} %"]
        cells += [f"{fmt(v['value'])} [{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]" for v in p["metrics"].values()]
        rows.append(cells)
    return rows


def operating_point_header(doc: dict[str, Any]) -> list[str]:
    """The column names of :func:`operating_point_rows`."""
    first: dict[str, Any] = next(iter(doc.get("operating_points", {}).values()), {"metrics": {}})
    return ["Operating point", "Threshold", "Flagged", *(METRIC_LABELS.get(k, k) for k in first["metrics"])]


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_report(
    folder: Path,
    doc: dict[str, Any],
    truth: BoolArray,
    score: FloatArray,
) -> Path:
    """Write ``report.md``, ``roc.png`` and ``confusion.png`` into ``folder``; returns the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    _roc_png(folder / "roc.png", truth, score, doc["threshold"])
    _confusion_png(folder / "confusion.png", np.asarray(doc["confusion"]), doc["classes"])
    m = doc["metrics"]
    rows = "\n".join(
        f"| {METRIC_LABELS[k]} | {fmt(v['value'])} | [{fmt(v['ci_low'])}, {fmt(v['ci_high'])}] |" for k, v in m.items()
    )
    t = doc["target"]
    verdict = "met" if t["met"] else "**not met**"
    points = ""
    if doc.get("operating_points"):
        header = operating_point_header(doc)
        lines = [f"| {' | '.join(header)} |", f"|{' --- |' * len(header)}"]
        lines += [f"| {' | '.join(cells)} |" for cells in operating_point_rows(doc)]
        share = f" ({flag_share(doc)})" if flag_share(doc) else ""
        points = (
            f"\n## At the model's operating points{share}\n\n"
            "`balanced` decides `flagged`; `safety` is the more sensitive point a routing rule can match. "
            "Balanced accuracy does not depend on the share of abnormal studies: compare it between sites.\n\n"
            + "\n".join(lines)
            + "\n"
        )
    text = f"""# Evaluation of {doc["task"]} — {doc["model"]["name"]}:{doc["model"]["version"]}

- Data: `{doc["dataset"]["path"]}` — {doc["dataset"]["n"]} studies (digest `{doc["dataset"]["digest"][:16]}`),
  {doc["dataset"]["skipped"]} skipped as unreadable
- Operating threshold: {doc["threshold"]:.4f} on the flag score (1 − P(normal))
- Target: {t["metric"]} ≥ {t["threshold"]} — {verdict} ({t["metric"]} {fmt(m[t["metric"]]["value"])})
- Challenge F1 (mean over {", ".join(c for c in doc["classes"] if c != "noisy")}): {fmt(doc["challenge_f1"])}
- Intervals: {doc["ci"]} ({doc["when"]})

| Flag metric | Value | 95 % CI |
| --- | --- | --- |
{rows}
{points}
![ROC curve](roc.png)

![Confusion matrix](confusion.png)

If this data set overlaps the model's training data, these figures are not a measure of accuracy.
"""
    path = folder / "report.md"
    path.write_text(text)
    (folder / "evaluation.json").write_text(json.dumps(doc, indent=2))
    return path


def _roc_png(path: Path, truth: BoolArray, score: FloatArray, threshold: float) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    if truth.any() and not truth.all():
        fpr, tpr, _thr = roc_curve(truth, score)
        ax.plot(fpr, tpr, label="ROC")
        pred = score >= threshold
        sens = float(np.mean(pred[truth]))
        spec = float(np.mean(~pred[~truth]))
        ax.scatter([1 - spec], [sens], color="red", zorder=3, label=f"threshold {threshold:.3f}")
        ax.legend(loc="lower right")
    else:  # one class only: the ROC (and AUROC) is undefined
        ax.text(0.5, 0.5, "one class only: no ROC curve", ha="center", va="center")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC of the flag")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _confusion_png(path: Path, cm: np.ndarray[Any, Any], classes: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title("Class confusion")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
