"""Image tasks: ``chest-xray`` (PneumoniaMNIST) and ``breast-us`` (BUSI), MONAI networks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monai.networks.nets import DenseNet
from torch import nn

from prescreen.config import get_settings
from prescreen.datasets.collections import LabelledSet
from prescreen.datasets.image_collections import find_npz, load_image_folder, load_npz
from prescreen.datasets.image_transforms import ImageAugment, ImagePreprocess, frames_as_batch
from prescreen.datasets.images import ImageStudy, assess_content, read_image_files
from prescreen.domain import FileKind
from prescreen.errors import DatasetError, NotAssessableError, UnsupportedStudyError
from prescreen.models.task import Accepts, Task, register

FRAME_POLICY = "every frame is screened; class probabilities are averaged over frames"


def small_densenet(n_classes: int, pool: int = 1) -> nn.Module:
    """A compact MONAI DenseNet (0.7 M parameters) trained from scratch, one input channel.

    Args:
        n_classes: number of output logits.
        pool: average-pool the input by this factor first (2: a 192 px input is seen at 96 px,
            about a third of the compute, so a 2-core CPU fits three times the epochs).
    """
    net = DenseNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=n_classes,
        init_features=32,
        growth_rate=16,
        block_config=(4, 8, 12, 8),
        dropout_prob=0.1,
    )
    return net if pool == 1 else nn.Sequential(nn.AvgPool2d(pool), net)


def image_reader(task: str, accepts: Accepts) -> Callable[[Mapping[str, bytes]], ImageStudy]:
    """Read one image file and check that a DICOM's modality (and body part, when the task
    names the ones it covers) is one the task screens — also when the sender names the task."""

    def read(files: Mapping[str, bytes]) -> ImageStudy:
        study = read_image_files(files, get_settings().max_image_pixels)
        modality, body_part = study.modality, study.body_part
        if modality is not None and accepts.modalities and modality not in accepts.modalities:
            raise UnsupportedStudyError(
                f"{task} screens {'/'.join(accepts.modalities)} images, not modality {modality}"
            )
        parts = accepts.body_parts
        if parts is not None and body_part is not None and body_part not in parts:
            raise UnsupportedStudyError(f"{task} screens {'/'.join(parts)} images, not body part {body_part}")
        reason = assess_content(study.frames)
        if reason is not None:
            raise NotAssessableError(f"not assessable: {reason}")
        return study

    return read


def image_spec(size: int, extra: str) -> dict[str, object]:
    return {
        "kind": "image",
        "size": [size, size],
        "channels": 1,
        "resize": f"longest side to {size} px (area), zero-padded to a square",
        "intensity": "Modality LUT, VOI LUT/window, MONOCHROME1 inverted, colour to gray (BT.601), "
        "scaled to [0, 1], then z-score per frame",
        "frames": FRAME_POLICY,
        "tensor": f"float32 (batch, 1, {size}, {size})",
        "notes": extra,
    }


def image_task(
    name: str,
    classes: tuple[str, ...],
    *,
    normal_classes: tuple[str, ...],
    modalities: tuple[str, ...],
    body_parts: tuple[str, ...] | None = None,
    preprocess: ImagePreprocess,
    default_data: str,
    load: Callable[[Path, Path | None, bool, str], LabelledSet],
    notes: str,
    train_defaults: dict[str, Any],
    caveats: tuple[str, ...],
    network_pool: int = 1,
) -> Task:
    """A single-image classification task: image reader with a modality check, MONAI
    preprocessing and augmentation, the small DenseNet (on the input average-pooled by
    ``network_pool``), frames screened and averaged."""
    accepts = Accepts((FileKind.DICOM_IMAGE, FileKind.RASTER), modalities=modalities, body_parts=body_parts)
    return Task(
        name=name,
        classes=classes,
        normal_classes=normal_classes,
        input_spec=image_spec(preprocess.size, notes),
        default_data=default_data,
        accepts=accepts,
        read_files=image_reader(name, accepts),
        preprocess=preprocess,
        windows=frames_as_batch,
        train_view=ImageAugment(flip=True),
        build_network=lambda: small_densenet(len(classes), network_pool),
        load_dataset=load,
        train_defaults=train_defaults,
        caveats=caveats,
    )


CHEST_SIZE = 64
CHEST_CLASSES = ("normal", "pneumonia")
_CHEST_PRE = ImagePreprocess(CHEST_SIZE)


def _load_chest(path: Path, cache_dir: Path | None, progress: bool, purpose: str = "eval") -> LabelledSet:
    npz = find_npz(path)
    if npz is not None:
        return load_npz(npz, CHEST_CLASSES, _CHEST_PRE, purpose, cache_dir)
    if path.is_dir():
        return load_image_folder(path, CHEST_CLASSES, _CHEST_PRE, get_settings().max_image_pixels, cache_dir, progress)
    raise DatasetError(f"{path}: expected a MedMNIST .npz or a folder with normal/ and pneumonia/ sub-folders")


@register("chest-xray")
def chest_xray() -> Task:
    return image_task(
        "chest-xray",
        CHEST_CLASSES,
        normal_classes=("normal",),
        modalities=("CR", "DX"),
        body_parts=("CHEST",),
        preprocess=_CHEST_PRE,
        default_data="pneumoniamnist",
        load=_load_chest,
        notes="trained on 28x28 PneumoniaMNIST images upsampled to 64x64",
        train_defaults={"epochs": 30, "batch_size": 64, "lr": 2e-3, "patience": 6, "weight_decay": 1e-4},
        caveats=(
            "Trained on PneumoniaMNIST: paediatric chest radiographs downsampled to 28x28 px. Full-resolution adult "
            "CR/DX images are screened after downsampling, a use the training data does not cover.",
            "17 training images are exact duplicates (data README).",
        ),
    )


US_SIZE = 192
US_CLASSES = ("normal", "benign", "malignant")
_US_PRE = ImagePreprocess(US_SIZE)


def _load_us(path: Path, cache_dir: Path | None, progress: bool, purpose: str = "eval") -> LabelledSet:
    if not path.is_dir():
        raise DatasetError(f"{path}: expected a folder with benign/, malignant/ and normal/ sub-folders")
    return load_image_folder(path, US_CLASSES, _US_PRE, get_settings().max_image_pixels, cache_dir, progress)


@register("breast-us")
def breast_us() -> Task:
    return image_task(
        "breast-us",
        US_CLASSES,
        normal_classes=("normal", "benign"),
        modalities=("US",),
        preprocess=_US_PRE,
        default_data="busi",
        load=_load_us,
        notes="BUSI images are 256x256 PNG; DICOM frames are cropped to their US region; the network "
        "average-pools its 192 px input to 96 px",
        network_pool=2,
        train_defaults={"epochs": 40, "batch_size": 32, "lr": 2e-3, "patience": 12, "weight_decay": 5e-2},
        caveats=(
            "BUSI has several images of some patients and no patient ids: split by image (the default), "
            "near-duplicates of one patient can sit on both sides; grouped by pHash, near-identical images "
            "cannot, but two different views of one lesion still can. Held-out figures can be optimistic.",
            "Benign findings are reported but not flagged; only 'malignant' flags a study.",
        ),
    )
