"""Per-stream state: ByteTrack, the detect-every-N schedule and keypoint smoothing.

A frame goes through three steps, in this order, for each stream:

1. :meth:`StreamState.plan` decides whether the detector runs on this frame. If not, it
   advances the tracker on prediction and hands back the carried boxes to pose.
2. :meth:`StreamState.associate` (detection frames only) runs ByteTrack on the detections.
3. :meth:`StreamState.finish` takes the pose keypoints: between detections they measure the
   carried tracks (the box around the keypoints refines the prediction), a carried person whose
   pose fails is lost and forces a detection on the next frame.

The state is plain data (:meth:`StreamState.state_dict`), so a stream can move between actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posefleet.config import PipelineConfig
from posefleet.errors import FrameOrderError
from posefleet.pipeline.bytetrack import ByteTracker, Track
from posefleet.pipeline.detector import Detections
from posefleet.pipeline.geometry import keypoint_box
from posefleet.pipeline.schema import Person
from posefleet.pipeline.smoothing import OneEuroFilter


@dataclass
class FramePlan:
    frame_index: int
    detect: bool
    track_ids: list[int] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # [N, 17, 3] per planned track: the detector's keypoints on detection frames (when it gives them),
    # the track's previous keypoints on carried frames (NaN where it has none); used to align crops
    keypoints: np.ndarray | None = None


def _tracks_to_plan(plan: FramePlan, tracks: list[Track], use_det_box: bool) -> FramePlan:
    plan.track_ids = [t.track_id for t in tracks]
    if tracks:
        plan.boxes = np.stack([t.det_box if use_det_box else t.box for t in tracks]).astype(np.float32)
        plan.scores = np.array([t.score for t in tracks], np.float32)
    return plan


_NO_KEYPOINTS = np.zeros((17, 3), np.float32)


class StreamState:
    """Everything one stream remembers between frames."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.tracker = ByteTracker(cfg.tracker)
        self.last_index = -1
        self.frames_since_detect = 0
        self.force_detect = True
        self.smoothers: dict[int, OneEuroFilter] = {}
        self.keypoints: dict[int, np.ndarray] = {}  # top-down: each live track's latest keypoints [17, 3]

    # -- step 1 -------------------------------------------------------------------------------
    def restarts_at(self, frame_index: int) -> bool:
        """Whether the index is so far behind the stream's last (``index_restart_gap``) that the camera must have
        restarted its count, or jumped far ahead by mistake before: the sequence then restarts there, so a
        stream never stays stuck behind one bogus index."""
        return self.last_index - frame_index >= self.cfg.index_restart_gap

    def check_order(self, frame_index: int) -> None:
        if frame_index <= self.last_index and not self.restarts_at(frame_index):
            kind = "duplicate" if frame_index == self.last_index else "out-of-order"
            raise FrameOrderError(
                f"{kind} frame {frame_index}: this stream is at frame {self.last_index}; frame indices must increase "
                f"(or restart at least {self.cfg.index_restart_gap} lower)"
            )

    def plan(self, frame_index: int) -> FramePlan:
        self.check_order(frame_index)
        if frame_index <= self.last_index:  # the camera restarted its count: tracks kept, boxes found again
            self.force_detect = True
        self.last_index = frame_index
        due = self.frames_since_detect + 1 >= self.cfg.detect_every
        if self.force_detect or due or not self.tracker.active():
            self.frames_since_detect = 0
            self.force_detect = False
            return FramePlan(frame_index, detect=True)
        self.frames_since_detect += 1
        plan = _tracks_to_plan(FramePlan(frame_index, detect=False), self.tracker.carry(), use_det_box=False)
        kept = [self.keypoints.get(t, _NO_KEYPOINTS) for t in plan.track_ids]
        plan.keypoints = np.stack(kept) if kept else np.zeros((0, 17, 3), np.float32)
        return plan

    # -- step 2 -------------------------------------------------------------------------------
    def associate(self, plan: FramePlan, dets: Detections) -> FramePlan:
        """Run ByteTrack on a detection frame; the plan then holds the tracks and their det boxes."""
        # every active track was matched to a detection of this frame: pose runs on its det box
        tracks = self.tracker.update(dets.boxes, dets.scores)
        plan = _tracks_to_plan(plan, tracks, use_det_box=True)
        if dets.keypoints is not None:
            plan.keypoints = dets.keypoints[[t.det_index for t in tracks]].reshape(-1, 17, 3)
        return plan

    # -- step 3 -------------------------------------------------------------------------------
    def finish(
        self, plan: FramePlan, keypoints: np.ndarray, pose_scores: np.ndarray, timestamp: float | None = None
    ) -> list[Person]:
        """Fold the pose of this frame into the tracks and return the people to report."""
        cfg = self.cfg
        boxes = plan.boxes.copy()
        scores = plan.scores.copy()
        if not plan.detect and plan.track_ids:
            ok = pose_scores >= cfg.pose.min_person_score
            for i in range(len(boxes)):
                kp_box = keypoint_box(keypoints[i], cfg.keypoint_min_score, cfg.keypoint_box_padding)
                if kp_box is None:
                    ok[i] = False
                else:
                    boxes[i] = kp_box
            scores = pose_scores
            active = self.tracker.correct(plan.track_ids, boxes, scores, ok)
            if not ok.all():
                self.force_detect = True
        else:
            active = self.tracker.active()
        report = {t.track_id for t in active}
        t = timestamp if timestamp is not None else plan.frame_index / cfg.tracker.frame_rate
        people = []
        for i, tid in enumerate(plan.track_ids):
            if tid not in report:
                continue
            kps = self._smooth(tid, keypoints[i], t)
            people.append(
                Person(
                    track_id=tid,
                    box=tuple(round(float(v), 2) for v in boxes[i]),
                    score=round(float(scores[i]), 4),
                    keypoints=[(round(float(x), 2), round(float(y), 2), round(float(s), 4)) for x, y, s in kps],
                )
            )
        if self.cfg.pose_source == "top-down":  # the next carried frame aligns its crops by them
            for i, tid in enumerate(plan.track_ids):
                self.keypoints[tid] = np.asarray(keypoints[i], np.float32)
        live = {tr.track_id for tr in self.tracker.tracked + self.tracker.lost}
        self.smoothers = {k: v for k, v in self.smoothers.items() if k in live}
        self.keypoints = {k: v for k, v in self.keypoints.items() if k in live}
        return people

    def _smooth(self, track_id: int, kps: np.ndarray, t: float) -> np.ndarray:
        if not self.cfg.smoothing.enabled:
            return kps
        f = self.smoothers.setdefault(track_id, OneEuroFilter(self.cfg.smoothing))
        out = kps.copy()
        out[:, :2] = f(kps[:, :2], t)
        return out

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "last_index": self.last_index,
            "frames_since_detect": self.frames_since_detect,
            "force_detect": self.force_detect,
            "smoothers": {str(k): v.state_dict() for k, v in self.smoothers.items()},
            "keypoints": {str(k): v.tolist() for k, v in self.keypoints.items()},
        }

    @classmethod
    def from_state(cls, cfg: PipelineConfig, state: dict[str, Any]) -> StreamState:
        st = cls(cfg)
        st.tracker = ByteTracker.from_state(state["tracker"])
        st.last_index = state["last_index"]
        st.frames_since_detect = state["frames_since_detect"]
        st.force_detect = state["force_detect"]
        st.smoothers = {int(k): OneEuroFilter.from_state(cfg.smoothing, v) for k, v in state["smoothers"].items()}
        st.keypoints = {int(k): np.array(v, np.float32) for k, v in state.get("keypoints", {}).items()}
        return st
