"""Labelled image sets: MedMNIST ``.npz``, class-per-folder trees, and the preprocessed-set cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prescreen.datasets.collections import LabelledSet, cached
from prescreen.datasets.image_collections import find_npz, load_image_folder, load_npz
from prescreen.datasets.image_transforms import ImagePreprocess
from prescreen.errors import DatasetError

CHEST = ("normal", "pneumonia")
BUSI = ("normal", "benign", "malignant")
PRE = ImagePreprocess(32)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _labels(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.uint8).reshape(-1, 1)  # MedMNIST shape (n, 1)


def _write_npz(path: Path, test: bool = False, **extra: np.ndarray) -> Path:
    arrays = {
        "train_images": _images(5, 1),
        "train_labels": _labels([0, 1, 1, 0, 1]),
        "val_images": _images(3, 2),
        "val_labels": _labels([1, 0, 0]),
    }
    if test:
        arrays["test_images"] = _images(4, 3)
        arrays["test_labels"] = _labels([0, 0, 1, 1])
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def _expected(images: np.ndarray) -> list[np.ndarray]:
    from prescreen.datasets.images import ImageStudy, _unit_range

    return [PRE(ImageStudy(frames=_unit_range(img[None].astype(np.float32)))) for img in images]


# --- npz ---------------------------------------------------------------------------------------------


def test_load_npz_train(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "pneumoniamnist.npz")
    data = load_npz(path, CHEST, PRE, "train", None)
    assert isinstance(data, LabelledSet)
    assert len(data) == 5
    assert data.ids == [f"train-{i}" for i in range(5)]
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, [0, 1, 1, 0, 1])
    assert all(s.shape == (1, 32, 32) and s.dtype == np.float32 for s in data.signals)
    for got, want in zip(data.signals, _expected(_images(5, 1)), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert data.path == path
    assert len(data.digest) == 64


def test_load_npz_eval_uses_val(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "p.npz")
    data = load_npz(path, CHEST, PRE, "eval", None)
    assert data.ids == ["val-0", "val-1", "val-2"]
    np.testing.assert_array_equal(data.labels, [1, 0, 0])
    for got, want in zip(data.signals, _expected(_images(3, 2)), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_load_npz_eval_prefers_test(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "p.npz", test=True)
    data = load_npz(path, CHEST, PRE, "eval", None)
    assert data.ids == [f"test-{i}" for i in range(4)]
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    assert len(load_npz(path, CHEST, PRE, "train", None)) == 5


def test_load_npz_missing_arrays(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, val_images=_images(3, 2), val_labels=_labels([1, 0, 0]))
    with pytest.raises(DatasetError, match="train_images"):
        load_npz(path, CHEST, PRE, "train", None)
    assert len(load_npz(path, CHEST, PRE, "eval", None)) == 3
    np.savez(path, train_images=_images(5, 1), train_labels=_labels([0, 1, 1, 0, 1]))
    with pytest.raises(DatasetError, match="val_images"):
        load_npz(path, CHEST, PRE, "eval", None)


def test_load_npz_labels_out_of_range(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "p.npz", train_labels=_labels([0, 1, 2, 0, 1]))
    with pytest.raises(DatasetError, match="labels"):
        load_npz(path, CHEST, PRE, "train", None)
    neg = np.asarray([0, 1, -1, 0, 1], dtype=np.int64).reshape(-1, 1)
    _write_npz(path, train_labels=neg)
    with pytest.raises(DatasetError, match="labels"):
        load_npz(path, CHEST, PRE, "train", None)


def test_load_npz_inconsistent_shapes(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "p.npz", train_labels=_labels([0, 1]))
    with pytest.raises(DatasetError):
        load_npz(path, CHEST, PRE, "train", None)
    _write_npz(path, train_images=np.zeros((5, 28, 28, 3), dtype=np.uint8))
    with pytest.raises(DatasetError):
        load_npz(path, CHEST, PRE, "train", None)


def test_load_npz_cached(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "p.npz")
    cache = tmp_path / "cache"
    first = load_npz(path, CHEST, PRE, "train", cache)
    assert len(list(cache.glob("npz-train-*.npz"))) == 1
    second = load_npz(path, CHEST, PRE, "train", cache)
    assert second.ids == first.ids
    np.testing.assert_array_equal(second.labels, first.labels)
    for a, b in zip(first.signals, second.signals, strict=True):
        np.testing.assert_array_equal(a, b)
    # train and eval are cached apart
    assert load_npz(path, CHEST, PRE, "eval", cache).ids == ["val-0", "val-1", "val-2"]


def test_load_npz_cache_depends_on_preprocessing(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "p.npz")
    cache = tmp_path / "cache"
    assert load_npz(path, CHEST, PRE, "train", cache).signals[0].shape == (1, 32, 32)
    assert load_npz(path, CHEST, ImagePreprocess(48), "train", cache).signals[0].shape == (1, 48, 48)


def test_find_npz(tmp_path: Path) -> None:
    assert find_npz(tmp_path) is None
    assert find_npz(tmp_path / "missing.npz") is None
    b = _write_npz(tmp_path / "b.npz")
    a = _write_npz(tmp_path / "a.npz")
    assert find_npz(tmp_path) == a
    assert find_npz(b) == b
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert find_npz(other) is None


# --- class folders -------------------------------------------------------------------------------------


def _png(path: Path, value: int, size: tuple[int, int] = (40, 30)) -> None:
    arr = np.full((size[1], size[0]), value, dtype=np.uint8)
    arr[: size[1] // 2] = 255 - value  # not a constant image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _busi(root: Path) -> Path:
    _png(root / "normal" / "normal (1).png", 10)
    _png(root / "normal" / "normal (1)_mask.png", 0)
    _png(root / "benign" / "benign (2).png", 20)
    _png(root / "benign" / "benign (1).png", 30)
    _png(root / "benign" / "benign (1)_mask.png", 0)
    _png(root / "benign" / "benign (1)_mask_1.png", 0)
    _png(root / "malignant" / "malignant (1).png", 40, (50, 20))
    (root / "malignant" / "notes.txt").write_text("not an image")
    return root


def test_load_image_folder(tmp_path: Path) -> None:
    root = _busi(tmp_path / "busi")
    data = load_image_folder(root, BUSI, PRE, 10**6, None, progress=False)
    assert data.ids == [
        "normal/normal (1).png",
        "benign/benign (1).png",
        "benign/benign (2).png",
        "malignant/malignant (1).png",
    ]
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, [0, 1, 1, 2])
    assert all(s.shape == (1, 32, 32) and s.dtype == np.float32 for s in data.signals)
    assert data.skipped == []
    assert data.path == root


def test_load_image_folder_skips_unreadable(tmp_path: Path) -> None:
    root = _busi(tmp_path / "busi")
    (root / "benign" / "broken.png").write_bytes(b"not a png")
    _png(root / "malignant" / "huge.png", 50, (400, 400))
    data = load_image_folder(root, BUSI, PRE, 100_000, None, progress=False)
    assert len(data) == 4
    assert {name for name, _ in data.skipped} == {"broken.png", "huge.png"}


def test_load_image_folder_missing_class(tmp_path: Path) -> None:
    root = _busi(tmp_path / "busi")
    for p in (root / "malignant").iterdir():
        p.unlink()
    (root / "malignant").rmdir()
    with pytest.raises(DatasetError, match="malignant"):
        load_image_folder(root, BUSI, PRE, 10**6, None, progress=False)


def test_load_image_folder_no_images(tmp_path: Path) -> None:
    for c in CHEST:
        (tmp_path / c).mkdir()
    _png(tmp_path / "normal" / "x_mask.png", 0)
    with pytest.raises(DatasetError, match="no PNG"):
        load_image_folder(tmp_path, CHEST, PRE, 10**6, None, progress=False)


def test_load_image_folder_nothing_usable(tmp_path: Path) -> None:
    for c in CHEST:
        (tmp_path / c).mkdir()
    (tmp_path / "normal" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="no usable"):
        load_image_folder(tmp_path, CHEST, PRE, 10**6, None, progress=False)


def test_load_image_folder_cached(tmp_path: Path) -> None:
    root = _busi(tmp_path / "busi")
    cache = tmp_path / "cache"
    first = load_image_folder(root, BUSI, PRE, 10**6, cache, progress=False)
    second = load_image_folder(root, BUSI, PRE, 10**6, cache, progress=False)
    assert second.ids == first.ids
    np.testing.assert_array_equal(second.labels, first.labels)
    for a, b in zip(first.signals, second.signals, strict=True):
        np.testing.assert_array_equal(a, b)
    # a changed file changes the digest: the set is read again
    changed = np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))  # a ramp, not two levels
    Image.fromarray(changed).save(root / "normal" / "normal (1).png")
    third = load_image_folder(root, BUSI, PRE, 10**6, cache, progress=False)
    assert third.digest != first.digest
    assert not np.array_equal(third.signals[0], first.signals[0])


# --- cache ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signals",
    [
        [np.arange(7, dtype=np.float32), np.linspace(-1, 1, 12, dtype=np.float32)],  # 1-D, variable length
        [
            np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32),
            np.random.default_rng(1).normal(size=(3, 8, 8)).astype(np.float32),
        ],  # 3-D, variable frames
    ],
    ids=["1d", "3d"],
)
def test_cached_round_trip(tmp_path: Path, signals: list[np.ndarray]) -> None:
    data = LabelledSet(
        tmp_path / "src", ["a", "b"], np.asarray([1, 0], dtype=np.int64), signals, "d" * 64, [("c", "unreadable")]
    )
    calls: list[int] = []

    def build() -> LabelledSet:
        calls.append(1)
        return data

    cache = tmp_path / "cache"
    first = cached(cache, "kind", ["digest", {"size": 32}], build)
    assert first is data and len(calls) == 1
    second = cached(cache, "kind", ["digest", {"size": 32}], build)
    assert len(calls) == 1  # read from the cache
    assert second.ids == data.ids
    assert second.path == data.path
    assert second.digest == data.digest
    assert second.skipped == data.skipped
    np.testing.assert_array_equal(second.labels, data.labels)
    assert second.labels.dtype == np.int64
    assert len(second.signals) == len(signals)
    for got, want in zip(second.signals, signals, strict=True):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    # another key builds again
    cached(cache, "kind", ["digest", {"size": 64}], build)
    assert len(calls) == 2
    assert not list(cache.glob("*.tmp.npz"))


def test_cached_without_dir_always_builds() -> None:
    calls: list[int] = []
    data = LabelledSet(Path("x"), ["a"], np.asarray([0], dtype=np.int64), [np.zeros(3, np.float32)], "d")

    def build() -> LabelledSet:
        calls.append(1)
        return data

    cached(None, "kind", "k", build)
    cached(None, "kind", "k", build)
    assert len(calls) == 2


def test_load_image_folder_cache_depends_on_preprocessing_and_limit(tmp_path: Path) -> None:
    root = _busi(tmp_path / "busi")
    _png(root / "malignant" / "huge.png", 50, (400, 400))
    cache = tmp_path / "cache"
    assert load_image_folder(root, BUSI, PRE, 10**6, cache, progress=False).signals[0].shape == (1, 32, 32)
    bigger = load_image_folder(root, BUSI, ImagePreprocess(48), 10**6, cache, progress=False)
    assert bigger.signals[0].shape == (1, 48, 48)
    limited = load_image_folder(root, BUSI, PRE, 100_000, cache, progress=False)
    assert [name for name, _ in limited.skipped] == ["huge.png"]
