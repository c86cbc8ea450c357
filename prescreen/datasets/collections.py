"""Labelled data sets: a folder on disk → preprocessed signals with labels.

Preprocessed signals are cached under ``$PRESCREEN_HOME/cache`` keyed by the data digest and
the preprocessing spec, so a second run over the same folder skips the decoding.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.progress import Progress

from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.readers import read_wfdb
from prescreen.errors import DatasetError, InvalidStudyError

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cache file layout changes
CINC_LABELS: dict[str, str] = {"N": "normal", "A": "af", "O": "other", "~": "noisy"}


@dataclass
class LabelledSet:
    """Preprocessed items of a labelled data set.

    Attributes:
        path: the folder read.
        ids: one id per item (record name).
        labels: class index per item.
        signals: the preprocessed model input of each item (variable length).
        digest: SHA-256 over the files that were read (labels included).
        skipped: ``(id, reason)`` for items the pipeline could not use.
    """

    path: Path
    ids: list[str]
    labels: npt.NDArray[np.int64]
    signals: list[npt.NDArray[np.float32]]
    digest: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | npt.NDArray[np.int64]) -> LabelledSet:
        idx = [int(i) for i in index]
        return LabelledSet(
            self.path,
            [self.ids[i] for i in idx],
            self.labels[idx],
            [self.signals[i] for i in idx],
            self.digest,
            [],
        )


def read_cinc_reference(folder: Path) -> list[tuple[str, str]]:
    """``(record, code)`` rows of a CinC 2017 ``REFERENCE.csv``.

    Raises:
        DatasetError: the folder or its REFERENCE.csv is missing or malformed.
    """
    if not folder.is_dir():
        raise DatasetError(f"data folder {folder} does not exist")
    ref = folder / "REFERENCE.csv"
    if not ref.is_file():
        raise DatasetError(f"{folder} is not in the CinC 2017 layout: REFERENCE.csv (record,label) is missing")
    rows: list[tuple[str, str]] = []
    with ref.open(newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            if len(row) < 2 or row[1].strip() not in CINC_LABELS:
                raise DatasetError(f"{ref}:{n}: expected 'record,label' with label in {sorted(CINC_LABELS)}, got {row}")
            rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise DatasetError(f"{ref} lists no records")
    return rows


def digest_files(paths: Sequence[Path]) -> str:
    """SHA-256 over the names and contents of ``paths`` (in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def load_cinc2017(
    folder: Path,
    classes: Sequence[str],
    preprocess: Callable[[EcgRecord], npt.NDArray[np.float32]],
    spec: dict[str, Any],
    cache_dir: Path | None = None,
    progress: bool = True,
) -> LabelledSet:
    """Load a folder in the CinC 2017 layout (WFDB records + ``REFERENCE.csv``).

    Args:
        folder: the data folder.
        classes: class names in model order; CinC codes map through ``CINC_LABELS``.
        preprocess: the task's record → model-input chain.
        spec: the preprocessing spec (part of the cache key).
        cache_dir: where to keep preprocessed arrays; ``None`` disables the cache.
        progress: show a Rich progress bar.

    Raises:
        DatasetError: wrong layout, missing record files, or no usable record.
    """
    folder = folder.resolve()
    rows = read_cinc_reference(folder)
    files: list[Path] = [folder / "REFERENCE.csv"]
    for rec, _ in rows:
        hea = folder / f"{rec}.hea"
        if not hea.is_file():
            raise DatasetError(f"{folder}: REFERENCE.csv lists {rec} but {hea.name} is missing")
        files.append(hea)
        files.extend(sorted(folder.glob(f"{rec}.dat")) + sorted(folder.glob(f"{rec}.mat")))
    digest = digest_files(files)
    index = {name: i for i, name in enumerate(classes)}

    def build() -> LabelledSet:
        ids: list[str] = []
        labels: list[int] = []
        signals: list[npt.NDArray[np.float32]] = []
        skipped: list[tuple[str, str]] = []
        with Progress(disable=not progress, transient=True) as bar:
            job = bar.add_task(f"reading {folder.name}", total=len(rows))
            for rec, code in rows:
                try:
                    signals.append(preprocess(read_wfdb(folder / rec)))
                    ids.append(rec)
                    labels.append(index[CINC_LABELS[code]])
                except InvalidStudyError as exc:
                    skipped.append((rec, str(exc)))
                bar.advance(job)
        if not ids:
            raise DatasetError(f"{folder}: no usable record ({len(skipped)} skipped)")
        if skipped:
            log.warning("%d records skipped in %s", len(skipped), folder)
        return LabelledSet(folder, ids, np.asarray(labels, dtype=np.int64), signals, digest, skipped)

    return cached(cache_dir, "cinc2017", [digest, spec, list(classes)], build)


def cached(cache_dir: Path | None, kind: str, key_parts: Any, build: Callable[[], LabelledSet]) -> LabelledSet:
    """Load a preprocessed set from the cache, or build and store it.

    Args:
        cache_dir: the cache folder; ``None`` always builds.
        kind: a readable prefix of the cache file name.
        key_parts: JSON-serialisable values that determine the content (data digest,
            preprocessing spec, classes).
        build: makes the set when it is not cached.
    """
    if cache_dir is None:
        return build()
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir / f"{kind}-v{CACHE_FORMAT}-{key}.npz"
    if path.is_file():
        return _load_cache(path)
    result = build()
    _save_cache(path, result)
    return result


def _save_cache(path: Path, data: LabelledSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = np.asarray([[*s.shape] + [0] * (3 - s.ndim) + [s.ndim] for s in data.signals], dtype=np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        ids=np.asarray(data.ids),
        labels=data.labels,
        shapes=shapes,
        flat=np.concatenate([s.ravel() for s in data.signals]),
        meta=np.asarray(json.dumps({"path": str(data.path), "digest": data.digest, "skipped": data.skipped})),
    )
    tmp.replace(path)


def _load_cache(path: Path) -> LabelledSet:
    with np.load(path) as z:
        shapes = z["shapes"]
        sizes = [int(np.prod(row[: row[-1]])) for row in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        flat = z["flat"]
        signals = [
            flat[offsets[i] : offsets[i + 1]].reshape(tuple(int(d) for d in shapes[i][: shapes[i][-1]]))
            for i in range(len(sizes))
        ]
        meta = json.loads(str(z["meta"]))
        skipped = [(str(a), str(b)) for a, b in meta["skipped"]]
        ids = [str(i) for i in z["ids"]]
        return LabelledSet(Path(meta["path"]), ids, z["labels"].astype(np.int64), signals, meta["digest"], skipped)
