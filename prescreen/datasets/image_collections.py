"""Labelled image sets: MedMNIST ``.npz`` files and class-per-folder image trees."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.progress import Progress

from prescreen.datasets.collections import LabelledSet, cached, digest_files
from prescreen.datasets.images import ImageStudy, _unit_range, read_image_file
from prescreen.datasets.transforms import FloatArray
from prescreen.errors import DatasetError, InvalidStudyError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def find_npz(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".npz":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        return found[0] if found else None
    return None


def load_npz(
    path: Path,
    classes: Sequence[str],
    preprocess: Callable[[ImageStudy], FloatArray],
    purpose: str,
    cache_dir: Path | None,
) -> LabelledSet:
    """A MedMNIST ``.npz``: ``train_*`` for training; ``test_*`` (else ``val_*``) for evaluation.

    Raises:
        DatasetError: the arrays the purpose needs are missing or inconsistent.
    """
    with np.load(path) as z:
        keys = set(z.files)
        prefixes = ["train"] if purpose == "train" else (["test"] if "test_images" in keys else ["val"])
        for p in prefixes:
            if f"{p}_images" not in keys or f"{p}_labels" not in keys:
                raise DatasetError(f"{path} has no {p}_images/{p}_labels arrays (has: {', '.join(sorted(keys))})")
        images = np.concatenate([z[f"{p}_images"] for p in prefixes])
        labels = np.concatenate([z[f"{p}_labels"].reshape(-1) for p in prefixes]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(f"{path}: expected (n, H, W) images with n labels, got {images.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DatasetError(f"{path}: labels must be 0..{len(classes) - 1}")
    h = hashlib.sha256()
    h.update(images.tobytes())
    h.update(labels.tobytes())
    digest = h.hexdigest()

    def build() -> LabelledSet:
        signals = [preprocess(ImageStudy(frames=_unit_range(img[None, ...].astype(np.float32)))) for img in images]
        ids = [f"{prefixes[0]}-{i}" for i in range(len(images))]
        return LabelledSet(path, ids, labels, signals, digest)

    return cached(cache_dir, f"npz-{purpose}", [digest, repr(preprocess), list(classes)], build)


def load_image_folder(
    folder: Path,
    classes: Sequence[str],
    preprocess: Callable[[ImageStudy], FloatArray],
    max_pixels: int,
    cache_dir: Path | None,
    progress: bool = True,
) -> LabelledSet:
    """A folder with one sub-folder per class of PNG/JPEG/DICOM files (BUSI layout).

    Mask images (``*_mask*``) are ignored.

    Raises:
        DatasetError: a class folder is missing, or no image could be read.
    """
    missing = [c for c in classes if not (folder / c).is_dir()]
    if missing:
        raise DatasetError(
            f"{folder} is not a class-folder layout: missing sub-folder(s) {', '.join(missing)} "
            f"(expected {', '.join(classes)})"
        )
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        for p in sorted((folder / name).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem:
                files.append((p, index))
    if not files:
        raise DatasetError(f"{folder}: no PNG/JPEG/DICOM images in {', '.join(classes)}")
    digest = digest_files([p for p, _ in files])

    def build() -> LabelledSet:
        ids: list[str] = []
        labels: list[int] = []
        signals: list[FloatArray] = []
        skipped: list[tuple[str, str]] = []
        with Progress(disable=not progress, transient=True) as bar:
            job = bar.add_task(f"reading {folder.name}", total=len(files))
            for path, label in files:
                try:
                    signals.append(preprocess(read_image_file(path.name, path.read_bytes(), max_pixels)))
                    ids.append(f"{path.parent.name}/{path.name}")
                    labels.append(label)
                except InvalidStudyError as exc:
                    skipped.append((path.name, str(exc)))
                bar.advance(job)
        if not ids:
            raise DatasetError(f"{folder}: no usable image ({len(skipped)} skipped)")
        return LabelledSet(folder, ids, np.asarray(labels, dtype=np.int64), signals, digest, skipped)

    return cached(cache_dir, "folder", [digest, repr(preprocess), list(classes), max_pixels], build)
