"""Images as model input: DICOM (every transfer syntax pydicom + pylibjpeg decode), PNG/JPEG.

A reader returns an :class:`ImageStudy`: grayscale frames in [0, 1] after the Modality LUT, the
VOI LUT or window, MONOCHROME1 inversion and colour → gray conversion. Ultrasound frames are
cropped to the largest 2-D region the DICOM declares (burned-in annotations outside it go; those
inside stay). Multi-frame studies keep every frame; the model screens each and the task
averages their probabilities.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from prescreen.config import get_settings
from prescreen.datasets.files import ECG_SOP_CLASSES, code_string, looks_dicom, study_files
from prescreen.errors import InvalidStudyError, PrescreenError, StudyTooLargeError, UnsupportedStudyError

# Pillow's own bomb guard warns above 89 M pixels and refuses above 179 M as an unreadable file (a
# 400); this module refuses oversized images itself, from the header and before decoding, with a
# 413 that names the limit (PRESCREEN_MAX_IMAGE_PIXELS, PRESCREEN_MAX_DECODED_BYTES)
Image.MAX_IMAGE_PIXELS = None

FloatArray = npt.NDArray[np.float32]
MIN_SIDE = 16


@dataclass(frozen=True)
class ImageStudy:
    """Grayscale frames ``(n_frames, height, width)`` in [0, 1], with DICOM context when known."""

    frames: FloatArray
    modality: str | None = None
    body_part: str | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames.ndim != 3:
            raise InvalidStudyError(f"expected frames of shape (n, height, width), got {self.frames.shape}")
        if min(self.frames.shape[1:]) < MIN_SIDE:
            raise InvalidStudyError(
                f"image of {self.frames.shape[2]}x{self.frames.shape[1]} pixels is too small to screen "
                f"(at least {MIN_SIDE}x{MIN_SIDE})"
            )


def _unit_range(x: npt.NDArray[Any]) -> FloatArray:
    """Scale each frame to [0, 1] (a constant frame becomes 0)."""
    x = x.astype(np.float32)
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    out: FloatArray = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
    return out


def _to_gray(rgb: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """ITU-R BT.601 luma of ``(..., 3)`` RGB."""
    return np.asarray(rgb[..., :3], dtype=np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


def read_dicom_image(source: str | Path | bytes | pydicom.Dataset, max_pixels: int) -> ImageStudy:
    """Decode a DICOM image into grayscale frames.

    Args:
        source: a file path, the file's bytes or its parsed dataset.
        max_pixels: refuse images with more pixels (all frames) than this.

    Raises:
        InvalidStudyError: not DICOM, no pixel data, a corrupt stream or no decoder for it.
        UnsupportedStudyError: an ECG waveform or a 3-D volume.
        StudyTooLargeError: more pixels than ``max_pixels``.
    """
    try:
        if isinstance(source, pydicom.Dataset):
            ds = source
        else:
            ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise InvalidStudyError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    try:
        return _image_from_dataset(ds, max_pixels)
    except PrescreenError:
        raise
    except Exception as exc:  # malformed attributes (frames, LUTs, regions) surface as many types
        # the exception's text may quote element values: name only its type
        raise InvalidStudyError(f"DICOM image attributes cannot be interpreted ({type(exc).__name__})") from exc


def _image_from_dataset(ds: Any, max_pixels: int) -> ImageStudy:
    modality = code_string(ds, "Modality")
    if str(ds.get("SOPClassUID", "")) in ECG_SOP_CLASSES:
        raise UnsupportedStudyError("this DICOM is an ECG waveform, not an image")
    if "PixelData" not in ds:
        raise InvalidStudyError(f"DICOM {modality or ''} object has no pixel data".replace("  ", " "))
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if modality in ("CT", "MR", "PT", "NM") and n_frames > 1:
        raise UnsupportedStudyError(f"a 3-D {modality} volume of {n_frames} slices cannot be screened as a 2-D image")
    max_frames = get_settings().max_image_frames
    if n_frames > max_frames:
        raise StudyTooLargeError(f"image has {n_frames} frames; the limit is {max_frames}")
    if rows * cols * n_frames > max_pixels:
        raise StudyTooLargeError(f"image has {rows * cols * n_frames} pixels; the limit is {max_pixels}")
    samples = max(int(ds.get("SamplesPerPixel", 1) or 1), 1)
    check_decoded_size(rows * cols * n_frames * samples)
    syntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise many types: missing plugin, corrupt stream
        name = getattr(syntax, "name", str(syntax))
        raise InvalidStudyError(f"pixel data ({name}) cannot be decoded: {type(exc).__name__}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if n_frames == 1:
        arr = arr[None, ...]
    if photometric == "PALETTE COLOR":
        gray = _to_gray(apply_color_lut(arr, ds))
    elif samples == 3:
        gray = _to_gray(arr)  # pydicom 3 returns YBR as RGB
    else:
        gray = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        windowed = np.stack([np.asarray(apply_voi_lut(f, ds), dtype=np.float32) for f in gray])
        gray = windowed
        if photometric == "MONOCHROME1":
            gray = gray.max() - gray + gray.min()
    frames = _crop_us_region(_unit_range(gray), ds)
    if not np.isfinite(frames).all():
        raise InvalidStudyError("pixel values are not finite after the Modality/VOI LUT (bad rescale or window)")
    return ImageStudy(
        frames=frames,
        modality=modality,
        body_part=code_string(ds, "BodyPartExamined"),
        source={
            "format": "dicom",
            "photometric": photometric,
            "frames": int(frames.shape[0]),
            "transfer_syntax": getattr(syntax, "name", None),
        },
    )


def _crop_us_region(frames: FloatArray, ds: Any) -> FloatArray:
    """Crop to the largest 2-D ultrasound region (RegionSpatialFormat 1), if the DICOM has one."""
    regions = ds.get("SequenceOfUltrasoundRegions") or []
    boxes = []
    for region in regions:
        if int(region.get("RegionSpatialFormat", 0)) != 1:
            continue
        x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
        x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
        if x1 - x0 >= MIN_SIDE and y1 - y0 >= MIN_SIDE:
            boxes.append(((x1 - x0) * (y1 - y0), x0, y0, x1, y1))
    if not boxes:
        return frames
    _, x0, y0, x1, y1 = max(boxes)
    return np.ascontiguousarray(frames[:, y0 : y1 + 1, x0 : x1 + 1])


TO_RGB_MODES = ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "1")
"""Pillow modes converted to RGB before they become gray."""


MAX_ASPECT_RATIO = 8.0
MIN_CONTENT_STD = 0.01
MIN_CONTENT_ROWS = 0.05


def assess_content(frames: FloatArray) -> str | None:
    """Why an image (frames scaled to [0, 1]) holds nothing to judge, or ``None`` when it does:
    an absurd aspect ratio, near-constant pixels, or content in under 5 % of its rows."""
    height, width = frames.shape[-2:]
    if max(height, width) > MAX_ASPECT_RATIO * max(min(height, width), 1):
        return f"an aspect ratio of {width}x{height} is not a radiograph or ultrasound image"
    if float(frames.std()) < MIN_CONTENT_STD:
        return "the image is blank (near-constant pixel values)"
    rows_with_content = (frames.std(axis=-1) >= MIN_CONTENT_STD).mean()
    if rows_with_content < MIN_CONTENT_ROWS:
        return f"the image is mostly empty (content in {rows_with_content:.1%} of its rows)"
    return None


def check_decoded_size(samples: int) -> None:
    """Refuse, before decoding, an image whose samples (pixels x frames x channels) would take more
    than ``PRESCREEN_MAX_DECODED_BYTES`` as 32-bit floats: a few kilobytes of JPEG 2000 or PNG can
    declare gigabytes.

    Raises:
        StudyTooLargeError: over the limit.
    """
    limit = get_settings().max_decoded_bytes
    if samples * 4 > limit:
        raise StudyTooLargeError(
            f"the image would take {samples * 4 // 2**20} MiB decoded; the limit is {limit // 2**20} MiB"
        )


def check_png_complete(data: bytes, image: Image.Image) -> None:
    """Refuse a PNG whose image data is shorter than its header declares (Pillow pads it with zeros).

    Reads the IDAT stream with a bounded inflater: at most the declared size is ever produced.

    Raises:
        InvalidStudyError: truncated image data.
    """
    if image.info.get("interlace"):
        return  # Adam7 passes: their sizes differ; Pillow itself reports a short interlaced stream
    bits = {"1": 1, "L": 8, "P": 8, "RGB": 24, "RGBA": 32, "LA": 16, "I;16": 16, "I;16B": 16, "I": 32}.get(image.mode)
    if bits is None:
        return
    expected = image.height * (1 + (image.width * bits + 7) // 8)
    inflater, produced, offset = zlib.decompressobj(), 0, 8
    while offset + 8 <= len(data) and produced < expected:
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            chunk = data[offset + 8 : offset + 8 + length]
            try:
                produced += len(inflater.decompress(chunk, expected - produced))
                while inflater.unconsumed_tail and produced < expected:
                    produced += len(inflater.decompress(inflater.unconsumed_tail, expected - produced))
            except zlib.error as exc:
                raise InvalidStudyError("the PNG image data is corrupt") from exc
        offset += 12 + length
    if produced < expected:
        raise InvalidStudyError(
            f"the PNG image data is truncated: it holds {produced * 100 // max(expected, 1)} % of the declared image"
        )


def open_raster(data: bytes, max_pixels: int) -> Image.Image:
    """Decode a PNG/JPEG with Pillow, refusing it before decoding when it has too many pixels.

    Raises:
        InvalidStudyError: not an image Pillow can decode.
        StudyTooLargeError: more pixels than ``max_pixels``.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise StudyTooLargeError(f"image has {image.width * image.height} pixels; the limit is {max_pixels}")
        bands = 3 if image.mode in TO_RGB_MODES else len(image.getbands())
        check_decoded_size(image.width * image.height * bands)
        if image.format == "PNG":
            check_png_complete(data, image)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidStudyError(f"not a readable PNG/JPEG image ({type(exc).__name__})") from exc
    return image


def read_raster_image(data: bytes, max_pixels: int) -> ImageStudy:
    """Decode PNG/JPEG (8- or 16-bit gray, palette, RGB, RGBA) into one grayscale frame.

    Raises:
        InvalidStudyError: not an image Pillow can decode.
        StudyTooLargeError: more pixels than ``max_pixels``.
    """
    image = open_raster(data, max_pixels)
    fmt = image.format or "raster"
    image = ImageOps.exif_transpose(image)  # phone photos carry their orientation in EXIF
    if image.mode in TO_RGB_MODES:
        image = image.convert("RGB")
    arr = np.asarray(image)
    gray = _to_gray(arr) if arr.ndim == 3 else arr.astype(np.float32)
    return ImageStudy(frames=_unit_range(gray[None, ...]), source={"format": fmt, "mode": image.mode})


def read_image_file(name: str, data: bytes, max_pixels: int) -> ImageStudy:
    """DICOM or PNG/JPEG by content."""
    if looks_dicom(name, data):
        return read_dicom_image(data, max_pixels)
    return read_raster_image(data, max_pixels)


def read_image_files(files: Mapping[str, bytes], max_pixels: int) -> ImageStudy:
    """One image study sent as exactly one file.

    Raises:
        InvalidStudyError: no file, several files, an empty file or an unreadable one.
    """
    if not files:
        raise InvalidStudyError("no file was sent; send one DICOM, PNG or JPEG image")
    if len(files) != 1:
        raise InvalidStudyError(f"send one image file per study, got {len(files)} files")
    files = study_files(files)
    ((name, data),) = files.items()
    if not data:
        raise InvalidStudyError(f"file {name!r} is empty")
    if looks_dicom(name, data):
        return read_dicom_image(files.dataset(name), max_pixels)
    return read_raster_image(data, max_pixels)
