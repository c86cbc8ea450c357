"""The ``prescreen`` command line: thin commands over the layers below.

A user error (``PrescreenError``) prints one line and exits 2; nothing prints a traceback
unless ``PRESCREEN_DEBUG=1``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from prescreen.config import get_settings
from prescreen.errors import DatasetError, ModelError, PrescreenError

app = typer.Typer(
    help="AI pre-screening of ECGs, ultrasound and radiographs: train, evaluate, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and activate models in the model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
users_app = typer.Typer(help="People: add, list, disable, change roles, reset passwords.", no_args_is_help=True)
app.add_typer(users_app, name="users")
clients_app = typer.Typer(
    help="Machine clients (PACS, modalities, edge nodes) and their API keys.", no_args_is_help=True
)
app.add_typer(clients_app, name="clients")
audit_app = typer.Typer(help="The audit trail: verify its chain, sign a checkpoint, export it.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
backup_app = typer.Typer(
    help="Backups: full and incremental sets, sealed and signed; list and verify.", no_args_is_help=True
)
app.add_typer(backup_app, name="backup")
keys_app = typer.Typer(help="Keys of data at rest: status, rotate the master key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
reports_app = typer.Typer(help="Signed reports: verify their SM2 signatures.", no_args_is_help=True)
app.add_typer(reports_app, name="reports")
rules_app = typer.Typer(help="Routing rules: validate a rules file.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@app.callback()
def _owner_only() -> None:
    """Everything prescreen writes (database, blobs, keys, model store) is readable by its owner only."""
    os.umask(0o077)


# outside a terminal (pipes, CI logs) keep table rows whole instead of wrapping them at 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn user errors (``PrescreenError``, unreadable files, invalid options) into one red line
    and exit code 2; ``PRESCREEN_DEBUG=1`` shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PrescreenError, OSError, ValueError) as exc:  # ValueError covers pydantic's ValidationError
            if os.environ.get("PRESCREEN_DEBUG") == "1":
                raise
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _data_path(task_default: str, data: Path | None) -> Path:
    folder = data if data is not None else get_settings().data_dir / task_default
    if not folder.exists():
        raise DatasetError(f"data folder {folder} does not exist")
    return folder


@app.command()
@user_errors
def train(
    task: Annotated[str, typer.Argument(help="Task name, e.g. ecg-rhythm")],
    out: Annotated[Path, typer.Option(help="Run folder for checkpoints and predictions")],
    data: Annotated[
        Path | None, typer.Option(help="Labelled data folder (default: $PRESCREEN_DATA_DIR/<task set>)")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and augmentation: same seed, same metrics")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/validation/test split")] = 0,
    limit: Annotated[int | None, typer.Option(help="Use only N records (smoke runs)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size")] = None,
    folds: Annotated[
        int, typer.Option(help="k-fold cross-validation over the training side (one model per fold in OUT/fold-i)")
    ] = 0,
    group_by: Annotated[
        str, typer.Option(help="Split unit: 'record', or 'phash' (near-identical images share a group)")
    ] = "record",
    test_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share held out as the test part (default 0.15); 0 with --folds: every record is in the "
            "cross-validation, and the out-of-fold predictions are the only held-out figures"
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Weights kept: 'best' (epoch of best validation AUROC, early stopping) or 'last' (the whole "
            "schedule; validation then chooses only the thresholds)"
        ),
    ] = "best",
    nested: Annotated[
        bool,
        typer.Option(
            help="With --folds K: also train a model per pair of folds (OUT/pair-i-j, K(K-1)/2 more), so that "
            "the ensemble's operating points are chosen on scores of ensembles not trained on the record "
            "(use with --checkpoint last, or each pair model's epoch is chosen on the records it scores)"
        ),
    ] = False,
) -> None:
    """Train a task's network; early stopping on validation; checkpoints in OUT. With --folds K,
    train K models of a group cross-validation; `prescreen export OUT` ships their ensemble with
    operating points chosen on the out-of-fold predictions (with --nested, on the scores of
    ensembles that never saw the record). A fold already trained with the same options is kept."""
    from prescreen.models.task import get_task
    from prescreen.training.config import RunConfig
    from prescreen.training.trainer import Trainer

    t = get_task(task)
    if nested and (folds < 3 or t.analyse is not None):
        raise ModelError(
            "--nested needs --folds 3 or more (a pair of folds is held out, one must be left to train)"
            if t.analyse is None
            else f"--nested is not available for {task}, whose training cross-validates by record on its own"
        )
    folder = _data_path(t.default_data, data)
    if t.analyse is not None:
        _train_holter(folder, out, seed=seed, epochs=epochs, folds=folds or 5)
        return
    overrides = {
        k: v
        for k, v in {"epochs": epochs, "batch_size": batch_size, "test_fraction": test_fraction}.items()
        if v is not None
    }
    cfg = RunConfig(
        task=task,
        data=folder,
        out=out,
        seed=seed,
        split_seed=split_seed,
        limit=limit,
        folds=folds,
        group_by=group_by,
        checkpoint=checkpoint,
        **{**t.train_defaults, **overrides},
    )
    dataset = t.load_dataset(folder, get_settings().cache_dir, True, "train")
    if folds:
        from prescreen.training.crossval import train_folds

        results = train_folds(t, cfg, dataset, nested=nested)
        minutes = sum(r.seconds for r in results) / 60
        aurocs = ", ".join(f"{r.kept_val_auroc:.3f}" for r in results[:folds])
        console.print(
            f"trained {task}: {folds} folds, validation flag AUROC per fold (kept epoch, {checkpoint}) {aurocs}"
            + (f", and {len(results) - folds} nested pair models" if nested else "")
            + f", {minutes:.1f} min → {out}"
        )
        console.print(f"next: prescreen export {out}")
        return
    result = Trainer(t, cfg).fit(dataset)
    console.print(
        f"trained {task}: kept epoch {result.kept_epoch}/{result.epochs_run} ({checkpoint}), validation flag AUROC "
        f"{result.kept_val_auroc:.3f}, {result.seconds / 60:.1f} min → {result.run_dir}"
    )
    console.print(f"next: prescreen export {result.run_dir}")


def _train_holter(folder: Path, out: Path, *, seed: int, epochs: int | None, folds: int) -> None:
    """``prescreen train holter``: the beat network, cross-validated by record, exported with its card."""
    from prescreen.training.holter import train_holter

    result = train_holter(folder, out, seed=seed, epochs=epochs, folds=folds, progress=True)
    m = result.oof["metrics"]

    def fig(key: str) -> str:
        v = m.get(key) or {}
        return "n/a" if v.get("value") is None else f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"

    console.print(
        f"trained holter: {result.folds}-fold cross-validation by record, out of fold: beat accuracy "
        f"{fig('accuracy')}, V sensitivity {fig('sensitivity_V')}, S sensitivity {fig('sensitivity_S')}; "
        f"{result.seconds / 60:.1f} min → {out}"
    )
    console.print(f"next: prescreen evaluate holter --model {out} --data <records it was not trained on>")


@app.command()
@user_errors
def evaluate(
    task: Annotated[str, typer.Argument(help="Task name, e.g. ecg-rhythm")],
    data: Annotated[
        Path | None, typer.Option(help="Labelled data folder (default: $PRESCREEN_DATA_DIR/<task set>)")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="NAME:VERSION, an exported folder or a run folder (default: active)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the evaluation JSON here")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write a Markdown report with ROC and confusion PNGs here")
    ] = None,
    resamples: Annotated[
        int | None, typer.Option(min=1000, help="Bootstrap resamples (default from settings, >= 1000)")
    ] = None,
) -> None:
    """Measure a model on a labelled folder: metrics with 95 % bootstrap CIs and the target verdict."""
    import json

    from prescreen.evaluation.evaluate import at_operating_points, evaluate_probs, flag_truth
    from prescreen.evaluation.report import evaluation_json, write_report
    from prescreen.models.model_store import ModelStore
    from prescreen.models.task import get_task
    from prescreen.training.resolve import resolve_model

    t = get_task(task)
    folder = _data_path(t.default_data, data)
    if t.analyse is not None:
        _evaluate_holter(t, folder, model, json_out, report, resamples)
        return
    dataset = t.load_dataset(folder, get_settings().cache_dir, True, "eval")
    predictor = resolve_model(t, model, ModelStore())
    probs = predictor.predict(dataset.signals)
    result = evaluate_probs(
        t,
        dataset.labels,
        probs,
        predictor.threshold,
        split=str(folder.resolve()),
        dataset_path=str(folder.resolve()),
        dataset_digest=dataset.digest,
        resamples=resamples,
    )
    if predictor.training_digest == dataset.digest:
        result.note = "this data set is the model's training data: the figures are not an accuracy"
        err.print(f"[yellow]warning:[/yellow] {result.note}", highlight=False)
    truth, score = flag_truth(t, dataset.labels), t.flag_scores(probs)
    points = at_operating_points(
        truth, score, predictor.thresholds, resamples=resamples or get_settings().bootstrap_resamples
    )
    ident = {"name": predictor.name, "version": predictor.version, "sha256": predictor.sha256}
    doc = evaluation_json(
        t.name,
        ident,
        result,
        list(t.classes),
        predictor.threshold,
        len(dataset.skipped),
        points=points,
        flag_prevalence=float(truth.mean()),
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=2))
    if report is not None:
        write_report(report, doc, truth, score)
    if predictor.store_tag is not None:
        ModelStore(import_shipped=False).record_evaluation(predictor.store_tag, result)
    _print_evaluation(doc)


def _evaluate_holter(
    t: Any, folder: Path, model: str | None, json_out: Path | None, report: Path | None, resamples: int | None
) -> None:
    """``prescreen evaluate holter``: AAMI EC57 beat, QRS and event figures, CIs resampled by record."""
    import json

    from prescreen.evaluation.holter import evaluate_holter, write_holter_report
    from prescreen.models.model_store import ModelStore
    from prescreen.training.resolve import resolve_onnx

    onnx, _tag = resolve_onnx(t, model, ModelStore())
    doc = evaluate_holter(
        folder, onnx.predict_windows, resamples=resamples or get_settings().bootstrap_resamples, progress=True
    )
    doc["model"] = {"name": onnx.card.name, "version": onnx.card.version, "sha256": onnx.card.onnx.get("sha256")}
    if doc["dataset"].get("digest") and doc["dataset"]["digest"] == onnx.card.training.get("data_digest"):
        doc["note"] = "these records are the model's training data: the figures are not an accuracy"
        err.print(f"[yellow]warning:[/yellow] {doc['note']}", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=2))
    if report is not None:
        write_holter_report(report, doc)
    _print_evaluation(doc)


def _print_evaluation(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from prescreen.evaluation.report import (
        METRIC_LABELS,
        flag_share,
        fmt,
        operating_point_header,
        operating_point_rows,
    )

    table = Table(title=f"{doc['task']} — {doc['model']['name']}:{doc['model']['version']} on n={doc['dataset']['n']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95 % CI", justify="right")
    for key, v in doc["metrics"].items():
        table.add_row(METRIC_LABELS.get(key, key), fmt(v["value"]), f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]")
    console.print(table)
    tg = doc["target"]
    console.print(f"target {tg['metric']} >= {tg['threshold']}: {'met' if tg['met'] else 'NOT met'}")
    if doc.get("operating_points"):
        share = f"; {flag_share(doc)}" if flag_share(doc) else ""
        points = Table(title=f"at the model's operating points (value [95 % CI]{share})")
        for column in operating_point_header(doc):
            points.add_column(column, justify="left" if column == "Operating point" else "right")
        for cells in operating_point_rows(doc):
            points.add_row(*cells)
        console.print(points)


@app.command()
@user_errors
def export(
    runs: Annotated[list[Path], typer.Argument(help="Training run folder(s); several of one split make an ensemble")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for model.onnx + card.json (default: the run folder)")
    ] = None,
    activate: Annotated[
        bool, typer.Option(help="Then promote it through the promotion gate (as `prescreen models promote`)")
    ] = False,
) -> None:
    """Export a run (or an ensemble of runs) to ONNX, parity-checked, with its model card; add it to the store."""
    from prescreen.models.model_store import ModelStore
    from prescreen.training.crossval import export_cross_validation, is_cross_validation
    from prescreen.training.export import export_run

    if len(runs) == 1 and is_cross_validation(runs[0]):
        onnx_path, card = export_cross_validation(runs[0], out, progress=True)
    else:
        onnx_path, card = export_run(runs, out, progress=True)
    store = ModelStore()
    stored = store.add(onnx_path, card)
    head = card.test or card.validation
    acc = head.metrics["accuracy"] if head else None
    parity_diff = card.onnx["parity_max_abs_diff"]
    console.print(f"exported {onnx_path} (parity max |Δ| {parity_diff:.1e}), card {onnx_path.parent / 'card.json'}")
    if acc is not None and head is not None:
        console.print(f"{head.split}: flag accuracy {acc.value:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}], n={head.n}")
    console.print(
        f"stored as {stored.tag}"
        + ("" if activate else f"; promote with: prescreen models promote {card.task} {stored.tag}")
    )
    if activate:  # no way around the gate: the same measurement and record as `models promote`
        models_promote(card.task, stored.tag, data=None, resamples=1000)


@models_app.command("list")
@user_errors
def models_list(task: Annotated[str | None, typer.Option(help="Only this task")] = None) -> None:
    """Models in the store: task, name:version, active?, accuracy [95 % CI], target met?"""
    from rich.table import Table

    from prescreen.models.model_store import ModelStore

    table = Table(title="models")
    for col in ("task", "name:version", "active", "accuracy [95% CI]", "target met", "measured on"):
        table.add_column(col)
    for m in ModelStore().list(task):
        head = m.card.headline
        acc = head.metrics.get("accuracy") if head else None
        figure = (
            f"{acc.value:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}]"
            if acc and acc.value is not None and acc.ci_low is not None and acc.ci_high is not None
            else "-"
        )
        met = ("yes" if head.target.met else "no") if head else "-"
        where = f"{head.split} (n={head.n})" if head else "-"
        table.add_row(m.task, m.tag, "yes" if m.active else "", figure, met, where)
    console.print(table)


@models_app.command("activate")
@user_errors
def models_activate(
    task: Annotated[str, typer.Argument(help="Task name")],
    tag: Annotated[str, typer.Argument(help="NAME:VERSION of a stored model")],
    force: Annotated[
        bool, typer.Option(help="Activate a model that was never active, bypassing the gate (recorded as forced)")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the record)")] = None,
) -> None:
    """Roll back: make a model that was active before (or the shipped one) the active one of its task
    again (the service loads it at start). A new model goes through 'models promote'. Recorded."""
    from prescreen.errors import ModelError, PromotionRefusedError
    from prescreen.models.model_store import ModelStore
    from prescreen.models.task import get_task
    from prescreen.pipeline.runtime import open_store
    from prescreen.store.model_events import previously_active, record_event
    from prescreen.training.promote import activation_refusal, active_or_none, is_shipped

    get_task(task)
    store = ModelStore()
    model = store.get(tag)
    if model.task != task:
        raise ModelError(f"model {model.tag} is a {model.task} model, not {task}")
    sessions = open_store(get_settings()).sessions
    current = active_or_none(store, task)
    current_tag = current.tag if current is not None else None
    if model.tag == current_tag:
        console.print(f"{model.tag} is already the active {task} model; nothing changed")
        return
    known, shipped = previously_active(sessions, task), is_shipped(model)
    refusal = activation_refusal(model.tag, current_tag, known, shipped, force=False)
    if refusal is not None and not force:
        raise PromotionRefusedError(refusal)
    kind = "forced" if refusal is not None else ("shipped" if shipped and model.tag not in known else "rollback")
    detail = {"kind": kind, "forced": refusal is not None, "reason": reason}
    record_event(
        sessions, task=task, action="activate", tag=model.tag, previous_tag=current_tag, actor=_actor(), detail=detail
    )
    store.activate(task, model.tag)
    console.print(f"{model.tag} is now the active {task} model" + (f" (was {current_tag})" if current_tag else ""))


def _actor() -> str:
    """Who acts, for the record: ``PRESCREEN_ACTOR``, else the OS login."""
    import getpass

    actor = os.environ.get("PRESCREEN_ACTOR", "").strip()
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return f"uid {os.getuid()}"


@models_app.command("promote")
@user_errors
def models_promote(
    task: Annotated[str, typer.Argument(help="Task name")],
    tag: Annotated[str, typer.Argument(help="NAME:VERSION of the candidate in the model store")],
    data: Annotated[
        Path | None,
        typer.Option(help="Labelled records both models are measured on (default: $PRESCREEN_DATA_DIR/<task set>)"),
    ] = None,
    resamples: Annotated[int, typer.Option(min=1000, help="Paired bootstrap resamples (>= 1000)")] = 1000,
) -> None:
    """Make a candidate the active model only if it is non-inferior to the active one on the same
    records (paired bootstrap, lower 95 % bound of Δaccuracy >= -0.01 and of Δsensitivity >= -0.02)
    and its card is complete; otherwise refuse (exit 2). Either way the figures are recorded."""
    from prescreen.errors import PromotionRefusedError
    from prescreen.models.model_store import ModelStore
    from prescreen.models.task import get_task
    from prescreen.pipeline.runtime import open_store
    from prescreen.store.model_events import record_event
    from prescreen.training.promote import Assessment, assess_promotion, promote

    t = get_task(task)
    folder = _data_path(t.default_data, data)
    settings = get_settings()
    sessions = open_store(settings).sessions  # a database problem fails here, before the long measurement
    store = ModelStore()
    assessment = assess_promotion(t, tag, store, folder, cache_dir=settings.cache_dir, resamples=resamples)
    for note in assessment.notes:
        err.print(f"[yellow]warning:[/yellow] {note}", highlight=False, soft_wrap=True)
    _print_gate(assessment)
    actor = _actor()

    def record(action: str, done: Assessment) -> None:
        previous = done.active.tag if done.active is not None else None
        record_event(
            sessions,
            task=task,
            action=action,
            tag=done.candidate.tag,
            previous_tag=previous,
            actor=actor,
            detail=done.detail(),
        )

    if not promote(assessment, store, record):
        stays = f"; {assessment.active.tag} stays active" if assessment.active is not None else ""
        raise PromotionRefusedError(
            f"{assessment.candidate.tag} not promoted: {'; '.join(assessment.verdict.reasons)}{stays}"
        )
    was = f" (was {assessment.active.tag})" if assessment.active is not None else ""
    console.print(f"promoted: {assessment.candidate.tag} is now the active {task} model{was}")


def _print_gate(assessment: Any) -> None:
    """The gate's figures: both models with 95 % CIs, the paired differences against the margins."""
    from rich.table import Table

    from prescreen.evaluation.compare import COMPARED, MARGINS

    def fig(x: float) -> str:
        return "n/a" if x != x else f"{x:.3f}"  # NaN: undefined (e.g. no flagged record)

    def ci(v: Any, signed: bool = False) -> str:
        if v.value != v.value:
            return "n/a"
        f = (lambda x: f"{x:+.3f}") if signed else fig
        return f"{f(v.value)} [{f(v.low)}, {f(v.high)}]"

    a, c = assessment, assessment.comparison
    against = f"active {a.active.tag} (threshold {a.thresholds['active']:.4f})" if a.active else "no active model"
    left_out = f", {a.skipped} unreadable left out" if a.skipped else ""
    console.print(
        f"{a.task}: candidate {a.candidate.tag} (threshold {a.thresholds['candidate']:.4f}) vs {against} "
        f"on {a.data_path} (n={a.n}{left_out})"
    )
    if c is not None:
        table = Table(title=f"paired bootstrap, {c.resamples} resamples, {c.positives} of {c.n} records to be flagged")
        for col in ("metric", "candidate [95% CI]", "active [95% CI]", "Δ candidate − active [95% CI]", "margin", "ok"):
            table.add_column(col, justify="left" if col in ("metric", "ok") else "right")
        for metric in COMPARED:
            margin = MARGINS.get(metric)
            low = c.delta[metric].low
            ok = "-" if margin is None else ("yes" if low == low and low >= margin else "NO")
            bound = "-" if margin is None else f"lower bound >= {margin:+.2f}"
            table.add_row(
                metric, ci(c.candidate[metric]), ci(c.active[metric]), ci(c.delta[metric], signed=True), bound, ok
            )
        console.print(table)
    missing = a.candidate.card.missing_for_release()
    console.print("card: complete" if not missing else f"card: incomplete, lacks {', '.join(missing)}")
    safety = a.verdict.figures.get("safety")
    if safety is not None:
        card_sens = "n/a" if safety["card"] is None else f"{safety['card']:.3f}"
        measured = "n/a" if safety["measured"] is None else f"{safety['measured']:.3f}"
        console.print(
            f"safety point (threshold {a.thresholds['candidate safety']:.4f}): sensitivity {card_sens} on its "
            f"validation, {measured} on these records ({safety['positives']} to be flagged); "
            f"floor {safety['floor']:.2f}"
        )
    console.print(
        "verdict: PASS, non-inferior, complete and safe"
        if a.passed
        else f"verdict: REFUSED ({len(a.verdict.reasons)} reason{'s' if len(a.verdict.reasons) > 1 else ''})"
    )


@models_app.command("history")
@user_errors
def models_history(task: Annotated[str | None, typer.Argument(help="Only this task")] = None) -> None:
    """Every promotion, refusal, activation and shadow change: when, who, which model, the figures."""
    from rich.table import Table

    from prescreen.pipeline.runtime import open_store
    from prescreen.store.model_events import list_events

    table = Table(title="model events (UTC)")
    for col in ("when", "task", "action", "model", "previous", "actor", "figures"):
        table.add_column(col)
    for e in list_events(open_store(get_settings()).sessions, task):
        when = e.at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(when, e.task, e.action, e.tag, e.previous_tag or "-", e.actor, _event_summary(e.detail))
    console.print(table)


def _event_summary(detail: dict[str, Any] | None) -> str:
    """One line of an event's figures: the gate's lower bounds, what the card lacked, a rollback's kind."""
    if not detail:
        return "-"
    parts: list[str] = []
    comparison = detail.get("comparison")
    if isinstance(comparison, dict):
        for metric, d in comparison.get("delta", {}).items():
            if metric in detail.get("margins", {}) and None not in (d.get("value"), d.get("low"), d.get("high")):
                parts.append(f"Δ{metric} {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        parts.append(f"n={comparison.get('n')}")
    if detail.get("card_missing"):
        parts.append(f"card lacks {len(detail['card_missing'])}")
    if "kind" in detail:
        parts.append(str(detail["kind"]) + (f": {detail['reason']}" if detail.get("reason") else ""))
    return "; ".join(parts) or "-"


@models_app.command("shadow")
@user_errors
def models_shadow(
    task: Annotated[str, typer.Argument(help="Task name")],
    tag: Annotated[str | None, typer.Argument(help="NAME:VERSION of a stored model of the task")] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop shadowing the task")] = False,
) -> None:
    """Screen every live study of TASK with a candidate model beside the active one; its findings are
    stored, never routed (compare at GET /v1/models/TASK/shadow). --off stops it. A running service
    picks the change up at its next job. Each change is recorded (PRESCREEN_ACTOR, else the login)."""
    from prescreen.errors import InvalidRequestError
    from prescreen.models.model_store import ModelStore
    from prescreen.models.task import get_task
    from prescreen.pipeline.runtime import open_store
    from prescreen.store.model_events import record_event

    if off == (tag is not None):
        raise InvalidRequestError("give either NAME:VERSION or --off")
    get_task(task)
    actor = _actor()
    store = ModelStore()
    previous = store.shadow_tag(task)
    if tag is None:
        if store.clear_shadow(task) is None:
            console.print(f"{task} has no shadow model; nothing changed")
            return
        assert previous is not None
        record_event(
            open_store(get_settings()).sessions,
            task=task,
            action="shadow_off",
            tag=previous,
            previous_tag=previous,
            actor=actor,
        )
        console.print(f"shadow mode of {task} is off: {previous} no longer screens live studies")
        return
    model = store.set_shadow(task, tag)
    record_event(
        open_store(get_settings()).sessions,
        task=task,
        action="shadow_on",
        tag=model.tag,
        previous_tag=previous,
        actor=actor,
    )
    console.print(
        f"{model.tag} now screens every live {task} study in shadow beside {store.active(task).tag}; "
        "its findings are stored, not routed"
    )


@models_app.command("characterize")
@user_errors
def models_characterize(
    folder: Annotated[Path, typer.Argument(help="An exported model folder (model.onnx + card.json)")],
    data: Annotated[Path | None, typer.Option(help="The model's training data folder, if it moved")] = None,
) -> None:
    """Calibrate an exported model and choose its two operating points on its own validation split
    (rebuilt from the card), measure the prevalence and perturbation tables, and complete its card."""
    from prescreen.training.characterize import characterize_folder

    card = characterize_folder(folder, data, progress=True)
    cal = card.calibration
    for name, spec in card.operating_points.items():
        console.print(
            f"{name}: threshold {spec.threshold:.4f}, sensitivity {spec.sensitivity} "
            f"(Wilson low {spec.sensitivity_wilson_low}, {spec.positives} positives), specificity {spec.specificity}"
        )
    if cal is not None:
        console.print(
            f"temperature {cal.temperature} (ECE {cal.ece_before} → {cal.ece_after}); card {folder / 'card.json'}"
        )


@app.command()
@user_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default from settings: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default from settings: 3000)")] = None,
) -> None:
    """Start the service: the REST API under /v1 (BentoML), the screening workers and the DICOM
    listener (AE PRESCREEN on port 11112 unless PRESCREEN_DICOM_AE_TITLE / PRESCREEN_DICOM_PORT say
    otherwise; port 0 turns it off)."""
    import gc
    import signal
    import subprocess

    from prescreen.models.model_store import ModelStore
    from prescreen.pipeline.engine import ScreeningEngine
    from prescreen.pipeline.runtime import load_routing_rules
    from prescreen.serving.process import die_with_parent, release_memory, restrict_to_owner

    settings = get_settings()
    restrict_to_owner(settings.home)  # a home made before umask 077 (an older version) is closed too
    ScreeningEngine(ModelStore())  # fail here, with one line, if no model can be loaded
    load_routing_rules(settings)  # and here, naming the rule, if the routing rules are invalid
    gc.collect()  # the check's models are not needed while this process only waits on the server
    release_memory()
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "prescreen.serving.service:Prescreen",
        "--host",
        host or settings.host,
        "--port",
        str(port or settings.port),
    ]
    env = {
        **os.environ,
        "PRESCREEN_HOME": str(settings.home),
        "PRESCREEN_DATA_DIR": str(settings.data_dir),
        "PRESCREEN_HOST": host or settings.host,
    }
    # the server dies with this process (kill -9 included); SIGTERM here stops it gracefully
    server = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        raise typer.Exit(server.wait())
    except KeyboardInterrupt:
        server.terminate()
        raise typer.Exit(server.wait()) from None


@app.command()
@user_errors
def edge(
    forward_to: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL|AE@HOST:PORT",
            help="Where complete studies go: a central service URL (STOW-RS), e.g. http://central:3000, or "
            "AE@host:port (C-STORE). Repeat for standby uplinks, in order of preference: each is health-checked "
            "and a study goes to the first that answers (default: PRESCREEN_FORWARD_TO, comma-separated)",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address the DICOM listener binds (default from settings)")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM listener port (default from settings: 11112)")] = None,
) -> None:
    """Run an edge node: receive studies over DICOM, keep them durably, forward each complete study
    to the central service with retry and backoff (until stopped with Ctrl-C / SIGTERM); with several
    uplinks, to the first that answers, failing over to the next within seconds and back when it returns."""
    import signal
    import threading

    from prescreen.pipeline.runtime import start_runtime
    from prescreen.pipeline.uplinks import check_uplinks

    settings = get_settings()
    settings.forward_to = check_uplinks(forward_to or settings.forward_to)  # a bad one fails here, with one line
    if host:
        settings.host = host
    if dicom_port is not None:
        settings.dicom_port = dicom_port
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runtime = start_runtime(settings, None)
    primary, *standby = settings.forward_to
    console.print(
        f"edge node: DICOM {settings.dicom_ae_title} on {settings.host}:{settings.dicom_port}, "
        f"forwarding complete studies to {primary}" + (f" (standby: {', '.join(standby)})" if standby else ""),
        highlight=False,
    )
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()


def _store() -> Any:
    from prescreen.pipeline.runtime import open_store

    return open_store(get_settings())


def _operator() -> Any:
    """The audit trail's actor for a command run on the server's console."""
    from prescreen.security.audit import Actor, ActorKind

    return Actor(ActorKind.OPERATOR, _actor())


def _audited(sessions: Any, event: Any, object_id: str, detail: dict[str, Any], change: Callable[[Any], Any]) -> Any:
    """Run ``change(session)`` and record ``event`` in the same transaction."""
    from prescreen.security.audit import AuditEntry
    from prescreen.store.audit import record

    with sessions.begin() as session:
        result = change(session)
        record(session, AuditEntry(event, _operator(), object_id=object_id, detail=detail))
        return result


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@users_app.command("add")
@user_errors
def users_add(
    name: Annotated[str, typer.Option(help="Full name, as shown on reports (e.g. 张三丰)")],
    login: Annotated[str, typer.Option(help="Login (lowercase)")],
    role: Annotated[
        list[str] | None,
        typer.Option(help="reader (default), admin, security_admin, auditor or ml_engineer (repeatable)"),
    ] = None,
    grade: Annotated[
        str | None, typer.Option(help="A reader's grade: resident, attending, associate_chief, chief")
    ] = None,
    specialty: Annotated[
        list[str] | None, typer.Option(help="A worklist the reader reads (repeatable), e.g. cardiology")
    ] = None,
    institution: Annotated[
        list[str] | None,
        typer.Option(help="An institution whose studies the reader sees (repeatable); none: every institution"),
    ] = None,
    admin: Annotated[bool, typer.Option(help="Also the admin role (older flag; same as --role admin)")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Add a user; the password is asked for (or read from stdin) and stored only as an Argon2id hash.
    admin, security_admin and auditor must be different people (exit 2 for such a mix)."""
    from prescreen.security.audit import AuditEntry, AuditEvent
    from prescreen.security.roles import parse_roles
    from prescreen.store.audit import record_now
    from prescreen.store.users import add_user

    parse_roles([*(role or ["reader"]), *(["admin"] if admin else [])])  # a forbidden mix fails before the prompt
    password = _read_password(password_stdin)
    specialties = [part.strip() for value in specialty or [] for part in value.split(",") if part.strip()]
    store = _store()
    user = add_user(
        store.sessions,
        login=login,
        name=name,
        password=password,
        grade=grade,
        specialties=specialties,
        institutions=institution or [],
        is_admin=admin,
        roles=role or ["reader"],
        min_password=get_settings().password_min_length,
    )
    detail = {"change": "add", "roles": [r.value for r in user.roles], "institutions": list(user.institutions)}
    record_now(store.sessions, AuditEntry(AuditEvent.USER_CHANGE, _operator(), object_id=user.login, detail=detail))
    what = ", ".join(r.value for r in user.roles)
    console.print(
        f"added {user.login} ({what}"
        + (f"; {user.grade}; {', '.join(user.specialties)}" if user.specialties else "")
        + ")"
    )


@users_app.command("list")
@user_errors
def users_list() -> None:
    """List users: login, name, roles, grade, specialties, institutions, second factor, active."""
    from rich.table import Table

    from prescreen.store.users import list_users, user_active

    store = _store()
    active = user_active(store.sessions)
    table = Table("login", "name", "roles", "grade", "specialties", "institutions", "2FA", "active")
    for user in list_users(store.sessions):
        table.add_row(
            user.login,
            user.name,
            ", ".join(user.roles),
            user.grade,
            ", ".join(user.specialties),
            ", ".join(user.institutions) or "all",
            "yes" if user.totp_enabled else "no",
            "yes" if active.get(user.login) else "no",
        )
    console.print(table)


@users_app.command("disable")
@user_errors
def users_disable(
    login: Annotated[str, typer.Argument(help="The user's login")],
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again instead")] = False,
) -> None:
    """Disable a user (every session ends at once), or enable them again."""
    from prescreen.security.audit import AuditEvent
    from prescreen.store.users import set_active

    detail = {"change": "enable" if enable else "disable"}
    _audited(_store().sessions, AuditEvent.USER_CHANGE, login, detail, lambda s: set_active(s, login, enable))
    console.print(f"{login} is {'enabled' if enable else 'disabled'}")


@users_app.command("set-roles")
@user_errors
def users_set_roles(
    login: Annotated[str, typer.Argument(help="The user's login")],
    role: Annotated[list[str], typer.Option(help="The new roles (repeatable); replaces the old ones")],
) -> None:
    """Replace a user's roles (admin, security_admin and auditor stay with different people)."""
    from prescreen.security.audit import AuditEvent
    from prescreen.store.users import set_roles

    user = _audited(
        _store().sessions,
        AuditEvent.USER_CHANGE,
        login,
        {"change": "roles", "roles": role},
        lambda s: set_roles(s, login, role),
    )
    console.print(f"{user.login}: {', '.join(user.roles)}")


@users_app.command("reset-password")
@user_errors
def users_reset_password(
    login: Annotated[str, typer.Argument(help="The user's login")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Set a new password; the user's sessions end and their sign-in lockout is lifted."""
    from prescreen.security.audit import AuditEvent
    from prescreen.store.users import reset_password

    password = _read_password(password_stdin)
    minimum = get_settings().password_min_length
    _audited(
        _store().sessions,
        AuditEvent.USER_CHANGE,
        login,
        {"change": "password"},
        lambda s: reset_password(s, login, password, minimum),
    )
    console.print(f"new password set for {login}")


@users_app.command("unlock")
@user_errors
def users_unlock(login: Annotated[str, typer.Argument(help="The user's login")]) -> None:
    """Lift a sign-in lockout (5 failures in 5 minutes) before it runs out."""
    from prescreen.security.audit import AuditEvent
    from prescreen.store.users import unlock

    _audited(_store().sessions, AuditEvent.USER_CHANGE, login, {"change": "unlock"}, lambda s: unlock(s, login))
    console.print(f"{login} may sign in again")


@users_app.command("reset-mfa")
@user_errors
def users_reset_mfa(login: Annotated[str, typer.Argument(help="The user's login")]) -> None:
    """Remove a user's second factor (a lost phone); they enrol again at their next sign-in."""
    from prescreen.security.audit import AuditEvent
    from prescreen.store.users import reset_totp

    _audited(_store().sessions, AuditEvent.USER_CHANGE, login, {"change": "reset-mfa"}, lambda s: reset_totp(s, login))
    console.print(f"{login} enrols a second factor again at the next sign-in")


@clients_app.command("add")
@user_errors
def clients_add(
    name: Annotated[str, typer.Option(help="The client's name, e.g. pacs-clinic7")],
    institution: Annotated[str, typer.Option(help="The institution it sends for; its studies are stamped with it")],
    ae: Annotated[list[str] | None, typer.Option(help="An AE title it sends DICOM from (repeatable)")] = None,
    ip: Annotated[list[str] | None, typer.Option(help="A network it may call from, as CIDR (repeatable)")] = None,
) -> None:
    """Register a machine client (PACS, modality, edge node); prints its API key once, alone on the last line."""
    from prescreen.security.audit import AuditEntry, AuditEvent
    from prescreen.store.audit import record_now
    from prescreen.store.clients import add_client

    store = _store()
    info, key = add_client(store.sessions, name=name, institution=institution, ae_titles=ae or [], networks=ip or [])
    detail = {
        "change": "add",
        "institution": info.institution,
        "ae_titles": list(info.ae_titles),
        "networks": list(info.networks),
    }
    record_now(store.sessions, AuditEntry(AuditEvent.CLIENT_CHANGE, _operator(), object_id=info.name, detail=detail))
    console.print(f"added client {info.name} of {info.institution}; its API key (shown once, keep it secret):")
    print(key)


@clients_app.command("list")
@user_errors
def clients_list() -> None:
    """List clients: name, institution, AE titles, networks, active."""
    from rich.table import Table

    from prescreen.store.clients import list_clients

    table = Table("name", "institution", "AE titles", "networks", "active")
    for c in list_clients(_store().sessions):
        table.add_row(
            c.name, c.institution, ", ".join(c.ae_titles), ", ".join(c.networks) or "any", "yes" if c.active else "no"
        )
    console.print(table)


@clients_app.command("revoke")
@user_errors
def clients_revoke(name: Annotated[str, typer.Argument(help="The client's name")]) -> None:
    """Revoke a client's key: it is refused from now on."""
    from prescreen.security.audit import AuditEvent
    from prescreen.store.clients import revoke_client

    _audited(_store().sessions, AuditEvent.CLIENT_CHANGE, name, {"change": "revoke"}, lambda s: revoke_client(s, name))
    console.print(f"client {name} revoked")


@audit_app.command("verify")
@user_errors
def audit_verify(
    from_checkpoint: Annotated[
        Path | None,
        typer.Option(help="A checkpoint saved elsewhere (JSON from 'audit checkpoint'): the trail must still hold it"),
    ] = None,
) -> None:
    """Check the whole audit chain and its signed checkpoints; names the first broken record (exit 1)."""
    import json

    from prescreen.security.audit import Checkpoint
    from prescreen.security.keys import audit_public_key
    from prescreen.store.audit import verify

    extra = []
    if from_checkpoint is not None:
        doc = json.loads(from_checkpoint.read_text())
        extra.append(
            Checkpoint(int(doc["seq"]), str(doc["hash"]), str(doc["at"]), str(doc["key_id"]), str(doc["signature"]))
        )
    settings = get_settings()
    verdict = verify(_store().sessions, audit_public_key(settings), extra)
    if not verdict.ok:
        err.print(f"[red]audit trail broken at record {verdict.broken_seq}:[/red] {verdict.reason}", highlight=False)
        raise typer.Exit(1)
    console.print(
        f"ok: {verdict.records} records chained, {verdict.checkpoints} signed checkpoints verified (SM3, SM2)"
    )


@audit_app.command("checkpoint")
@user_errors
def audit_checkpoint(
    out: Annotated[
        Path | None, typer.Option(help="Also write the checkpoint here (keep a copy off this machine)")
    ] = None,
) -> None:
    """Sign the chain's head now (the service does it every PRESCREEN_AUDIT_CHECKPOINT_SECONDS)."""
    import json

    from prescreen.security.keys import audit_signer
    from prescreen.store.audit import checkpoints, sign_checkpoint

    store = _store()
    made = sign_checkpoint(store.sessions, audit_signer(get_settings()))
    if made is None:
        with store.sessions() as session:
            known = checkpoints(session)
        if not known:
            raise typer.BadParameter("the audit trail is empty: nothing to sign")
        made = known[-1]
    if out is not None:
        out.write_text(json.dumps(made.__dict__, indent=2) + "\n")
    console.print(f"checkpoint at record {made.seq}: {made.hash[:16]}… signed by key {made.key_id}")


@audit_app.command("export")
@user_errors
def audit_export(
    out: Annotated[Path, typer.Option(help="Where to write RFC 5424 syslog lines (one record a line)")],
    since: Annotated[str | None, typer.Option(help="Only records from this time on (ISO 8601)")] = None,
) -> None:
    """Write the trail as RFC 5424 syslog lines carrying DICOM audit messages (XML); the export is audited."""
    from datetime import datetime

    from prescreen.security.audit import AuditEntry, AuditEvent, timestamp
    from prescreen.security.syslog import syslog_line
    from prescreen.store.audit import iter_records, record_now

    store = _store()
    floor = timestamp(datetime.fromisoformat(since)) if since else None
    count = 0
    with store.sessions() as session, out.open("w", encoding="utf-8") as handle:
        for rec in iter_records(session):
            if floor is None or rec.at >= floor:
                handle.write(syslog_line(rec) + "\n")
                count += 1
    detail = {"records": count, "since": since}
    record_now(store.sessions, AuditEntry(AuditEvent.AUDIT_READ, _operator(), object_id="export", detail=detail))
    console.print(f"wrote {count} records to {out}")


@rules_app.command("check")
@user_errors
def rules_check(path: Annotated[Path, typer.Argument(help="A routing-rules YAML file")]) -> None:
    """Validate a routing-rules file; an error names the rule and its line (exit 2)."""
    from prescreen.triage.rules import load_rules

    rules = load_rules(path)
    console.print(f"ok: {len(rules.rules)} rules; worklists: {', '.join(rules.worklists())}")


def _backup(kind: str, to: Path) -> None:
    from prescreen.security.audit import AuditEntry, AuditEvent
    from prescreen.store.audit import record_now
    from prescreen.store.backup import take_backup

    settings = get_settings()
    store = _store()
    made = take_backup(settings, store.sessions, to, kind)
    blobs = sum(1 for name in made.files if name.startswith("blobs/"))
    detail = {"kind": kind, "set": made.name, "blobs": blobs, "studies": made.detail["studies"]}
    record_now(store.sessions, AuditEntry(AuditEvent.EXPORT, _operator(), object_id=made.name, detail=detail))
    console.print(
        f"{made.name}: {made.detail['studies']} studies, {blobs} new blobs, audit record {made.detail['audit_seq']}"
    )


@backup_app.command("full")
@user_errors
def backup_full(to: Annotated[Path, typer.Option(help="The backup folder")]) -> None:
    """A full backup set: the database, every blob, the wrapped data keys; sealed, SM3 manifest, SM2-signed."""
    _backup("full", to)


@backup_app.command("incremental")
@user_errors
def backup_incremental(to: Annotated[Path, typer.Option(help="The backup folder (with a full set in it)")]) -> None:
    """An incremental set: the database and the blobs new since the last set."""
    _backup("incremental", to)


@backup_app.command("list")
@user_errors
def backup_list(from_: Annotated[Path, typer.Option("--from", help="The backup folder")]) -> None:
    """The sets of a backup folder, oldest first."""
    from rich.table import Table

    from prescreen.store.backup import list_sets

    table = Table("set", "kind", "created", "parent", "studies", "files")
    for item in list_sets(from_):
        table.add_row(
            item.name, item.kind, item.created, item.parent or "", str(item.detail.get("studies")), str(len(item.files))
        )
    console.print(table)


@backup_app.command("verify")
@user_errors
def backup_verify(from_: Annotated[Path, typer.Option("--from", help="The backup folder")]) -> None:
    """Re-hash every file (SM3) against its manifest and check the manifests' SM2 signatures (exit 1 on a problem)."""
    from prescreen.store.backup import verify_backups

    checked, problems = verify_backups(from_)
    for problem in problems:
        err.print(f"[red]{problem.set_name}:[/red] {problem.what}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"ok: {checked} files match their SM3 hashes; manifests signed (SM2)")


@app.command()
@user_errors
def restore(
    from_: Annotated[
        Path | None, typer.Option("--from", help="The backup folder (none: from the replica alone)")
    ] = None,
    at: Annotated[str | None, typer.Option(help="The state at this time (ISO 8601); default: the newest")] = None,
    replica: Annotated[
        Path | None,
        typer.Option(help="The continuous-capture folder (default PRESCREEN_REPLICA_DIR); 'none' to leave it out"),
    ] = None,
) -> None:
    """Restore into an empty PRESCREEN_HOME: the newest backup set (at or before --at) and its chain,
    then what the replica captured after it (blobs, keys, and the SQLite database as it was at --at,
    or at its newest). Needs the master key."""
    import time
    from datetime import datetime

    from prescreen.errors import InvalidRequestError
    from prescreen.security.keys import audit_public_key
    from prescreen.store.audit import verify
    from prescreen.store.backup import restore as restore_backup
    from prescreen.store.backup import restore_replica_only, store_counts

    settings = get_settings()
    started = time.monotonic()
    when = datetime.fromisoformat(at) if at else None
    captured = replica if replica is not None else settings.replica_dir
    if captured is not None and str(captured) == "none":
        captured = None
    if from_ is None and captured is None:
        raise InvalidRequestError("say where to restore from: --from BACKUP_DIR and/or --replica DIR")
    if from_ is None:
        assert captured is not None
        brought, name = restore_replica_only(settings, captured, when), f"the replica {captured}"
    else:
        done, brought = restore_backup(settings, from_, when, captured)
        name = done.name + (f" + the replica {captured}" if captured is not None else "")
    extra = ""
    if captured is not None:
        streamed = f", the database as at {at or 'its newest state'}" if brought["database"] else ""
        extra = f" ({brought['blobs']} blobs from the replica{streamed})"
    store = _store()  # migrations, in case the backup came from an older version
    verdict = verify(store.sessions, audit_public_key(settings))
    studies = store_counts(store.sessions)["studies"]
    console.print(
        f"restored {name}{extra}: {studies} studies in {time.monotonic() - started:.1f} s; "
        f"audit chain {'intact' if verdict.ok else 'BROKEN: ' + verdict.reason} ({verdict.records} records)"
    )
    if not verdict.ok:
        raise typer.Exit(1)


@keys_app.command("status")
@user_errors
def keys_status() -> None:
    """The master key's id and file, the data keys (one per month), the wrapped secrets."""
    from prescreen.security.keyring import keyring_for

    for key, value in keyring_for(get_settings()).status().items():
        console.print(f"{key}: {value}")


@keys_app.command("rotate")
@user_errors
def keys_rotate() -> None:
    """A new master key: every data key re-wrapped, no data re-encrypted; the service keeps running."""
    from prescreen.security.audit import AuditEntry, AuditEvent
    from prescreen.security.keyring import keyring_for
    from prescreen.store.audit import record_now

    ring = keyring_for(get_settings())
    before = ring.status()["master_key_id"]
    after = ring.rotate()
    detail = {"from": before, "to": after}
    record_now(
        _store().sessions, AuditEntry(AuditEvent.SETTING_CHANGE, _operator(), object_id="master-key", detail=detail)
    )
    console.print(f"master key rotated: {before} → {after}; {ring.status()['data_keys']} data keys re-wrapped")


@reports_app.command("verify")
@user_errors
def reports_verify(study_uid: Annotated[str, typer.Argument(help="The Study Instance UID")]) -> None:
    """Check every signature of every report version of a study (exit 1 when one fails)."""
    from prescreen.store.signing import verify_study

    with _store().sessions() as session:
        checks = verify_study(session, study_uid)
    for check in checks:
        mark = "[green]ok[/green]" if check.ok else f"[red]FAILED[/red] {check.reason}"
        console.print(f"version {check.version} signed by {check.signer}: {mark}")
    if not checks:
        console.print("no signed report for this study")
    if any(not c.ok for c in checks):
        raise typer.Exit(1)


@app.command("encrypt-existing")
@user_errors
def encrypt_existing() -> None:
    """Seal what an earlier version stored in plain text: every blob (in place, same address) and the
    patient columns. Resumable: sealed things are skipped."""
    from prescreen.store.sealed import seal_existing

    blobs, rows = seal_existing(_store())
    console.print(f"sealed {blobs} blobs and {rows} studies' patient fields")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
