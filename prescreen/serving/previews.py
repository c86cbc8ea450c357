"""Preview PNGs of a series for the reading pages: a DICOM image in its window, or an ECG drawn on
the standard paper grid.

* Images: the first frame, through the Modality LUT and the VOI LUT or window the DICOM carries
  (pydicom's ``apply_voi_lut``), MONOCHROME1 inverted, colour kept; at most ``MAX_SIDE`` pixels a side.
  Only the first frame of a multi-frame object is decoded.
* ECGs (a WFDB record of an upload, or a DICOM ECG waveform): the first 10 s of each lead (leads I
  and II when there are more than three) at 25 mm/s and 10 mm/mV on a pink grid of 1 mm minor and
  5 mm major lines, with a 1 mV calibration pulse; drawn with matplotlib's Agg canvas (no pyplot,
  so it is safe in the server's threads).

Nothing here logs: the files are patient data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from prescreen.datasets.ecg import EcgRecord
from prescreen.datasets.files import ECG_SOP_CLASSES, is_dicom
from prescreen.datasets.images import open_raster
from prescreen.datasets.readers import read_dicom_ecg, read_ecg_files
from prescreen.errors import InvalidStudyError, PrescreenError, StudyTooLargeError

MAX_SIDE = 1024
ECG_SECONDS = 10.0
MM_PER_S = 25.0
MM_PER_MV = 10.0
DPI = 130
GRID_MINOR = "#f6c9c9"
GRID_MAJOR = "#e59a9a"
PAPER = "#fff7f7"
TRACE = "#1a1a1a"
BEAT_ALERT = "#c0392b"


@dataclass(frozen=True)
class SeriesFile:
    """One stored file of a series: its upload name (``None`` for DICOM by UID) and bytes."""

    name: str | None
    data: bytes


def series_png(files: Sequence[SeriesFile], *, max_pixels: int) -> bytes:
    """The preview of a series: an ECG trace or the first image.

    Args:
        files: the series' files, in a stable order (the first image is the one shown).
        max_pixels: refuse images with more pixels in one frame than this.

    Raises:
        InvalidStudyError: nothing that can be drawn (the message says why; it quotes no values).
        StudyTooLargeError: an image over ``max_pixels``.
    """
    if not files:
        raise InvalidStudyError("the series has no files")
    for f in files:
        if is_dicom(f.data) and _sop_class(f.data) in ECG_SOP_CLASSES:
            return ecg_png(read_dicom_ecg(f.data))
    if any((f.name or "").lower().endswith(".hea") for f in files):
        named = {f.name: f.data for f in files if f.name}
        return ecg_png(read_ecg_files(named, 0.0, ECG_SECONDS), offset_s=0.0)  # decodes only what is drawn
    first = files[0]
    if is_dicom(first.data):
        return dicom_image_png(first.data, max_pixels=max_pixels)
    return raster_png(first.data, max_pixels=max_pixels)


def _sop_class(data: bytes) -> str:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, EOFError, OSError, ValueError):
        return ""
    return str(ds.get("SOPClassUID", ""))


# --- images --------------------------------------------------------------------------------


def dicom_image_png(data: bytes, *, max_pixels: int, max_side: int = MAX_SIDE) -> bytes:
    """The first frame of a DICOM image as an 8-bit PNG, windowed as the DICOM says."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise InvalidStudyError("not a readable DICOM file") from exc
    if "PixelData" not in ds:
        raise InvalidStudyError("the DICOM object has no pixel data")
    try:
        return _png(_display_frame(ds, max_pixels), max_side)
    except PrescreenError:
        raise
    except Exception as exc:  # decoders and LUTs raise many types; their text may quote values
        raise InvalidStudyError(f"the image cannot be decoded for display ({type(exc).__name__})") from exc


def _display_frame(ds: Any, max_pixels: int) -> npt.NDArray[np.uint8]:
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise StudyTooLargeError(f"the image has {rows * cols} pixels; the limit is {max_pixels}")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = np.asarray(pixel_array(ds, index=0) if n_frames > 1 else ds.pixel_array)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(arr, ds), dtype=np.float32)
        return _to_uint8(rgb / (65535.0 if rgb.max() > 255 else 255.0))
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # pydicom gives YBR as RGB
        rgb = arr.astype(np.float32)
        return _to_uint8(rgb / float(2 ** int(ds.get("BitsStored", 8)) - 1))
    gray = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    gray = np.asarray(apply_voi_lut(gray, ds, index=0), dtype=np.float64)
    unit = _unit_range(gray)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return _to_uint8(unit)


def _unit_range(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if not np.isfinite(x).all():
        raise InvalidStudyError("pixel values are not finite after the Modality/VOI LUT")
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _to_uint8(unit: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    return np.asarray(np.clip(np.rint(unit * 255.0), 0, 255), dtype=np.uint8)


def _png(pixels: npt.NDArray[np.uint8], max_side: int) -> bytes:
    image = Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def raster_png(data: bytes, *, max_pixels: int, max_side: int = MAX_SIDE) -> bytes:
    """A PNG/JPEG upload re-encoded as a PNG of at most ``max_side`` pixels a side."""
    image = open_raster(data, max_pixels)
    image = image.convert("RGB" if image.mode not in ("L", "I;16", "I") else "L")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def placeholder_png(message: str, width: int = 640, height: int = 200) -> bytes:
    """A grey PNG that says why there is no preview (shown in place of the image)."""
    image = Image.new("RGB", (width, height), "#eef0f3")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width - 1, height - 1), outline="#c5cad3")
    lines = ["No preview", *_wrap(message, 80)]
    y = height // 2 - 9 * len(lines)
    for i, line in enumerate(lines):
        draw.text((20, y + 18 * i), line, fill="#1f2937" if i == 0 else "#4b5563")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line][:4]


# --- ECG -----------------------------------------------------------------------------------


def pick_leads(names: Sequence[str]) -> list[int]:
    """Every lead of a record with up to three; else leads I and II (or the first two)."""
    if len(names) <= 3:
        return list(range(len(names)))
    upper = [n.strip().upper() for n in names]
    wanted = [upper.index(n) for n in ("I", "II") if n in upper]
    return wanted if len(wanted) == 2 else [0, 1]


def ecg_png(
    record: EcgRecord,
    *,
    seconds: float = ECG_SECONDS,
    dpi: int = DPI,
    offset_s: float | None = None,
    beats: Sequence[tuple[float, str]] = (),
) -> bytes:
    """The first ``seconds`` of the record on ECG paper (25 mm/s, 10 mm/mV) as a PNG.

    Args:
        record: the record, or the window of one that is drawn (an event strip).
        seconds: how much is drawn.
        dpi: resolution.
        offset_s: where the window starts in the whole recording (an event strip's caption says it).
        beats: beat labels drawn above the trace: (seconds from the window's start, class); classes
            other than ``N`` stand out in red.
    """
    leads = pick_leads(record.lead_names)
    n = min(record.n_samples, max(1, round(seconds * record.fs)))
    left, right, caption, top = 15.0, 5.0, 10.0, 10.0 if beats else 5.0  # mm (multiples of 5)
    width = left + seconds * MM_PER_S + right
    rows: list[tuple[str, npt.NDArray[np.float64], float]] = []  # (name, mm, row height)
    for index in leads:
        mv = record.signal[index, :n].astype(np.float64)
        mv = mv - float(np.median(mv))
        lo, hi = (float(np.percentile(mv, 0.1)), float(np.percentile(mv, 99.9))) if mv.size else (0.0, 0.0)
        span = (hi - lo) * MM_PER_MV
        height = min(60.0, max(25.0, 5.0 * math.ceil((span + 10.0) / 5.0)))
        rows.append((record.lead_names[index], mv * MM_PER_MV, height))
    height_mm = top + sum(h for _, _, h in rows) + caption
    height_mm = 5.0 * math.ceil(height_mm / 5.0)

    fig = Figure(figsize=(width / 25.4, height_mm / 25.4), dpi=dpi, facecolor=PAPER)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height_mm)
    ax.set_facecolor(PAPER)
    ax.set_axis_off()
    _grid(ax, width, height_mm)

    y_top = height_mm - top
    shown = n / record.fs
    for at, label in beats:
        if 0.0 <= at <= shown:
            colour = TRACE if label == "N" else BEAT_ALERT
            x = left + at * MM_PER_S
            ax.text(x, height_mm - 2.0, label, fontsize=8, fontweight="bold", ha="center", va="top", color=colour)
    t = np.arange(n, dtype=np.float64) / record.fs * MM_PER_S + left
    for name, trace_mm, row_h in rows:
        lo = float(np.percentile(trace_mm, 0.1)) if trace_mm.size else 0.0
        hi = float(np.percentile(trace_mm, 99.9)) if trace_mm.size else 0.0
        baseline = y_top - row_h / 2 - (hi + lo) / 2
        ax.plot(t, trace_mm + baseline, color=TRACE, linewidth=0.8, solid_joinstyle="round")
        pulse_x = [3.0, 5.0, 5.0, 10.0, 10.0, 12.0]
        pulse_y = [baseline, baseline, baseline + MM_PER_MV, baseline + MM_PER_MV, baseline, baseline]
        ax.plot(pulse_x, pulse_y, color=TRACE, linewidth=0.8)
        ax.text(left + 1.0, y_top - 1.5, name, fontsize=9, fontweight="bold", va="top", ha="left", color=TRACE)
        y_top -= row_h
    where = (
        f"first {shown:.1f} s of {record.duration_s:.1f} s"
        if offset_s is None
        else f"{shown:.1f} s from {clock(offset_s)}"
    )
    note = f"{MM_PER_S:g} mm/s · {MM_PER_MV:g} mm/mV · {record.fs:g} Hz · {where} · calibration pulse 1 mV"
    ax.text(left, 2.5, note, fontsize=7.5, color="#6b4b4b", va="bottom", ha="left")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi, facecolor=PAPER)
    return out.getvalue()


def clock(seconds: float) -> str:
    """Elapsed time of a recording as ``H:MM:SS``."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _grid(ax: Any, width: float, height: float) -> None:
    minor_x = [x for x in np.arange(0.0, width + 0.01, 1.0) if round(x) % 5]
    minor_y = [y for y in np.arange(0.0, height + 0.01, 1.0) if round(y) % 5]
    major_x = np.arange(0.0, width + 0.01, 5.0)
    major_y = np.arange(0.0, height + 0.01, 5.0)
    minor = [[(x, 0.0), (x, height)] for x in minor_x] + [[(0.0, y), (width, y)] for y in minor_y]
    major = [[(x, 0.0), (x, height)] for x in major_x] + [[(0.0, y), (width, y)] for y in major_y]
    ax.add_collection(LineCollection(minor, colors=GRID_MINOR, linewidths=0.4, zorder=0))
    ax.add_collection(LineCollection(major, colors=GRID_MAJOR, linewidths=0.8, zorder=0))
