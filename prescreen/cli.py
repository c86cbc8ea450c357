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
from prescreen.errors import DatasetError, PrescreenError

app = typer.Typer(
    help="AI pre-screening of ECGs, ultrasound and radiographs: train, evaluate, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and activate models in the model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
users_app = typer.Typer(help="Reading physicians: add and list users.", no_args_is_help=True)
app.add_typer(users_app, name="users")
rules_app = typer.Typer(help="Routing rules: validate a rules file.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@app.callback()
def _owner_only() -> None:
    """Everything prescreen writes (database, blobs, keys, model store) is readable by its owner only."""
    os.umask(0o077)


# outside a terminal (pipes, CI logs) keep table rows whole instead of wrapping them at 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)
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
) -> None:
    """Train a task's network; early stopping on validation; checkpoints in OUT."""
    from prescreen.models.task import get_task
    from prescreen.training.config import RunConfig
    from prescreen.training.trainer import Trainer

    t = get_task(task)
    folder = _data_path(t.default_data, data)
    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size}.items() if v is not None}
    cfg = RunConfig(
        task=task,
        data=folder,
        out=out,
        seed=seed,
        split_seed=split_seed,
        limit=limit,
        **{**t.train_defaults, **overrides},
    )
    dataset = t.load_dataset(folder, get_settings().cache_dir, True, "train")
    result = Trainer(t, cfg).fit(dataset)
    console.print(
        f"trained {task}: best epoch {result.best_epoch}/{result.epochs_run}, validation flag AUROC "
        f"{result.best_val_auroc:.3f}, {result.seconds / 60:.1f} min → {result.run_dir}"
    )
    console.print(f"next: prescreen export {result.run_dir}")


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

    from prescreen.evaluation.evaluate import evaluate_probs, flag_truth
    from prescreen.evaluation.report import evaluation_json, write_report
    from prescreen.models.model_store import ModelStore
    from prescreen.models.task import get_task
    from prescreen.training.resolve import resolve_model

    t = get_task(task)
    folder = _data_path(t.default_data, data)
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
    ident = {"name": predictor.name, "version": predictor.version, "sha256": predictor.sha256}
    doc = evaluation_json(t.name, ident, result, list(t.classes), predictor.threshold, len(dataset.skipped))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=2))
    if report is not None:
        write_report(report, doc, flag_truth(t, dataset.labels), t.flag_scores(probs))
    if predictor.store_tag is not None:
        ModelStore(import_shipped=False).record_evaluation(predictor.store_tag, result)
    _print_evaluation(doc)


def _print_evaluation(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from prescreen.evaluation.report import METRIC_LABELS, fmt

    table = Table(title=f"{doc['task']} — {doc['model']['name']}:{doc['model']['version']} on n={doc['dataset']['n']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95 % CI", justify="right")
    for key, v in doc["metrics"].items():
        table.add_row(METRIC_LABELS[key], fmt(v["value"]), f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]")
    console.print(table)
    tg = doc["target"]
    console.print(f"target {tg['metric']} >= {tg['threshold']}: {'met' if tg['met'] else 'NOT met'}")


@app.command()
@user_errors
def export(
    runs: Annotated[list[Path], typer.Argument(help="Training run folder(s); several of one split make an ensemble")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for model.onnx + card.json (default: the run folder)")
    ] = None,
    activate: Annotated[bool, typer.Option(help="Make it the task's active model")] = False,
) -> None:
    """Export a run (or an ensemble of runs) to ONNX, parity-checked, with its model card; add it to the store."""
    from prescreen.models.model_store import ModelStore
    from prescreen.training.export import export_run

    onnx_path, card = export_run(runs, out, progress=True)
    store = ModelStore()
    stored = store.add(onnx_path, card)
    if activate:
        store.activate(card.task, stored.tag)
    head = card.test or card.validation
    acc = head.metrics["accuracy"] if head else None
    parity_diff = card.onnx["parity_max_abs_diff"]
    console.print(f"exported {onnx_path} (parity max |Δ| {parity_diff:.1e}), card {onnx_path.parent / 'card.json'}")
    if acc is not None and head is not None:
        console.print(f"{head.split}: flag accuracy {acc.value:.3f} [{acc.ci_low:.3f}, {acc.ci_high:.3f}], n={head.n}")
    console.print(
        f"stored as {stored.tag}"
        + (" (active)" if activate else f"; activate with: prescreen models activate {card.task} {stored.tag}")
    )


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
) -> None:
    """Make a stored model the active one of its task (the service loads it at start)."""
    from prescreen.models.model_store import ModelStore
    from prescreen.models.task import get_task

    get_task(task)
    model = ModelStore().activate(task, tag)
    console.print(f"{model.tag} is now the active {task} model")


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
        str, typer.Option(help="Central service URL (STOW-RS), e.g. http://central:3000, or AE@host:port (C-STORE)")
    ],
    host: Annotated[str | None, typer.Option(help="Address the DICOM listener binds (default from settings)")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM listener port (default from settings: 11112)")] = None,
) -> None:
    """Run an edge node: receive studies over DICOM, keep them durably, forward each complete study
    to the central service with retry and backoff (until stopped with Ctrl-C / SIGTERM)."""
    import signal
    import threading

    from prescreen.integration.dicom_send import DicomDestination
    from prescreen.pipeline.runtime import start_runtime

    settings = get_settings()
    if not forward_to.startswith(("http://", "https://")):
        DicomDestination.parse(forward_to)  # a bad AE@host:port fails here, with one line
    settings.forward_to = forward_to.rstrip("/")
    if host:
        settings.host = host
    if dicom_port is not None:
        settings.dicom_port = dicom_port
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runtime = start_runtime(settings, None)
    console.print(
        f"edge node: DICOM {settings.dicom_ae_title} on {settings.host}:{settings.dicom_port}, "
        f"forwarding complete studies to {settings.forward_to}"
    )
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()


@users_app.command("add")
@user_errors
def users_add(
    name: Annotated[str, typer.Option(help="Full name, as shown on reports")],
    login: Annotated[str, typer.Option(help="Login (lowercase)")],
    grade: Annotated[str, typer.Option(help="resident, attending, associate_chief or chief")],
    specialty: Annotated[list[str], typer.Option(help="A worklist the user reads (repeatable), e.g. cardiology")],
    institution: Annotated[str | None, typer.Option(help="Institution of the user")] = None,
    admin: Annotated[bool, typer.Option(help="May manage users")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Add a user; the password is asked for (or read from stdin) and stored only as an Argon2id hash."""
    from prescreen.pipeline.runtime import open_store
    from prescreen.store.users import add_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    specialties = [part.strip() for value in specialty for part in value.split(",") if part.strip()]
    store = open_store(get_settings())
    user = add_user(
        store.sessions,
        login=login,
        name=name,
        password=password,
        grade=grade,
        specialties=specialties,
        institution=institution,
        is_admin=admin,
    )
    console.print(f"added {user.login} ({user.grade}; {', '.join(user.specialties)})")


@users_app.command("list")
@user_errors
def users_list() -> None:
    """List users: login, name, grade, specialties."""
    from rich.table import Table

    from prescreen.pipeline.runtime import open_store
    from prescreen.store.users import list_users

    table = Table("login", "name", "grade", "specialties", "institution")
    for user in list_users(open_store(get_settings()).sessions):
        table.add_row(user.login, user.name, user.grade, ", ".join(user.specialties), user.institution or "")
    console.print(table)


@rules_app.command("check")
@user_errors
def rules_check(path: Annotated[Path, typer.Argument(help="A routing-rules YAML file")]) -> None:
    """Validate a routing-rules file; an error names the rule and its line (exit 2)."""
    from prescreen.triage.rules import load_rules

    rules = load_rules(path)
    console.print(f"ok: {len(rules.rules)} rules; worklists: {', '.join(rules.worklists())}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
