"""Image readers: DICOM built here with known pixels, PNG/JPEG via Pillow, bad input, real DICOM files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, generate_uid

from prescreen.datasets.images import (
    MIN_SIDE,
    ImageStudy,
    read_dicom_image,
    read_image_file,
    read_image_files,
    read_raster_image,
)
from prescreen.errors import InvalidStudyError, StudyTooLargeError, UnsupportedStudyError

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
US = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
US_MULTI = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
BIG = 10**8


def _gradient(h: int = 20, w: int = 24, dtype: Any = np.uint16) -> np.ndarray:
    """``h × w`` pixels 0, 1, 2, ... row by row: darkest at (0, 0), brightest at (-1, -1)."""
    return np.arange(h * w).reshape(h, w).astype(dtype)


def _dicom(
    arr: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    sop: str = DX,
    frames: int | None = None,
    pixel_data: bytes | None = None,
    rows: int | None = None,
    columns: int | None = None,
    syntax: str = ExplicitVRLittleEndian,
    **attrs: Any,
) -> bytes:
    """A DICOM file (bytes) of ``arr``: ``(H, W)``, ``(H, W, 3)`` RGB, or ``(n, H, W)`` with ``frames``.

    ``pixel_data`` replaces ``arr.tobytes()``; ``arr=None`` writes no pixel data (``rows``/``columns``
    then give the image size).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    samples = 3 if arr is not None and arr.ndim == 3 and frames is None else 1
    if arr is not None:
        h, w = arr.shape[-3:-1] if samples == 3 else arr.shape[-2:]
        bits = arr.dtype.itemsize * 8
        signed = np.issubdtype(arr.dtype, np.signedinteger)
    else:
        h, w, bits, signed = rows or 16, columns or 16, 16, False
    ds.Rows, ds.Columns = rows or h, columns or w
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixel_data is not None:
        ds.PixelData = pixel_data
    elif arr is not None:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _raster(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


# --- DICOM with known pixels -------------------------------------------------------------------


def test_monochrome2_gradient_scaled_to_unit_range() -> None:
    arr = _gradient()
    study = read_dicom_image(_dicom(arr), BIG)
    assert isinstance(study, ImageStudy)
    assert study.frames.shape == (1, 20, 24)
    assert study.frames.dtype == np.float32
    assert study.frames.min() == 0.0 and study.frames.max() == 1.0
    assert study.frames[0, 0, 0] == 0.0  # darkest input
    assert study.frames[0, -1, -1] == 1.0  # brightest input
    # a linear ramp stays linear
    np.testing.assert_allclose(study.frames[0], arr / arr.max(), atol=1e-6)
    assert study.modality == "DX"
    assert study.source["format"] == "dicom"
    assert study.source["photometric"] == "MONOCHROME2"
    assert study.source["frames"] == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_body_part_is_upper_cased() -> None:
    study = read_dicom_image(_dicom(_gradient(), BodyPartExamined="chest"), BIG)
    assert study.body_part == "CHEST"
    assert read_dicom_image(_dicom(_gradient()), BIG).body_part is None


def test_monochrome1_is_inverted() -> None:
    arr = _gradient()
    mono2 = read_dicom_image(_dicom(arr), BIG).frames
    mono1 = read_dicom_image(_dicom(arr, photometric="MONOCHROME1"), BIG).frames
    assert mono1.shape == (1, 20, 24)
    assert mono1[0, -1, -1] == 0.0  # brightest input → black
    assert mono1[0, 0, 0] == 1.0  # darkest input → white
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_modality_lut_and_window_clip() -> None:
    # 16 × 16 pixels v = 0..255; rescaled value 2v - 100 in -100..410.
    # The window centre 150, width 100 (LINEAR) is black for rescaled <= 100 (v <= 100) and white
    # for rescaled > 199 (v >= 150).
    arr = _gradient(16, 16)
    data = _dicom(arr, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=150, WindowWidth=100)
    frame = read_dicom_image(data, BIG).frames[0]

    def at(v: int) -> float:
        return float(frame[v // 16, v % 16])

    for v in (0, 1, 50, 99, 100):
        assert at(v) == 0.0, v
    for v in (150, 151, 200, 255):
        assert at(v) == 1.0, v
    assert 0.4 < at(125) < 0.6  # rescaled 150, the window centre
    assert at(110) < at(125) < at(140)
    # without the window, the same pixels are a plain ramp
    plain = read_dicom_image(_dicom(arr, RescaleSlope=2, RescaleIntercept=-100), BIG).frames[0]
    assert 0.0 < float(plain[50 // 16, 50 % 16]) < 0.25


def test_signed_pixels_with_rescale() -> None:
    arr = (_gradient(16, 16).astype(np.int16) - 128).astype(np.int16)  # -128..127
    frame = read_dicom_image(_dicom(arr, RescaleSlope=1, RescaleIntercept=-1024), BIG).frames[0]
    assert frame[0, 0] == 0.0 and frame[-1, -1] == 1.0
    np.testing.assert_allclose(frame, (arr + 128) / 255.0, atol=1e-6)


def test_rgb_uses_bt601_luma() -> None:
    arr = np.zeros((16, 48, 3), dtype=np.uint8)
    arr[:, 16:32, 0] = 255  # pure red in the middle
    arr[:, 32:, 1] = 255  # pure green on the right; black on the left
    study = read_dicom_image(_dicom(arr, photometric="RGB", modality="US", sop=US), BIG)
    assert study.frames.shape == (1, 16, 48)
    black, red, green = study.frames[0, 8, 8], study.frames[0, 8, 24], study.frames[0, 8, 40]
    assert black == 0.0
    assert green == 1.0
    assert black < red < green
    assert red == pytest.approx(0.299 / 0.587, abs=1e-4)


def test_multi_frame_keeps_every_frame() -> None:
    arr = np.stack([_gradient() * (k + 1) for k in range(3)]).astype(np.uint16)
    arr[1] = arr[1][::-1]  # second frame upside down
    study = read_dicom_image(_dicom(arr, frames=3, modality="US", sop=US_MULTI), BIG)
    assert study.frames.shape == (3, 20, 24)
    assert study.source["frames"] == 3
    for k in range(3):  # each frame scaled on its own
        assert study.frames[k].min() == 0.0 and study.frames[k].max() == 1.0
    assert study.frames[0, -1, -1] == 1.0 and study.frames[1, 0, -1] == 1.0


def _region(spatial_format: int, x0: int, y0: int, x1: int, y1: int) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = spatial_format
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    return region


def test_ultrasound_cropped_to_region() -> None:
    arr = _gradient(40, 48)
    region = _region(1, 4, 2, 35, 25)
    small = _region(1, 0, 0, 5, 5)  # a 2-D region below the minimum side is not a crop candidate
    doppler = _region(3, 0, 0, 47, 39)  # spectral (format 3) regions are ignored, however large
    data = _dicom(arr, modality="US", sop=US, SequenceOfUltrasoundRegions=[small, region, doppler])
    cropped = read_dicom_image(data, BIG).frames
    full = read_dicom_image(_dicom(arr, modality="US", sop=US), BIG).frames
    assert full.shape == (1, 40, 48)
    assert cropped.shape == (1, 24, 32)  # inclusive box: rows 2..25, columns 4..35
    np.testing.assert_array_equal(cropped, full[:, 2:26, 4:36])
    assert cropped.flags["C_CONTIGUOUS"]


def test_ultrasound_without_2d_region_is_not_cropped() -> None:
    region = _region(3, 4, 2, 35, 25)
    data = _dicom(_gradient(40, 48), modality="US", sop=US, SequenceOfUltrasoundRegions=[region])
    assert read_dicom_image(data, BIG).frames.shape == (1, 40, 48)


def test_reads_from_path(tmp_path: Path) -> None:
    path = tmp_path / "image.dcm"
    path.write_bytes(_dicom(_gradient()))
    assert read_dicom_image(path, BIG).frames.shape == (1, 20, 24)
    assert read_dicom_image(str(path), BIG).frames.shape == (1, 20, 24)


# --- DICOM that cannot be screened ---------------------------------------------------------------


def test_no_pixel_data() -> None:
    with pytest.raises(InvalidStudyError, match="pixel data"):
        read_dicom_image(_dicom(None, rows=32, columns=32), BIG)


def test_truncated_pixel_data() -> None:
    arr = _gradient(32, 32, np.uint8)
    with pytest.raises(InvalidStudyError) as info:
        read_dicom_image(_dicom(arr, pixel_data=arr.tobytes()[: 32 * 32 // 2]), BIG)
    assert not isinstance(info.value, (UnsupportedStudyError, StudyTooLargeError))


def test_undecodable_jpeg2000() -> None:
    data = _dicom(
        _gradient(32, 32, np.uint8),
        syntax=JPEG2000,
        pixel_data=encapsulate([b"garbage"]),
    )
    with pytest.raises(InvalidStudyError, match="cannot be decoded"):
        read_dicom_image(data, BIG)


def test_ct_volume_is_unsupported() -> None:
    arr = np.stack([_gradient(16, 16)] * 5).astype(np.uint16)
    with pytest.raises(UnsupportedStudyError, match="3-D"):
        read_dicom_image(_dicom(arr, frames=5, modality="CT", sop=CT), BIG)


def test_single_ct_slice_is_an_image() -> None:
    study = read_dicom_image(_dicom(_gradient(16, 16), frames=1, modality="CT", sop=CT), BIG)
    assert study.modality == "CT"
    assert study.frames.shape == (1, 16, 16)


def test_ecg_sop_class_is_unsupported() -> None:
    data = _dicom(_gradient(), sop="1.2.840.10008.5.1.4.1.1.9.1.1")
    with pytest.raises(UnsupportedStudyError, match="ECG"):
        read_dicom_image(data, BIG)


def test_max_pixels() -> None:
    data = _dicom(_gradient(20, 24))
    assert read_dicom_image(data, 20 * 24).frames.shape == (1, 20, 24)  # at the limit
    with pytest.raises(StudyTooLargeError, match="limit"):
        read_dicom_image(data, 20 * 24 - 1)


def test_max_pixels_counts_every_frame() -> None:
    arr = np.stack([_gradient(16, 16)] * 3).astype(np.uint16)
    data = _dicom(arr, frames=3, modality="US", sop=US_MULTI)
    with pytest.raises(StudyTooLargeError):
        read_dicom_image(data, 16 * 16 * 2)


def test_too_small_image() -> None:
    with pytest.raises(InvalidStudyError, match="too small"):
        read_dicom_image(_dicom(np.array([[7]], dtype=np.uint16)), BIG)
    with pytest.raises(InvalidStudyError, match="too small"):
        read_dicom_image(_dicom(_gradient(MIN_SIDE - 1, 64)), BIG)
    assert read_dicom_image(_dicom(_gradient(MIN_SIDE, MIN_SIDE)), BIG).frames.shape == (1, MIN_SIDE, MIN_SIDE)


@pytest.mark.parametrize("data", [b"", b"not a dicom file at all", b"\x00" * 200, _raster(Image.new("L", (32, 32)))])
def test_not_dicom(data: bytes) -> None:
    with pytest.raises(InvalidStudyError):
        read_dicom_image(data, BIG)


def test_image_study_checks_shape() -> None:
    with pytest.raises(InvalidStudyError, match="shape"):
        ImageStudy(frames=np.zeros((32, 32), dtype=np.float32))
    with pytest.raises(InvalidStudyError, match="too small"):
        ImageStudy(frames=np.zeros((1, 8, 32), dtype=np.float32))


# --- PNG / JPEG -----------------------------------------------------------------------------------


def _check_unit_frame(study: ImageStudy, h: int, w: int) -> None:
    assert study.frames.shape == (1, h, w)
    assert study.frames.dtype == np.float32
    assert np.isfinite(study.frames).all()
    assert study.frames.min() == 0.0 and study.frames.max() == 1.0
    assert study.modality is None


def test_png_8bit_gray() -> None:
    arr = _gradient(20, 30, np.uint16) % 256
    study = read_raster_image(_raster(Image.fromarray(arr.astype(np.uint8), mode="L")), BIG)
    _check_unit_frame(study, 20, 30)
    assert study.source["format"] == "PNG"
    np.testing.assert_allclose(study.frames[0], arr / 255.0, atol=1e-6)


def test_png_16bit_gray() -> None:
    arr = (_gradient(20, 30, np.uint32) * 100).astype(np.uint16)  # 0..59900, beyond 8 bits
    image = Image.fromarray(arr)
    assert image.mode == "I;16"
    study = read_raster_image(_raster(image), BIG)
    _check_unit_frame(study, 20, 30)
    np.testing.assert_allclose(study.frames[0], arr / arr.max(), atol=1e-6)


def test_jpeg_gray() -> None:
    arr = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))
    study = read_raster_image(_raster(Image.fromarray(arr, mode="L"), "JPEG"), BIG)
    _check_unit_frame(study, 24, 40)
    assert study.source["format"] == "JPEG"
    assert study.frames[0, 12, 0] < 0.1 and study.frames[0, 12, -1] > 0.9


def test_jpeg_rgb() -> None:
    arr = np.zeros((24, 40, 3), dtype=np.uint8)
    arr[:, 20:] = 255
    study = read_raster_image(_raster(Image.fromarray(arr, mode="RGB"), "JPEG"), BIG)
    _check_unit_frame(study, 24, 40)
    assert study.frames[0, 12, 2] < 0.1 and study.frames[0, 12, -3] > 0.9


def test_palette_png() -> None:
    image = Image.new("P", (32, 20))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    px = np.zeros((20, 32), dtype=np.uint8)
    px[:, 10:20] = 1  # red
    px[:, 20:] = 2  # green
    image.putdata(px.ravel().tolist())
    study = read_raster_image(_raster(image), BIG)
    _check_unit_frame(study, 20, 32)
    black, red, green = study.frames[0, 5, 5], study.frames[0, 5, 15], study.frames[0, 5, 25]
    assert black == 0.0 and green == 1.0
    assert red == pytest.approx(0.299 / 0.587, abs=1e-4)
    assert study.source["mode"] == "RGB"


def test_rgba_png() -> None:
    arr = np.zeros((20, 32, 4), dtype=np.uint8)
    arr[..., 3] = 128  # the alpha channel does not count
    arr[:, 16:, :3] = 200
    study = read_raster_image(_raster(Image.fromarray(arr, mode="RGBA")), BIG)
    _check_unit_frame(study, 20, 32)
    assert study.frames[0, 0, 0] == 0.0 and study.frames[0, 0, -1] == 1.0


def test_raster_garbage() -> None:
    with pytest.raises(InvalidStudyError, match="PNG/JPEG"):
        read_raster_image(b"\x89PNG definitely not an image", BIG)


def test_raster_truncated() -> None:
    data = _raster(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    with pytest.raises(InvalidStudyError):
        read_raster_image(data[: len(data) // 2], BIG)


def test_raster_max_pixels() -> None:
    data = _raster(Image.new("L", (40, 30)))
    with pytest.raises(StudyTooLargeError, match="limit"):
        read_raster_image(data, 40 * 30 - 1)


def test_raster_too_small() -> None:
    with pytest.raises(InvalidStudyError, match="too small"):
        read_raster_image(_raster(Image.new("L", (1, 1))), BIG)


# --- file dispatch ---------------------------------------------------------------------------------


def test_read_image_file_dispatches_on_content() -> None:
    dcm = _dicom(_gradient(), modality="CR")
    png = _raster(Image.fromarray(_gradient(20, 24, np.uint8)))
    assert read_image_file("upload.bin", dcm, BIG).modality == "CR"  # DICM preamble
    assert read_image_file("scan.dcm", dcm, BIG).source["format"] == "dicom"
    assert read_image_file("scan.png", png, BIG).source["format"] == "PNG"
    with pytest.raises(InvalidStudyError):
        read_image_file("scan.dcm", png, BIG)  # .dcm is read as DICOM


def test_read_image_files() -> None:
    png = _raster(Image.fromarray(_gradient(20, 24, np.uint8)))
    assert read_image_files({"a.png": png}, BIG).frames.shape == (1, 20, 24)
    with pytest.raises(InvalidStudyError, match="no file"):
        read_image_files({}, BIG)
    with pytest.raises(InvalidStudyError, match="one image file"):
        read_image_files({"a.png": png, "b.png": png}, BIG)
    with pytest.raises(InvalidStudyError, match="empty"):
        read_image_files({"a.png": b""}, BIG)
    with pytest.raises(InvalidStudyError):
        read_image_files({"a.png": b"garbage"}, BIG)
    with pytest.raises(StudyTooLargeError):
        read_image_files({"a.png": png}, 10)


# --- real DICOM files ------------------------------------------------------------------------------

US_PATTERNS = ("US1_*.dcm", "OBXXXX1A*.dcm", "gdcm-US-*.dcm", "color-p?.dcm", "JPGLossless*.dcm")


@pytest.mark.data
def test_shared_dicom_files_decode(shared_data: Path) -> None:
    folder = shared_data / "dicom"
    files = sorted(folder.glob("*.dcm"))
    assert files, f"no DICOM files in {folder}"
    studies = {}
    for path in files:
        study = read_dicom_image(path, 10**8)
        frames = study.frames
        assert frames.ndim == 3 and frames.shape[0] >= 1, path.name
        assert min(frames.shape[1:]) >= MIN_SIDE, path.name
        assert np.isfinite(frames).all(), path.name
        assert frames.min() >= 0.0 and frames.max() <= 1.0, path.name
        assert frames.max() > frames.min(), path.name  # not a blank image
        studies[path.name] = study
    us = {p.name for pattern in US_PATTERNS for p in folder.glob(pattern)}
    assert us
    for name in us:
        assert studies[name].modality == "US", name
    for name in ("cr_chest_rsna_sample.dcm", "RG1_J2KI.dcm"):
        assert studies[name].body_part == "CHEST", name
        assert studies[name].modality == "CR", name
    assert studies["OBXXXX1A_2frame.dcm"].frames.shape[0] == 2
    assert studies["OBXXXX1A.dcm"].frames.shape[0] == 1
    # the same image in other transfer syntaxes decodes to the same frames
    np.testing.assert_allclose(studies["OBXXXX1A_rle.dcm"].frames, studies["OBXXXX1A.dcm"].frames, atol=1e-6)
    np.testing.assert_allclose(studies["OBXXXX1A_expb.dcm"].frames, studies["OBXXXX1A.dcm"].frames, atol=1e-6)
    np.testing.assert_allclose(studies["US1_J2KR.dcm"].frames, studies["US1_UNCR.dcm"].frames, atol=1e-6)


@pytest.mark.data
def test_shared_ultrasound_is_cropped_to_its_region(shared_data: Path) -> None:
    import pydicom

    path = shared_data / "dicom" / "gdcm-US-ALOKA-16.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert "SequenceOfUltrasoundRegions" in ds
    frames = read_dicom_image(path, 10**8).frames
    assert frames.shape[1] < ds.Rows and frames.shape[2] < ds.Columns


@pytest.mark.data
def test_pydicom_test_files(shared_data: Path) -> None:
    study = read_dicom_image(get_testdata_file("CT_small.dcm"), 10**8)
    assert study.modality == "CT"
    assert study.frames.shape[0] == 1
    assert np.isfinite(study.frames).all()
    with pytest.raises(UnsupportedStudyError):
        read_dicom_image(get_testdata_file("waveform_ecg.dcm"), 10**8)
