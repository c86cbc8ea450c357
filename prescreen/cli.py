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
from prescreen.errors import PrescreenError

app = typer.Typer(
    help="AI pre-screening of ECGs, ultrasound and radiographs: train, evaluate, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and activate models in the model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn ``PrescreenError`` (and a missing file) into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PrescreenError, FileNotFoundError) as exc:
            if os.environ.get("PRESCREEN_DEBUG") == "1":
                raise
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _data_path(task_default: str, data: Path | None) -> Path:
    return data if data is not None else get_settings().data_dir / task_default


@app.command()
@user_errors
def train(
    task: Annotated[str, typer.Argument(help="Task name, e.g. ecg-rhythm")],
    out: Annotated[Path, typer.Option(help="Run folder for checkpoints and predictions")],
    data: Annotated[Path | None, typer.Option(help="Labelled data folder (default: $PRESCREEN_DATA_DIR/<task set>)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs")] = None,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same metrics")] = 0,
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
    cfg = RunConfig(task=task, data=folder, out=out, seed=seed, limit=limit, **{**t.train_defaults, **overrides})
    dataset = t.load_dataset(folder, get_settings().cache_dir, True)
    result = Trainer(t, cfg).fit(dataset)
    console.print(
        f"trained {task}: best epoch {result.best_epoch}/{result.epochs_run}, validation flag AUROC "
        f"{result.best_val_auroc:.3f}, {result.seconds / 60:.1f} min → {result.run_dir}"
    )
    console.print(f"next: prescreen export {result.run_dir}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
