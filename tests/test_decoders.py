"""Decoders for models users bring (RTMDet, YOLOX, RTMPose), run through ONNX Runtime on tiny graphs
built here with the same inputs and outputs as the real exports. These test decoding, not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from posefleet.config import DetectorConfig, PoseConfig
from posefleet.pipeline.detector import Detector
from posefleet.pipeline.pose import PoseEstimator


def constant_model(path: Path, input_shape: list, outputs: dict[str, np.ndarray], batch_follows_input: bool) -> str:
    """A graph whose outputs are fixed tensors (broadcast over the input's batch when asked)."""
    nodes, inits, outs = [], [], []
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)
    inits.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"))
    nodes.append(helper.make_node("ReduceSum", ["input", "axes"], ["sum"], keepdims=1))
    nodes.append(helper.make_node("Mul", ["sum", "zero"], ["zeros"]))
    inits.append(numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"))
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value, f"{name}_const"))
        if value.dtype == np.float32 and batch_follows_input:
            # [N, 1, 1] zeros broadcast against [1, ...] constant -> [N, ...]
            nodes.append(helper.make_node("Reshape", ["zeros", f"{name}_shape"], [f"{name}_z"]))
            inits.append(numpy_helper.from_array(np.array([-1] + [1] * (value.ndim - 1), np.int64), f"{name}_shape"))
            nodes.append(helper.make_node("Add", [f"{name}_z", f"{name}_const"], [name]))
            shape = ["N", *value.shape[1:]]
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_const"], [name]))
            shape = list(value.shape)
        elem = TensorProto.FLOAT if value.dtype == np.float32 else TensorProto.INT64
        outs.append(helper.make_tensor_value_info(name, elem, shape))
    graph = helper.make_graph(nodes, "tiny", [x], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def test_rtmdet_end2end_keeps_persons_and_maps_to_image(tmp_path: Path) -> None:
    dets = np.array([[[10, 5, 30, 25, 0.9], [0, 0, 10, 10, 0.8], [40, 4, 60, 30, 0.05]]], np.float32)
    labels = np.array([[0, 2, 0]], np.int64)
    path = constant_model(tmp_path / "rtmdet.onnx", [1, 3, 64, 64], {"dets": dets, "labels": labels}, False)
    cfg = DetectorConfig(decoder="rtmdet", model=path, input_size=64, score_threshold=0.3)
    frame = np.full((64, 128, 3), 100, np.uint8)  # scale 0.5, image at the top-left of the input
    out = Detector(cfg)(frame)
    assert len(out) == 1  # label 2 is not a person, 0.05 is under the threshold
    np.testing.assert_allclose(out.boxes[0], [20, 10, 60, 50], atol=1e-4)
    assert out.scores[0] == pytest.approx(0.9)


def test_rtmdet_input_is_normalised_bgr_nchw(tmp_path: Path) -> None:
    path = constant_model(tmp_path / "d.onnx", [1, 3, 64, 64], {"dets": np.zeros((1, 1, 5), np.float32),
                          "labels": np.zeros((1, 1), np.int64)}, False)  # fmt: skip
    det = Detector(DetectorConfig(decoder="rtmdet", model=path, input_size=64))
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 0] = 103  # blue, close to RTMDet's blue mean
    tensors, _ = det.decoder.prepare(frame)
    assert tensors[0].shape == (1, 3, 64, 64) and tensors[0].dtype == np.float32
    assert abs(tensors[0][0, 0].mean()) < 0.05  # (103 - 103.53) / 57.375


def test_yolox_raw_grid_decoding(tmp_path: Path) -> None:
    anchors = 8 * 8 + 4 * 4 + 2 * 2  # strides 8, 16, 32 on a 64 px input
    raw = np.zeros((1, anchors, 6), np.float32)
    raw[0, 2 * 8 + 3] = [0.5, 0.5, np.log(2), np.log(4), 0.9, 0.8]  # stride 8, cell x=3 y=2
    path = constant_model(tmp_path / "yolox.onnx", [1, 3, 64, 64], {"output": raw}, False)
    cfg = DetectorConfig(decoder="yolox", model=path, input_size=64, score_threshold=0.3)
    out = Detector(cfg)(np.zeros((128, 128, 3), np.uint8))  # scale 0.5
    assert len(out) == 1
    # centre (3.5*8, 2.5*8) = (28, 20), size (16, 32) in input px -> x2 in image px
    np.testing.assert_allclose(out.boxes[0], [40, 8, 72, 72], atol=1e-3)
    assert out.scores[0] == pytest.approx(0.72, abs=1e-5)


def test_rtmpose_simcc_decoding_batched(tmp_path: Path) -> None:
    w, h, ratio = 192, 256, 2
    sx = np.zeros((1, 17, w * ratio), np.float32)
    sy = np.zeros((1, 17, h * ratio), np.float32)
    for k in range(17):
        sx[0, k, ratio * (10 + 5 * k)] = 0.9
        sy[0, k, ratio * (20 + 10 * k)] = 0.7
    path = constant_model(tmp_path / "rtmpose.onnx", ["N", 3, h, w], {"simcc_x": sx, "simcc_y": sy}, True)
    cfg = PoseConfig(decoder="rtmpose", model=path, input_width=w, input_height=h, crop_scale=1.25)
    pose = PoseEstimator(cfg)
    frame = np.zeros((400, 400, 3), np.uint8)
    boxes = np.array([[0, 0, 192, 256], [100, 50, 196, 178]], np.float32)
    crops, _ = pose.decoder.prepare(frame, boxes)
    assert crops.shape == (2, h, w, 3) and crops.dtype == np.uint8  # uint8 travels; normalised at the model
    batch = pose.decoder.normalise(crops)
    assert batch.shape == (2, 3, h, w) and batch.flags["C_CONTIGUOUS"]
    kps, scores = pose(frame, boxes)
    assert kps.shape == (2, 17, 3)
    np.testing.assert_allclose(kps[:, :, 2], 0.7, atol=1e-6)  # min of the two maxima
    crop_x = 10 + 5 * np.arange(17)
    crop_y = 20 + 10 * np.arange(17)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        s = w / ((x2 - x1) * 1.25)  # boxes have the model's 3:4 aspect already
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        np.testing.assert_allclose(kps[i, :, 0], (crop_x - w / 2) / s + cx, atol=1e-3)
        np.testing.assert_allclose(kps[i, :, 1], (crop_y - h / 2) / s + cy, atol=1e-3)
    assert scores == pytest.approx([0.7, 0.7])
