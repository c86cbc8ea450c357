"""An exported model at inference time: the ONNX Runtime session plus its card."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from prescreen.config import get_settings
from prescreen.domain import Finding, OperatingPoint
from prescreen.errors import ModelError
from prescreen.models.calibration import apply_temperature
from prescreen.models.card import ModelCard
from prescreen.models.task import Progress, Task, get_task

FloatArray = npt.NDArray[np.float32]
INPUT_NAME = "signal"
OUTPUT_NAME = "probabilities"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


INTEGER_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})


def int8_weights_only(path: Path) -> bool:
    """Whether the file is an INT8-weights model (``prescreen.training.quantize``): it dequantizes
    constant weights and quantizes nothing at run time (no ``QuantizeLinear``, no ``QLinear*`` or
    integer operators), so folding its ``DequantizeLinear`` nodes into FP32 weights loses nothing."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx and protobuf raise their own classes; ONNX Runtime will say what is wrong
        return False
    constants = {i.name for i in model.graph.initializer}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    integer = any(n.op_type in INTEGER_OPS or n.op_type.startswith("QLinear") for n in model.graph.node)
    return bool(dequantize) and not integer and all(i in constants for n in dequantize for i in n.input if i)


def session_options(path: Path, threads: int | None = None) -> ort.SessionOptions:
    """The service's ONNX Runtime options for the file at ``path``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or get_settings().onnx_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # no busy-waiting: on a 2-core machine spinning ORT threads starve the server's own threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if int8_weights_only(path):
        # without QDQ handling, ONNX Runtime folds each DequantizeLinear of a constant weight into an
        # FP32 weight at load and runs the FP32 kernels; a statically quantized model keeps its integer kernels
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return opts


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """Load an ONNX file into ONNX Runtime (CPU).

    Raises:
        ModelError: the file is missing or ONNX Runtime cannot load it.
    """
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    opts = session_options(path, threads)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise ModelError(f"model file {path} cannot be loaded by ONNX Runtime: {exc}") from exc


class OnnxModel:
    """An ONNX model with its card: signals → class probabilities → screening result.

    Args:
        onnx_path: the model file.
        card: its card (classes, threshold, input spec).
        verify: check the file's SHA-256 against the card.

    Raises:
        ModelError: a missing, corrupt or mismatching model file.
    """

    def __init__(self, onnx_path: Path, card: ModelCard, verify: bool = True) -> None:
        if not onnx_path.is_file():
            raise ModelError(f"model file {onnx_path} not found")
        if verify and card.onnx.get("sha256") and sha256_file(onnx_path) != card.onnx["sha256"]:
            raise ModelError(f"model file {onnx_path} does not match its card (SHA-256 differs): corrupt or replaced")
        self.path = onnx_path
        self.card = card
        self.task: Task = get_task(card.task)
        self.session = make_session(onnx_path)
        self.thresholds = card.thresholds()

    @classmethod
    def from_folder(cls, folder: Path) -> OnnxModel:
        return cls(folder / "model.onnx", ModelCard.load(folder / "card.json"))

    def predict_windows(self, windows: FloatArray) -> FloatArray:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(windows, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32)

    def predict_signals(self, signals: list[FloatArray], batch: int = 256) -> FloatArray:
        """Probabilities per preprocessed signal (windows averaged), calibrated by the card's
        temperature when it has one."""
        probs = self.task.predict_by_windows(signals, self.predict_windows, batch)
        if self.card.calibration is not None:
            probs = apply_temperature(probs, self.card.calibration.temperature)
        return probs

    def screen_signal(self, signal: FloatArray) -> Finding:
        """Screen one preprocessed signal: class probabilities, flag score, flag and label."""
        probs = self.predict_signals([signal])[0]
        score = float(self.task.flag_scores(probs[None, :])[0])
        points = {name: OperatingPoint(t, score >= t) for name, t in self.thresholds.items()}
        flagged = points["balanced"].flagged
        return Finding(
            task=self.task.name,
            model_name=self.card.name,
            model_version=self.card.version,
            flagged=flagged,
            label=self.task.label_for(probs, flagged),
            score=round(score, 6),
            probabilities={c: round(float(p), 6) for c, p in zip(self.task.classes, probs, strict=True)},
            threshold=self.thresholds["balanced"],
            operating_points=points,
        )

    def analyse_record(self, study: Any, progress: Progress | None = None) -> Finding:
        """Screen one whole record with the task's analyser (``holter``): every beat through the
        network, then the record's summary, flag score and label.

        Raises:
            ModelError: the task has no record analyser.
        """
        if self.task.analyse is None:
            raise ModelError(f"task {self.task.name!r} screens windows, not whole records")
        analysis = self.task.analyse(study, self.predict_windows, progress)
        points = {name: OperatingPoint(t, analysis.score >= t) for name, t in self.thresholds.items()}
        return Finding(
            task=self.task.name,
            model_name=self.card.name,
            model_version=self.card.version,
            flagged=points["balanced"].flagged,
            label=analysis.label,
            score=round(float(analysis.score), 6),
            probabilities={c: round(float(p), 6) for c, p in analysis.probabilities.items()},
            threshold=self.thresholds["balanced"],
            operating_points=points,
            summary=analysis.summary,
        )

    def screen_files(self, files: Mapping[str, bytes]) -> Finding:
        """Read and screen one study sent as files: preprocessed and screened window by window, or,
        for a task that judges whole records (``holter``), analysed as a record (raises
        ``InvalidStudyError``)."""
        study = self.task.read_files(files)
        if self.task.analyse is not None:
            return self.analyse_record(study)
        return self.screen_signal(self.task.preprocess(study))
