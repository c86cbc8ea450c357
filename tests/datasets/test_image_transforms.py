"""Image preprocessing (resize, pad, z-score), network batches and training augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from prescreen.datasets.image_transforms import ImageAugment, ImagePreprocess, frames_as_batch
from prescreen.datasets.images import ImageStudy


def _study(n: int = 1, h: int = 100, w: int = 50) -> ImageStudy:
    """``n`` frames of ``h × w``: a bright diagonal ramp in (0, 1], different per frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.2 + 0.8 * (yy / (h - 1) + xx / (w - 1)) / 2
    frames = np.stack([np.roll(base, 7 * k, axis=0) for k in range(n)]).astype(np.float32)
    return ImageStudy(frames=frames)


def test_preprocess_shape_and_dtype() -> None:
    out = ImagePreprocess(64)(_study())
    assert out.shape == (1, 64, 64)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_preprocess_keeps_aspect_and_pads() -> None:
    # 100 × 50 → 64 × 32 content, centred, with 16 padded columns on each side
    out = ImagePreprocess(64)(_study())[0]
    left, content, right = out[:, :16], out[:, 16:48], out[:, 48:]
    pad = left[0, 0]
    assert np.all(left == pad) and np.all(right == pad)
    assert np.all(content != pad)  # the ramp is never as dark as the zero padding
    assert content.std() > 0
    assert content.min() > pad
    # the ramp survives: brighter towards the bottom right
    assert content[-1, -1] > content[0, 0]


def test_preprocess_wide_image_pads_rows() -> None:
    out = ImagePreprocess(64)(_study(h=50, w=100))[0]
    top, bottom = out[:16], out[48:]
    assert np.all(top == top[0, 0]) and np.all(bottom == top[0, 0])
    assert np.all(out[16:48] != top[0, 0])


def test_preprocess_z_scores() -> None:
    out = ImagePreprocess(64)(_study())[0]
    assert out.std() > 0
    assert abs(float(out.mean())) < 1e-4  # z-scored over the whole padded frame
    assert float(out.std()) == pytest.approx(1.0, abs=1e-3)


def test_preprocess_upscales_small_images() -> None:
    out = ImagePreprocess(64)(_study(h=28, w=28))
    assert out.shape == (1, 64, 64)
    assert out.std() > 0


def test_preprocess_multi_frame() -> None:
    out = ImagePreprocess(32)(_study(n=3))
    assert out.shape == (3, 32, 32)
    assert np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])  # frames are not mixed or collapsed


def test_preprocess_constant_frame_is_finite() -> None:
    out = ImagePreprocess(32)(ImageStudy(frames=np.zeros((1, 40, 40), dtype=np.float32)))
    assert out.shape == (1, 32, 32)
    assert np.isfinite(out).all()


def test_frames_as_batch() -> None:
    x = ImagePreprocess(32)(_study(n=4))
    batch = frames_as_batch(x)
    assert batch.shape == (4, 1, 32, 32)
    assert batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(batch[:, 0], x)
    strided = np.asarray(x[:, ::2, ::2], dtype=np.float64)  # not contiguous, not float32
    out = frames_as_batch(strided)  # type: ignore[arg-type]
    assert out.shape == (4, 1, 16, 16) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]


def test_augment_shape() -> None:
    x = ImagePreprocess(32)(_study(n=3))
    out = ImageAugment()(x, np.random.default_rng(0))
    assert out.shape == (1, 32, 32)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_augment_reproducible_with_same_seed() -> None:
    x = ImagePreprocess(32)(_study(n=3))
    aug = ImageAugment()
    a = aug(x, np.random.default_rng(123))
    b = ImageAugment()(x, np.random.default_rng(123))
    c = aug(x, np.random.default_rng(123))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_augment_differs_with_other_seed() -> None:
    x = ImagePreprocess(32)(_study(n=1))
    aug = ImageAugment()
    outs = [aug(x, np.random.default_rng(seed)) for seed in range(6)]
    assert any(not np.allclose(outs[0], o) for o in outs[1:])
    assert not all(np.allclose(o, x) for o in outs)  # something changes the frame


def test_augment_without_flip() -> None:
    aug = ImageAugment(flip=False)
    x = ImagePreprocess(32)(_study())
    assert aug(x, np.random.default_rng(1)).shape == (1, 32, 32)
    assert len(aug.chain.transforms) == len(ImageAugment(flip=True).chain.transforms) - 1
