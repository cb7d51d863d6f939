"""Model variants: INT8 (static, calibrated on real frames) and FP16, written next to each other.

``posefleet optimize --out models/optimized --calibration clip.mp4`` writes, for the detector and
the pose model of the configured pipeline, ``<name>.int8.onnx`` (ONNX Runtime static QDQ
quantisation, per-channel int8 weights, calibrated on letterboxed frames and real person crops)
and ``<name>.fp16.onnx`` (float16 weights and compute, float32 inputs and outputs). Point a
config at them (``detector.model`` / ``pose.model``) after ``posefleet bench`` showed they pay off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from posefleet import models
from posefleet.config import PipelineConfig
from posefleet.pipeline.frames import LocalModels
from posefleet.sources import open_source

log = logging.getLogger("posefleet.optimize")


class _Reader(CalibrationDataReader):
    def __init__(self, input_name: str, tensors: list[np.ndarray]):
        self.input_name = input_name
        self.items: Iterator[np.ndarray] = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self.items, None)
        return None if item is None else {self.input_name: item}


def calibration_tensors(engine: LocalModels, source: str, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Detector inputs and single pose crops (normalised: what the pose model takes) from real frames of
    ``source``; no crops when the config has no pose model."""
    det_inputs, crops = [], []
    step = max(1, (open_source(source).count or frames) // frames)
    for i, frame in enumerate(open_source(source)):
        if i % step:
            continue
        tensors, _ = engine.detector.decoder.prepare(frame.image)
        det_inputs += tensors
        dets = engine.detector(frame.image)
        if len(dets) and engine.pose is not None:
            cut, _ = engine.pose.decoder.prepare(frame.image, dets.boxes, dets.keypoints)
            batch = engine.pose.decoder.normalise(cut)
            crops += [batch[j : j + 1] for j in range(len(batch))]
        if len(det_inputs) >= frames:
            break
    return det_inputs[:frames], crops[: 4 * frames]


def to_int8(src: Path, dst: Path, input_name: str, tensors: list[np.ndarray], op_types: list[str] | None) -> Path:
    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception as exc:  # shape inference can fail on exotic graphs; quantise the original then
        log.warning("pre-processing %s failed (%s); quantising it as is", src.name, exc)
        pre = src
    quantize_static(
        str(pre), str(dst), _Reader(input_name, tensors), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=op_types,
    )  # fmt: skip
    if pre != src:
        pre.unlink(missing_ok=True)
    return dst


def to_fp16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def check(path: Path, input_name: str, sample: np.ndarray) -> None:
    """A written variant must load and run in ONNX Runtime, or it is not kept."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.run(None, {input_name: sample})


def optimize(cfg: PipelineConfig, out_dir: Path, source: str, frames: int = 48) -> dict[str, dict[str, str]]:
    """Write INT8 and FP16 variants of the detector and pose models; returns name -> {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = LocalModels(cfg)
    det_inputs, crops = calibration_tensors(engine, source, frames)
    if engine.pose is not None and not crops:
        raise ValueError(f"{source}: no person found in the calibration frames")
    written: dict[str, dict[str, str]] = {}
    jobs = [("detector", cfg.detector.model, engine.detector.model.input_name, det_inputs, ["Conv"])]
    if engine.pose is not None:
        jobs.append(("pose", cfg.pose.model, engine.pose.model.input_name, crops, None))
    for role, name, input_name, tensors, ops in jobs:
        src, _ = models.resolve(name)
        stem = src.stem
        written[role] = {}
        for kind in ("int8", "fp16"):
            dst = out_dir / f"{stem}.{kind}.onnx"
            try:
                made = to_int8(src, dst, input_name, tensors, ops) if kind == "int8" else to_fp16(src, dst)
                check(made, input_name, tensors[0])
                written[role][kind] = str(made)
            except Exception as exc:  # report, keep going: a variant is optional
                log.warning("%s %s variant failed: %s", role, kind, str(exc).splitlines()[0][:300])
                dst.unlink(missing_ok=True)
    return written
