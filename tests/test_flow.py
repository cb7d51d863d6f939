"""Carried frames follow the picture: optical flow moves each person between detections.

Real people (the repo's photos, eight on one court-like frame) and a camera that pans: the next frame is the
same picture moved by a known shift and zoom, so where every person went is known to the pixel.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import read
from posefleet.config import FlowConfig, load_pipeline_config
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.flow import _row_median, camera_motion, flow_frame, flow_scale, follow
from posefleet.pipeline.frames import LocalModels

PHOTOS = ["astronaut.png", "grace.jpg", "camera.png", "000000000785.jpg"]
PAN = np.array([23.0, -9.0])  # px a frame
ZOOM = 1.04


@pytest.fixture(scope="module")
def court() -> np.ndarray:
    """Two rows of the four photos (the second mirrored), 240 px tall each, on a wider grey frame."""
    panels = [read(n) for n in PHOTOS]
    row = np.concatenate([cv2.resize(p, (round(p.shape[1] * 240 / p.shape[0]), 240)) for p in panels], axis=1)
    people = np.concatenate([row, row[:, ::-1]], axis=0)
    frame = np.full((people.shape[0] + 120, people.shape[1] + 120, 3), 90, np.uint8)
    frame[60:-60, 60:-60] = people
    return frame


def panned(image: np.ndarray, shift: np.ndarray, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The frame a camera sees after panning by ``shift`` and zooming by ``zoom`` about the centre, and the
    2x3 map from old to new pixels."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, zoom)
    m[:, 2] += shift
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), m


def moved_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    corners = np.stack([boxes[:, :2], boxes[:, 2:]], 1)  # [N, 2, 2]
    return (corners @ m[:, :2].T + m[:, 2]).reshape(-1, 4)


def test_people_are_followed_to_where_the_camera_moved_them(court: np.ndarray, engine: LocalModels) -> None:
    """The detector's people on a real frame, followed into the panned and zoomed frame: every box lands
    within a few pixels of where the pan put it, and so do its keypoints."""
    pipeline = Pipeline(load_pipeline_config("balanced", overrides={"detect_every": 1}), engine)
    people = pipeline.process("court", court, 0).people
    assert len(people) >= 7
    boxes = np.array([p.box for p in people], np.float32)
    kps = np.array([p.keypoints for p in people], np.float32)
    nxt, m = panned(court, PAN, ZOOM)
    cfg = FlowConfig()
    s = flow_scale(float((boxes[:, 3] - boxes[:, 1]).min()), cfg)
    new_boxes, new_kps, ok = follow(flow_frame(court, 1.0, s), flow_frame(nxt, 1.0, s), boxes, kps, cfg, 0.3)
    assert ok.sum() >= len(people) - 1
    truth = moved_boxes(boxes, m)
    err = np.abs(new_boxes - truth)[ok]
    assert np.median(err) < 2.0 and err.max() < 8.0, err
    seen = (kps[:, :, 2] >= 0.3) & ok[:, None]
    kp_truth = kps[:, :, :2] @ m[:, :2].T + m[:, 2]
    kp_err = np.linalg.norm(new_kps[:, :, :2] - kp_truth, axis=2)[seen]
    assert np.median(kp_err) < 2.0, kp_err
    # unmoved, the boxes would be off by the pan: the check above can tell
    assert np.median(np.abs(boxes - truth)) > 8.0


def test_a_carried_frame_follows_a_panning_camera(court: np.ndarray, engine: LocalModels) -> None:
    """Detect every 2 (the default): frame 1 is carried. With the flow its people are where the pan took
    them; the tracker, measured by the flow, then predicts the pan for the next detection frame."""
    frames = [court] + [panned(court, PAN * k)[0] for k in (1, 2)]

    def run(flow: bool) -> tuple[list, np.ndarray]:
        """The three frames' results, and where the tracker expects its people on the third, after the second."""
        flow_cfg = {"enabled": flow, "camera": False}  # people followed; the camera's own motion: the next test
        cfg = load_pipeline_config("balanced", overrides={"detect_every": 2, "flow": flow_cfg})
        pipeline = Pipeline(cfg, engine)
        out = [pipeline.process("pan", f, i) for i, f in enumerate(frames[:2])]
        expected = pipeline.streams["pan"].tracker.predicted_boxes(0)
        return [*out, pipeline.process("pan", frames[2], 2)], expected

    (first, carried, third), expected = run(True)
    assert not carried.detected and third.detected
    before = {p.track_id: np.array(p.box) for p in first.people}
    after = {p.track_id: np.array(p.box) for p in carried.people}
    assert len(after) >= len(before) - 1
    shifts = np.array([after[t] - before[t] for t in after])
    assert np.allclose(np.median(shifts, axis=0), np.r_[PAN, PAN], atol=2.0), shifts
    kp_shift = [np.median(np.array(p.keypoints)[:, :2] - np.array(q.keypoints)[:, :2], axis=0)
                for p in carried.people for q in first.people if p.track_id == q.track_id]  # fmt: skip
    assert np.allclose(np.median(kp_shift, axis=0), PAN, atol=2.0)
    # measured by the flow, the tracker starts to learn the pan: it expects its people further along on frame 2
    # (one measurement moves a new track's velocity a little way; a steady pan teaches it over a few frames)
    carried_boxes = np.array([p.box for p in carried.people])
    ahead = np.median(expected - carried_boxes, axis=0)
    assert ahead[0] > 1.0 and ahead[1] < -0.3, ahead
    assert {p.track_id for p in third.people} >= set(after)  # the detection frame keeps their ids

    # without the flow the carried frame only extrapolates: a new track has no velocity, so nobody moves
    (_, still, _), guess = run(False)
    unmoved = np.array([np.array(p.box) - before[p.track_id] for p in still.people])
    assert np.abs(np.median(unmoved, axis=0)).max() < 2.0
    assert np.abs(np.median(guess - np.array([p.box for p in still.people]), axis=0)).max() < 0.1


def test_the_cameras_own_motion_is_measured(court: np.ndarray) -> None:
    """Pan and zoom measured from the picture's corners, at the small scales the flow runs at; none where
    every corner is covered by people."""
    nxt, m = panned(court, PAN, ZOOM)
    cfg = FlowConfig()
    for scale in (0.13, 0.5):
        est = camera_motion(flow_frame(court, 1.0, scale), flow_frame(nxt, 1.0, scale), np.zeros((0, 4)), cfg)
        assert est is not None and np.allclose(est[:, :2], m[:, :2], atol=0.005)
        assert np.allclose(est[:, 2], m[:, 2], atol=0.5), (est, m)
    everyone = np.array([[0, 0, court.shape[1], court.shape[0]]], np.float32)
    assert camera_motion(flow_frame(court, 1.0, 0.5), flow_frame(nxt, 1.0, 0.5), everyone, cfg) is None


def test_ids_hold_through_a_fast_pan(court: np.ndarray, engine: LocalModels) -> None:
    """Detection every frame while the camera pans half a person's width and more a frame: the tracks move
    with the camera before they are matched, so everyone keeps their id; without that, the predictions no
    longer overlap the people and ids are lost."""
    frames = [court, panned(court, np.array([120.0, 0.0]))[0]]

    def ids(camera: bool) -> list[set[int]]:
        cfg = load_pipeline_config("balanced", overrides={"detect_every": 1, "flow": {"camera": camera}})
        pipeline = Pipeline(cfg, engine)
        return [{p.track_id for p in pipeline.process("pan", f, i).people} for i, f in enumerate(frames)]

    first, panned_ids = ids(True)
    assert len(first) >= 7 and panned_ids == first
    first, panned_ids = ids(False)
    assert len(panned_ids & first) <= len(first) // 2


def test_row_median_is_numpys_median_of_the_valid() -> None:
    rng = np.random.default_rng(3)
    values, valid = rng.normal(size=(40, 11, 2)), rng.random((40, 11)) < 0.5
    got = _row_median(values, valid)
    for v, ok, g in zip(values, valid, got, strict=True):
        assert np.allclose(g, np.median(v[ok], axis=0) if ok.any() else 0.0)
