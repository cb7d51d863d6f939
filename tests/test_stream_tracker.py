"""Per-stream schedule: detect every N, carry boxes between, force detection on a lost track, order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import video_frames
from posefleet.config import PipelineConfig
from posefleet.errors import FrameOrderError
from posefleet.pipeline.detector import Detections
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels
from posefleet.pipeline.tracker import StreamState


def body_keypoints(b: np.ndarray, score: float = 0.9) -> np.ndarray:
    """17 keypoints spread over a box (what a pose model returns for a standing person)."""
    xs = np.linspace(b[0] + 5, b[2] - 5, 17)
    ys = np.linspace(b[1] + 5, b[3] - 5, 17)
    return np.column_stack([xs, ys, np.full(17, score)]).astype(np.float32)


def run_frame(st: StreamState, index: int, boxes: list[list[float]], pose_score: float = 0.9):
    """One frame of a scene whose people stand at ``boxes``; pose finds them where they truly are."""
    truth = np.array(boxes, np.float32).reshape(-1, 4)
    plan = st.start(st.plan(index))
    if plan.detect:
        plan = st.associate(plan, Detections(truth, np.full(len(truth), 0.8, np.float32)))
    centres = (truth[:, :2] + truth[:, 2:]) / 2
    kps = np.zeros((len(plan.boxes), 17, 3), np.float32)
    for i, b in enumerate(plan.boxes):
        if len(truth):
            nearest = np.argmin(np.linalg.norm(centres - (b[:2] + b[2:]) / 2, axis=1))
            kps[i] = body_keypoints(truth[nearest])
    people = st.finish(plan, kps, np.full(len(plan.boxes), pose_score, np.float32))
    return plan, people


def test_detects_every_n_and_carries_between() -> None:
    st = StreamState(PipelineConfig(pose_source="top-down", detect_every=3))
    detected = []
    for f in range(10):
        plan, people = run_frame(st, f, [[100 + 4 * f, 100, 160 + 4 * f, 260]])
        detected.append(plan.detect)
        assert [p.track_id for p in people] == [1]
    assert detected == [True, False, False, True, False, False, True, False, False, True]


def test_a_streams_own_detect_every_wins_over_the_pipelines() -> None:
    from posefleet.config import StreamSettings

    cfg = PipelineConfig(pose_source="top-down", detect_every=2, streams={"slow-cam": {"detect_every": 4}})
    own, other = StreamState(cfg, cfg.settings_for("slow-cam")), StreamState(cfg, cfg.settings_for("cam"))
    box = [[100, 100, 160, 260]]
    assert [run_frame(own, f, box)[0].detect for f in range(8)] == [True, False, False, False] * 2
    assert [run_frame(other, f, box)[0].detect for f in range(4)] == [True, False] * 2
    other.configure(StreamSettings(detect_every=1))  # set over the API: from the next frame on
    assert [run_frame(other, f, box)[0].detect for f in range(4, 7)] == [True] * 3


def test_carried_box_follows_the_keypoints() -> None:
    st = StreamState(PipelineConfig(pose_source="top-down", detect_every=5))
    for f in range(5):
        truth = [100 + 6 * f, 100, 160 + 6 * f, 260]
        plan, people = run_frame(st, f, [truth])
    assert not plan.detect
    # the reported box is the one around this frame's keypoints, not the stale detection
    centre = (people[0].box[0] + people[0].box[2]) / 2
    assert centre == pytest.approx((truth[0] + truth[2]) / 2, abs=1.0)
    # and the prediction used for the crop moved with the person
    assert (plan.boxes[0][0] + plan.boxes[0][2]) / 2 > 135


def test_failed_pose_loses_the_track_and_forces_detection() -> None:
    st = StreamState(PipelineConfig(pose_source="top-down", detect_every=10))
    run_frame(st, 0, [[100, 100, 160, 260]])
    plan, people = run_frame(st, 1, [[100, 100, 160, 260]], pose_score=0.05)  # pose says: nobody
    assert not plan.detect and people == []
    plan, people = run_frame(st, 2, [[100, 100, 160, 260]])
    assert plan.detect  # forced, not due until frame 10
    assert [p.track_id for p in people] == [1]  # re-found as the same track


def test_empty_scene_detects_every_frame() -> None:
    st = StreamState(PipelineConfig(pose_source="top-down", detect_every=4))
    assert all(run_frame(st, f, [])[0].detect for f in range(5))


@pytest.mark.parametrize("index", [3, 2])
def test_duplicate_and_late_frames_are_refused(index: int) -> None:
    st = StreamState(PipelineConfig())
    run_frame(st, 0, [[100, 100, 160, 260]])
    run_frame(st, 3, [[100, 100, 160, 260]])  # gaps are fine (dropped frames)
    with pytest.raises(FrameOrderError, match="duplicate" if index == 3 else "out-of-order"):
        st.plan(index)
    plan, _ = run_frame(st, 4, [[100, 100, 160, 260]])  # state not harmed
    assert plan.frame_index == 4


def test_stream_state_round_trip() -> None:
    cfg = PipelineConfig(pose_source="top-down", detect_every=2)
    cfg.smoothing.enabled = True
    a = StreamState(cfg)
    for f in range(5):
        run_frame(a, f, [[100 + 3 * f, 100, 160 + 3 * f, 260]])
    b = StreamState.from_state(cfg, json.loads(json.dumps(a.state_dict())))
    for f in range(5, 9):
        _, pa = run_frame(a, f, [[100 + 3 * f, 100, 160 + 3 * f, 260]])
        _, pb = run_frame(b, f, [[100 + 3 * f, 100, 160 + 3 * f, 260]])
        assert pa == pb


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
def test_real_clip_detect_every_3_keeps_two_players(engine: LocalModels, topdown_cfg: PipelineConfig) -> None:
    """Basketball clip, 2 players: with detection every 3rd frame both stay tracked on stable ids."""
    frames = video_frames("test_video_structuralize.mp4", 90)
    every = Pipeline(topdown_cfg.model_copy(update={"detect_every": 3}), engine)
    results = [every.process("clip", f, i) for i, f in enumerate(frames)]
    detected = [i for i, r in enumerate(results) if r.detected]
    assert 30 <= len(detected) <= 33  # every 3rd frame, and a few more where a carried pose failed
    assert max(np.diff(detected)) <= 3  # never more than 2 carried frames in a row
    counts = [len(r.people) for r in results]
    assert np.mean(counts) >= 1.8
    assert len({p.track_id for r in results for p in r.people}) <= 3
    assert all(r.timings.total_ms > 0 for r in results)
    carried = [r for r in results if not r.detected]
    assert carried and all(r.timings.detect_ms == 0 for r in carried)
