"""Training of the ``holter`` beat classifier (``prescreen train holter``).

1. The beat set: every DS1 record of the data folder is analysed as in service (GQRS detection chunk by
   chunk, beat inputs, RR features: :func:`prescreen.models.holter_beats.extract_beats`); each detected
   beat takes the AAMI class of the reference beat it matches within 150 ms (unmatched detections and
   beats inside ventricular flutter are not trained on). The extraction is cached per record.
2. Group k-fold by record (folds balanced in S and V beats): a network per fold, trained on the other
   folds' records, classifies the held-out records; the whole analysis (events, flag) of these
   out-of-fold predictions gives the honest by-record figures of the card.
   Each held-out record is also analysed again under noise, baseline wander and a gain change (the
   card's perturbation table).
3. The final network is trained on all records with the same settings, exported to ONNX (parity
   checked) and described by ``card.json``.

Training uses a class-weighted loss (N dominates) and at most ``n_per_record`` N beats of each record.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from torch import nn

from prescreen.config import get_settings
from prescreen.datasets.collections import digest_files
from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.holter import (
    DS1_RECORDS,
    PACED_RECORDS,
    HolterRecord,
    Reference,
    aami_records,
    read_reference,
    record_files,
    record_names,
)
from prescreen.errors import DatasetError
from prescreen.evaluation.calibration import expected_calibration_error, fit_temperature, reliability
from prescreen.evaluation.holter import (
    GOALS,
    TOLERANCE_S,
    RecordOutcome,
    gross,
    match_beats,
    outcomes_document,
    outside,
    record_outcome,
    write_holter_report,
)
from prescreen.evaluation.operating import point_spec, prevalence_table, score_reference
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import Calibration, Evaluation, MetricValue, ModelCard, OperatingPointSpec, Target
from prescreen.models.holter import CAVEATS, CLASSES, decide
from prescreen.models.holter_beats import INPUT_SPEC, SHAPE_FEATURES, ExtractedBeats, extract_beats, shape_features
from prescreen.models.holter_events import FLAG_RULE
from prescreen.models.holter_network import HolterBeatNet
from prescreen.models.task import FloatArray
from prescreen.training.export import MeanSoftmax, export_onnx, onnx_entry, parity
from prescreen.training.trainer import seed_everything

IntArray = npt.NDArray[np.int64]
Perturbation = Callable[[FloatArray, np.random.Generator], FloatArray]

MODEL_NAME = "holter-beats"
MODEL_VERSION = "1.0.0"
EXTRACTION_VERSION = "holter-beats-4"
DEFAULT_EPOCHS = 14
BATCH_SIZE = 256
LR = 3e-3
WEIGHT_DECAY = 1e-3
N_PER_RECORD = 1200
CLASS_WEIGHT_POWER = 0.5
WIDTH = 24
DROPOUT = 0.2
MAX_CLASS_WEIGHT = 30.0
SAFETY_THRESHOLD = 0.5
Q_ = CLASSES.index("Q")
S_ = CLASSES.index("S")
ABERRANT_CORRELATION = 0.7


def split_text(folds: int) -> str:
    """How the card's figures were measured: ``5-fold cross-validation by record on DS1 (out-of-fold)``."""
    return f"{folds}-fold cross-validation by record on DS1 (out-of-fold)"


@dataclass
class RecordBeats:
    """One training record: its extracted beats and the reference class of each (-1: none)."""

    name: str
    beats: ExtractedBeats
    labels: IntArray
    reference: Reference
    path: Path


@dataclass(frozen=True)
class HolterTrainResult:
    """What :func:`train_holter` made.

    Attributes:
        out: the output folder.
        onnx_path: the exported model.
        card: its card.
        oof: the out-of-fold evaluation document.
        seconds: the wall time of the whole run.
        epochs: epochs per network.
        folds: folds of the cross-validation.
    """

    out: Path
    onnx_path: Path
    card: ModelCard
    oof: dict[str, Any]
    seconds: float
    epochs: int
    folds: int


# --------------------------------------------------------------------------- the beat set


def _cache_path(path: Path, cache_dir: Path) -> Path:
    spec = json.dumps(INPUT_SPEC, sort_keys=True) + EXTRACTION_VERSION
    key = hashlib.sha256((digest_files(record_files(path)) + spec).encode()).hexdigest()[:20]
    return cache_dir / "holter-beats" / f"{path.name}-{key}.npz"


def _save_beats(beats: ExtractedBeats, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        fs=beats.fs,
        lead=beats.lead,
        duration_s=beats.duration_s,
        samples=beats.samples,
        morph=beats.morph,
        template_of=beats.template_of,
        templates=beats.templates,
        rr=beats.rr,
        excluded=np.asarray(beats.excluded, dtype=np.float64).reshape(-1, 2),
    )
    tmp.replace(file)


def _load_beats(file: Path) -> ExtractedBeats:
    with np.load(file) as z:
        return ExtractedBeats(
            fs=float(z["fs"]),
            lead=str(z["lead"]),
            duration_s=float(z["duration_s"]),
            samples=z["samples"].astype(np.int64),
            morph=z["morph"].astype(np.float32),
            template_of=z["template_of"].astype(np.int64),
            templates=z["templates"].astype(np.float32),
            rr=z["rr"].astype(np.float32),
            excluded=[(float(a), float(b)) for a, b in z["excluded"]],
        )


def beats_of(path: Path, cache_dir: Path | None) -> ExtractedBeats:
    """A record's extracted beats, from the cache when it holds them for these files and settings."""
    file = _cache_path(path, cache_dir) if cache_dir is not None else None
    if file is not None and file.is_file():
        try:
            return _load_beats(file)
        except (OSError, ValueError, KeyError):
            file.unlink(missing_ok=True)
    with HolterRecord.from_path(path) as record:
        beats = extract_beats(record)
    if file is not None:
        _save_beats(beats, file)
    return beats


def label_beats(beats: ExtractedBeats, reference: Reference) -> IntArray:
    """The reference class of each detected beat (matched within 150 ms), -1 where none (or in flutter)."""
    labels = np.full(len(beats), -1, dtype=np.int64)
    ref_idx, det_idx = match_beats(reference.beat_samples, beats.samples, round(TOLERANCE_S * reference.fs))
    labels[det_idx] = reference.beat_classes[ref_idx]
    labels[~outside(beats.samples, reference.excluded)] = -1
    return labels


def training_records(data: Path, names: Sequence[str] | None = None) -> list[Path]:
    """The DS1 records of ``data`` (or the ``names`` given), paced ones left out.

    Raises:
        DatasetError: a missing folder, or none of the records.
    """
    present = set(record_names(data)) if data.is_dir() else set()
    wanted = list(names) if names is not None else [n for n in DS1_RECORDS if n in present]
    if not wanted:
        raise DatasetError(
            f"{data} holds none of the DS1 records of MIT-BIH ({', '.join(DS1_RECORDS[:4])}, ...); "
            "expected the mitdb folder of the shared data"
        )
    return aami_records(data, wanted)


def build_beat_set(paths: Sequence[Path], cache_dir: Path | None, progress: bool = True) -> list[RecordBeats]:
    """Extract and label the beats of every record (with a progress bar)."""
    out: list[RecordBeats] = []
    with _bar(progress) as bar:
        job = bar.add_task("holter beat set", total=len(paths))
        for path in paths:
            reference = read_reference(path)
            if reference.paced:
                raise DatasetError(f"record {path.name} holds paced beats; paced records are excluded from training")
            beats = beats_of(path, cache_dir)
            out.append(RecordBeats(path.name, beats, label_beats(beats, reference), reference, path))
            bar.update(job, advance=1, description=f"holter beat set ({path.name})")
    return out


def _bar(progress: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, disable=not progress)


def assign_folds(records: Sequence[RecordBeats], folds: int, seed: int) -> IntArray:
    """Fold of each record, balanced in the rare classes: records go in order of their S, then V beats
    (most first) to the fold with the fewest beats of that class so far, then the fewest records (ties
    at random)."""
    rng = np.random.default_rng(seed)
    counts = np.array([[np.sum(r.labels == c) for c in (1, 2)] for r in records], dtype=np.float64)
    jitter = rng.random(len(records))
    order = sorted(range(len(records)), key=lambda i: (-counts[i, 0], -counts[i, 1], jitter[i]))
    load = np.zeros((folds, 2))
    size = np.zeros(folds)
    fold_of = np.zeros(len(records), dtype=np.int64)
    for i in order:
        rare = 0 if counts[i, 0] > 0 else 1
        tie = rng.random(folds)
        f = min(range(folds), key=lambda k: (load[k, rare], size[k], tie[k]))
        fold_of[i] = f
        load[f] += counts[i]
        size[f] += 1
    return fold_of


def aberrant_s(r: RecordBeats) -> npt.NDArray[np.bool_]:
    """S beats whose QRS is unlike the patient's median beat (correlation below
    :data:`ABERRANT_CORRELATION`): aberrantly conducted, they look like V beats and would teach the
    network to call wide premature beats S. They are evaluated, not trained on."""
    s = r.labels == S_
    out = np.zeros(len(r.labels), dtype=bool)
    if s.any():
        idx = np.flatnonzero(s)
        features = shape_features(r.beats.morph[idx], r.beats.templates[r.beats.template_of[idx]])
        out[idx] = features[:, SHAPE_FEATURES.index("qrs_correlation")] < ABERRANT_CORRELATION
    return out


def training_arrays(
    records: Sequence[RecordBeats], rng: np.random.Generator, n_per_record: int = N_PER_RECORD
) -> tuple[FloatArray, IntArray]:
    """Inputs and labels of the labelled beats of ``records``, at most ``n_per_record`` N beats each.

    Q beats are left out: the few unpaced ones in MIT-BIH (8 in DS1) teach nothing but noise; so are
    aberrantly conducted S beats (:func:`aberrant_s`)."""
    xs: list[FloatArray] = []
    ys: list[IntArray] = []
    for r in records:
        idx = np.flatnonzero((r.labels >= 0) & (r.labels != Q_) & ~aberrant_s(r))
        normal = idx[r.labels[idx] == 0]
        if len(normal) > n_per_record:
            drop = np.setdiff1d(normal, rng.choice(normal, n_per_record, replace=False))
            idx = np.setdiff1d(idx, drop)
        xs.append(r.beats.inputs_at(idx))
        ys.append(r.labels[idx])
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------- the network


def class_weights(labels: IntArray, n_classes: int = len(CLASSES)) -> torch.Tensor:
    """Loss weights ∝ (1 / class frequency) ** ``CLASS_WEIGHT_POWER``, mean 1 over present classes,
    capped at ``MAX_CLASS_WEIGHT`` times the N weight."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = (counts[present].sum() / counts[present]) ** CLASS_WEIGHT_POWER
    w = np.minimum(w, MAX_CLASS_WEIGHT * (w[0] if w[0] > 0 else w[present].min()))
    w[present] /= w[present].mean()
    w[~present] = 1.0
    return torch.tensor(w, dtype=torch.float32)


def _augment(x: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Gain (beat and template alike), noise on the beat, and a common heart-rate factor on the RR seconds."""
    out = x.copy()
    out[:, :2] *= rng.uniform(0.8, 1.2, (len(x), 1, 1)).astype(np.float32)
    out[:, 0] += rng.normal(0.0, 0.03, out[:, 0].shape).astype(np.float32)
    out[:, 2, :4] *= rng.uniform(0.9, 1.1, (len(x), 1)).astype(np.float32)
    return out


def fit_network(
    x: FloatArray,
    y: IntArray,
    *,
    seed: int,
    epochs: int,
    bar: Progress,
    job: TaskID,
    name: str,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train a fresh :class:`HolterBeatNet` on ``x, y``; returns it (eval mode) and its loss history."""
    seed_everything(seed, get_settings().onnx_threads)
    rng = np.random.default_rng(seed)
    net = HolterBeatNet(len(CLASSES), WIDTH, DROPOUT)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y), label_smoothing=0.02)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = max(1, len(y) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps, pct_start=0.2)
    history: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        net.train()
        order = rng.permutation(len(y))
        total = 0.0
        for s in range(steps):
            batch = order[s * BATCH_SIZE : (s + 1) * BATCH_SIZE]
            loss = loss_fn(net(torch.from_numpy(_augment(x[batch], rng))), torch.from_numpy(y[batch]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
            bar.advance(job)
        history.append({"network": name, "epoch": epoch, "train_loss": round(total / (steps * BATCH_SIZE), 5)})
        bar.update(job, description=f"{name}: epoch {epoch}/{epochs} loss {history[-1]['train_loss']:.3f}")
    return net.eval(), history


def predict_beats(net: nn.Module, beats: ExtractedBeats, batch: int = 2048) -> FloatArray:
    """Class probabilities of every beat of a record."""
    out = []
    with torch.inference_mode():
        for x in beats.batches(batch):
            out.append(torch.softmax(net(torch.from_numpy(x)), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), dtype=np.float32)


# --------------------------------------------------------------------------- cross-validation


def _outcome(r: RecordBeats, probs: FloatArray) -> tuple[RecordOutcome, float]:
    classes, found = decide(r.beats, probs)
    return record_outcome(r.reference, r.beats.samples, classes, found), found.verdict.score


def _noise(sigma_mv: float) -> Perturbation:
    return lambda x, rng: (x + rng.normal(0.0, sigma_mv, x.shape)).astype(np.float32)


def _wander(amplitude_mv: float, hz: float, fs: float) -> Perturbation:
    def apply(x: FloatArray, rng: np.random.Generator) -> FloatArray:
        t = np.arange(x.shape[-1]) / fs
        return (x + amplitude_mv * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)

    return apply


def _gain(k: float) -> Perturbation:
    return lambda x, rng: (x * k).astype(np.float32)


def perturbations(fs: float) -> list[tuple[str, Perturbation]]:
    """What a new site may bring, applied to the record (mV) before the whole analysis."""
    return [
        ("gaussian noise 0.1 mV", _noise(0.1)),
        ("baseline wander 0.5 mV at 0.3 Hz", _wander(0.5, 0.3, fs)),
        ("gain x0.5", _gain(0.5)),
    ]


def perturbed_outcomes(net: nn.Module, r: RecordBeats, seed: int) -> dict[str, RecordOutcome]:
    """A held-out record analysed again, under each perturbation, with the network of its fold."""
    with HolterRecord.from_path(r.path) as record:
        signal, fs, names = record.read(0, record.n_samples), record.fs, record.lead_names
    out: dict[str, RecordOutcome] = {}
    for name, perturb in perturbations(fs):
        ecg = EcgRecord(perturb(signal, np.random.default_rng(seed)), fs, names)
        beats = extract_beats(HolterRecord.from_ecg(ecg))
        classes, found = decide(beats, predict_beats(net, beats))
        out[name] = record_outcome(r.reference, beats.samples, classes, found)
    return out


@dataclass
class _CrossValidation:
    probs: list[FloatArray]
    outcomes: list[RecordOutcome]
    scores: list[float]
    history: list[dict[str, Any]]
    fold_of: IntArray
    perturbed: list[dict[str, RecordOutcome]]


def cross_validate(
    records: list[RecordBeats],
    folds: int,
    seed: int,
    epochs: int,
    bar: Progress,
    n_per_record: int,
    perturb: bool = False,
) -> _CrossValidation:
    """Out-of-fold probabilities, record outcomes and scores of a group k-fold by record (and, with
    ``perturb``, the out-of-fold outcomes under each perturbation)."""
    fold_of = assign_folds(records, folds, seed)
    probs: list[FloatArray] = [np.zeros((0, len(CLASSES)), dtype=np.float32)] * len(records)
    perturbed: list[dict[str, RecordOutcome]] = [{} for _ in records]
    history: list[dict[str, Any]] = []
    for f in range(folds):
        train = [r for r, k in zip(records, fold_of, strict=True) if k != f]
        x, y = training_arrays(train, np.random.default_rng(seed + f), n_per_record)
        job = bar.add_task(f"fold {f + 1}/{folds}", total=epochs * max(1, len(y) // BATCH_SIZE))
        net, hist = fit_network(x, y, seed=seed + f, epochs=epochs, bar=bar, job=job, name=f"fold {f + 1}")
        history += hist
        for i in np.flatnonzero(fold_of == f):
            probs[i] = predict_beats(net, records[i].beats)
            if perturb:
                perturbed[i] = perturbed_outcomes(net, records[i], seed)
    results = [_outcome(r, p) for r, p in zip(records, probs, strict=True)]
    return _CrossValidation(probs, [o for o, _ in results], [s for _, s in results], history, fold_of, perturbed)


def perturbation_rows(cv: _CrossValidation) -> list[dict[str, Any]]:
    """Out-of-fold figures as they are and under each perturbation: beat accuracy, V and S sensitivity,
    QRS sensitivity, and the record flag's sensitivity and specificity (balanced point, the rule)."""
    names = ["none", *(cv.perturbed[0] if cv.perturbed and cv.perturbed[0] else {})]
    rows: list[dict[str, Any]] = []
    base = float("nan")
    for name in names:
        outcomes = cv.outcomes if name == "none" else [p[name] for p in cv.perturbed]
        g = gross(outcomes)
        truth = np.array([o.flag_ref for o in outcomes])
        flagged = np.array([o.flag_pred for o in outcomes])
        base = g["accuracy"] if name == "none" else base
        rows.append(
            {
                "perturbation": name,
                "operating_point": "balanced",
                "accuracy": _round(g["accuracy"]),
                "sensitivity_V": _round(g["sensitivity_V"]),
                "sensitivity_S": _round(g["sensitivity_S"]),
                "qrs_sensitivity": _round(g["qrs_sensitivity"]),
                "sensitivity": _round(float(np.mean(flagged[truth])) if truth.any() else float("nan")),
                "specificity": _round(float(np.mean(~flagged[~truth])) if (~truth).any() else float("nan")),
                "delta_accuracy": _round(g["accuracy"] - base),
            }
        )
    return rows


def _round(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


# --------------------------------------------------------------------------- the card


def _validation(doc: dict[str, Any], data: Path, digest: str, split: str) -> Evaluation:
    goals = ", ".join(f"{k} {'met' if g['met'] else 'NOT met'}" for k, g in doc["goals"].items())
    return Evaluation(
        split=split,
        dataset_path=str(data),
        dataset_digest=digest,
        n=doc["dataset"]["n"],
        metrics={k: MetricValue(**v) for k, v in doc["metrics"].items()},
        target=Target(**doc["target"]),
        confusion=doc["confusion"],
        when=datetime.now(UTC).isoformat(timespec="seconds"),
        note=f"{doc['dataset']['beats']} reference beats; gross statistics, CIs by resampling records; goals: {goals}",
    )


def _calibration(cv: _CrossValidation, records: list[RecordBeats]) -> Calibration:
    labels = np.concatenate([r.labels for r in records])
    probs = np.concatenate(cv.probs)
    keep = labels >= 0
    labels, probs = labels[keep], probs[keep]
    temperature = fit_temperature(labels, probs)
    truth = labels != 0
    before = 1.0 - probs[:, 0]
    after = 1.0 - apply_temperature(probs, temperature)[:, 0]
    return Calibration(
        temperature=round(temperature, 6),
        fitted_on=f"out-of-fold beat probabilities of {len(records)} DS1 records ({len(labels)} beats); "
        "beat classes are the most likely class, which temperature does not change",
        ece_before=round(expected_calibration_error(truth, before), 6),
        ece_after=round(expected_calibration_error(truth, after), 6),
        reliability=reliability(truth, after),
    )


def _shift(
    cv: _CrossValidation, points: dict[str, OperatingPointSpec], truth: npt.NDArray[np.bool_], n: int
) -> dict[str, Any]:
    shift: dict[str, Any] = {"prevalence": prevalence_table(points, float(truth.mean()) if len(truth) else 0.0)}
    if any(cv.perturbed):
        shift["perturbations"] = perturbation_rows(cv)
        shift["perturbations_measured_on"] = (
            f"out-of-fold: each of the {n} DS1 records perturbed, re-analysed whole by the network of its fold"
        )
    return shift


def build_card(
    *,
    doc: dict[str, Any],
    cv: _CrossValidation,
    records: list[RecordBeats],
    data: Path,
    digest: str,
    training: dict[str, Any],
    onnx: dict[str, Any],
) -> ModelCard:
    """The card of the final network with the out-of-fold figures."""
    truth = np.array([o.flag_ref for o in cv.outcomes], dtype=bool)
    scores = np.array(cv.scores, dtype=np.float64)
    split = split_text(int(cv.fold_of.max()) + 1)
    chosen_on = f"the flag rule itself; figures from {split} (n={len(records)} records)"
    points = {
        "balanced": point_spec(truth, scores, 1.0, "flag rule (score 1.0 = a rule limit met)", chosen_on),
        "safety": point_spec(truth, scores, SAFETY_THRESHOLD, "half of any rule limit", chosen_on),
    }
    return ModelCard(
        task="holter",
        name=MODEL_NAME,
        version=MODEL_VERSION,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        classes=list(CLASSES),
        normal_classes=["N"],
        flag_rule=FLAG_RULE,
        input_spec=INPUT_SPEC,
        operating_threshold=1.0,
        threshold_chosen_on="fixed by the flag rule (not tuned on data): 1.0 = a rule limit is met",
        training=training,
        onnx=onnx,
        validation=_validation(doc, data, digest, split),
        caveats=list(CAVEATS),
        operating_points=points,
        calibration=_calibration(cv, records),
        score_reference=score_reference(scores, f"{split}: record scores (n={len(records)})"),
        shift=_shift(cv, points, truth, len(records)),
        validation_scheme=(
            f"group k-fold by record ({int(cv.fold_of.max()) + 1} folds, folds balanced in S and V beats): no "
            "record (patient) in the training and the held-out part of a fold; the final model is trained on all "
            "DS1 records and has no held-out figure of its own"
        ),
    )


# --------------------------------------------------------------------------- the run


def _export(net: nn.Module, records: list[RecordBeats], out: Path) -> dict[str, Any]:
    wrapped = MeanSoftmax([net]).eval()
    sample = np.concatenate([r.beats.inputs(0, 64) for r in records[:8]])
    onnx_path = out / "model.onnx"
    export_onnx(wrapped, torch.from_numpy(sample[:2]), onnx_path)
    diff = parity(wrapped, onnx_path, sample)
    return onnx_entry(onnx_path, diff, len(sample), None)


def train_holter(
    data: Path,
    out: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    folds: int = 5,
    progress: bool = True,
    records: Sequence[str] | None = None,
    n_per_record: int = N_PER_RECORD,
    resamples: int = 1000,
    perturb: bool = True,
) -> HolterTrainResult:
    """Train the holter beat network with group k-fold by record, then on all records; export and card.

    Args:
        data: the MIT-BIH folder (``mitdb``): its DS1 records are used, paced ones never.
        out: where ``model.onnx``, ``card.json``, ``history.json``, ``oof.json`` and ``report.md`` go.
        seed: seeds folds, sampling, initialisation and batches.
        epochs: epochs per network (default :data:`DEFAULT_EPOCHS`).
        folds: folds of the cross-validation by record (at most the number of records).
        progress: show progress bars.
        records: train on these record names instead of all DS1 records present.
        n_per_record: at most this many N beats of each record are trained on.
        resamples: bootstrap resamples of the out-of-fold CIs.
        perturb: also analyse each held-out record under noise, baseline wander and gain (the card's
            perturbation table; about 8 s per record).

    Raises:
        DatasetError: no DS1 record in ``data``, a paced record named, fewer than 2 records.
    """
    start = time.monotonic()
    epochs = epochs or DEFAULT_EPOCHS
    paths = training_records(data, records)
    if len(paths) < 2:
        raise DatasetError(f"cross-validation by record needs at least 2 records; {data} gives {len(paths)}")
    folds = max(2, min(folds, len(paths)))
    out.mkdir(parents=True, exist_ok=True)
    digest = digest_files([f for p in paths for f in record_files(p)])
    beat_set = build_beat_set(paths, get_settings().cache_dir, progress)
    with _bar(progress) as bar:
        cv = cross_validate(beat_set, folds, seed, epochs, bar, n_per_record, perturb)
        x, y = training_arrays(beat_set, np.random.default_rng(seed + 1000), n_per_record)
        job = bar.add_task("final", total=epochs * max(1, len(y) // BATCH_SIZE))
        net, history = fit_network(x, y, seed=seed + 1000, epochs=epochs, bar=bar, job=job, name="final")
    dataset = {
        "path": str(data),
        "n": len(beat_set),
        "beats": sum(o.n_ref for o in cv.outcomes),
        "digest": digest,
        "excluded": list(PACED_RECORDS),
    }
    doc = outcomes_document(cv.outcomes, dataset, resamples, seed)
    doc["model"] = {"name": MODEL_NAME, "version": MODEL_VERSION, "split": split_text(folds)}
    onnx = _export(net, beat_set, out)
    seconds = time.monotonic() - start
    training = {
        "data_path": str(data),
        "data_digest": digest,
        "records": [r.name for r in beat_set],
        "folds": {r.name: int(k) + 1 for r, k in zip(beat_set, cv.fold_of, strict=True)},
        "n_records": len(beat_set),
        "n_train_beats_final": len(y),
        "train_class_counts_final": {c: int(np.sum(y == i)) for i, c in enumerate(CLASSES)},
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "n_per_record": n_per_record,
        "class_weight_power": CLASS_WEIGHT_POWER,
        "seed": seed,
        "threads": get_settings().onnx_threads,
        "train_seconds": round(seconds, 1),
        "extraction": EXTRACTION_VERSION,
        "aberrant_s_correlation": ABERRANT_CORRELATION,
        "perturbations": perturb,
        "goals": {k: v for k, v in GOALS.items()},
    }
    card = build_card(doc=doc, cv=cv, records=beat_set, data=data, digest=digest, training=training, onnx=onnx)
    card.save(out / "card.json")
    (out / "history.json").write_text(json.dumps(cv.history + history, indent=1))
    (out / "oof.json").write_text(json.dumps(doc, indent=1))
    write_holter_report(out, doc)
    return HolterTrainResult(out, out / "model.onnx", card, doc, seconds, epochs, folds)
