"""Image preprocessing and augmentation as MONAI transforms, shared by training and serving."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from monai.transforms import (
    Compose,
    NormalizeIntensity,
    RandAdjustContrast,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    RandGaussianSmooth,
    Resize,
    SpatialPad,
)

from prescreen.datasets.images import ImageStudy

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ImagePreprocess:
    """Frames → ``(n_frames, size, size)``: longest side resized to ``size`` (area
    interpolation, aspect kept), zero-padded to a square, z-scored per frame."""

    size: int

    def __call__(self, study: ImageStudy) -> FloatArray:
        chain = Compose(
            [
                Resize(spatial_size=self.size, size_mode="longest", mode="area"),
                SpatialPad(spatial_size=(self.size, self.size)),
                NormalizeIntensity(),
            ]
        )
        frames = [np.asarray(chain(frame[None, ...]), dtype=np.float32)[0] for frame in study.frames]
        return np.stack(frames).astype(np.float32)


def frames_as_batch(x: FloatArray) -> FloatArray:
    """``(n, H, W)`` frames → network batch ``(n, 1, H, W)``; each frame is screened."""
    return np.ascontiguousarray(x[:, None, :, :], dtype=np.float32)


class ImageAugment:
    """Training augmentation: horizontal flip, small affine (rotate, scale, shift), and what
    another site's device brings: other contrast (gamma), blur (lower resolution) and noise,
    re-standardized as the preprocessing does.

    Args:
        flip: allow left-right flips (fine for ultrasound and chest films at this resolution).
        site: the site-robustness part — gamma 0.6–1.6 (p 0.5), Gaussian blur sigma 0.3–1.2 (p 0.25),
            Gaussian noise up to 0.4 SD (p 0.5); without it, the milder augmentation of the first
            shipped models (gamma 0.8–1.25 p 0.3, noise up to 0.05 SD p 0.3, no blur).
    """

    def __init__(self, flip: bool = True, site: bool = True) -> None:
        affine = RandAffine(prob=0.7, rotate_range=0.15, scale_range=0.1, translate_range=0.06, padding_mode="zeros")
        transforms = (
            [
                affine,
                RandAdjustContrast(prob=0.5, gamma=(0.6, 1.6)),
                RandGaussianSmooth(prob=0.25, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
                RandGaussianNoise(prob=0.5, std=0.4),
                NormalizeIntensity(),
            ]
            if site
            else [affine, RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)), RandGaussianNoise(prob=0.3, std=0.05)]
        )
        if flip:
            transforms.insert(0, RandFlip(prob=0.5, spatial_axis=1))
        self.chain = Compose(transforms)

    def __call__(self, x: FloatArray, rng: np.random.Generator) -> FloatArray:
        """``x``: one preprocessed frame stack ``(n, H, W)``; returns one augmented ``(1, H, W)``."""
        frame = x[int(rng.integers(0, x.shape[0]))][None, ...]
        self.chain.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
        return np.asarray(self.chain(frame), dtype=np.float32)
