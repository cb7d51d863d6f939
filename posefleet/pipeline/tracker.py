"""Per-stream state: ByteTrack, the detect-every-N schedule and keypoint smoothing.

A frame goes through three steps, in this order, for each stream:

1. :meth:`StreamState.plan` decides whether the detector runs on this frame. If not, it
   advances the tracker on prediction and hands back the carried boxes to pose.
2. :meth:`StreamState.associate` (detection frames only) runs ByteTrack on the detections.
3. :meth:`StreamState.finish` takes the pose keypoints: between detections they measure the
   carried tracks (the box around the keypoints refines the prediction), a carried person whose
   pose fails is lost and forces a detection on the next frame. Single-stage pipelines have no pose
   model between detections: a carried track's last keypoints move with its predicted box.

With ``flow`` on (:mod:`posefleet.pipeline.flow`), every frame first measures the camera's own motion and
moves the tracks by it (``flow.camera``); on carried frames each tracked person is then followed in the
picture: the boxes and keypoints carried are where the flow finds them, and single-stage pipelines measure
the tracks with them.

The state is plain data (:meth:`StreamState.state_dict`), so a stream can move between actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posefleet.config import PipelineConfig, StreamSettings
from posefleet.errors import FrameOrderError
from posefleet.image_io import Picture
from posefleet.pipeline.bytetrack import ByteTracker, Track, track_boxes
from posefleet.pipeline.detector import Detections
from posefleet.pipeline.flow import FlowFrame, camera_motion, flow_frame, flow_scale, follow
from posefleet.pipeline.geometry import keypoint_box
from posefleet.pipeline.roi import Roi, check_polygon, ground_points
from posefleet.pipeline.schema import Person
from posefleet.pipeline.smoothing import OneEuroFilter


@dataclass
class FramePlan:
    frame_index: int
    detect: bool
    # detection frames: a whole scan, or (track-guided) crops around ``crop_boxes``, the tracks' predictions,
    # and the scan's tiles number ``scan_part`` modulo ``scan_parts``
    scan: bool = True
    scan_part: int = 0
    scan_parts: int = 1
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    track_ids: list[int] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # [N, 17, 3] per planned track: the detector's keypoints on detection frames (when it gives them),
    # the track's previous keypoints on carried frames (NaN where it has none); used to align crops
    keypoints: np.ndarray | None = None
    # carried frames: which tracks optical flow followed (their boxes and keypoints are the flow's)
    followed: np.ndarray | None = None


def _tracks_to_plan(plan: FramePlan, tracks: list[Track], use_det_box: bool) -> FramePlan:
    plan.track_ids = [t.track_id for t in tracks]
    if tracks:
        plan.boxes = np.stack([t.det_box for t in tracks]).astype(np.float32) if use_det_box else track_boxes(tracks)
        plan.scores = np.array([t.score for t in tracks], np.float32)
    return plan


_NO_KEYPOINTS = np.zeros((17, 3), np.float32)


class StreamState:
    """Everything one stream remembers between frames."""

    def __init__(self, cfg: PipelineConfig, settings: StreamSettings | None = None):
        self.cfg = cfg
        self.tracker = ByteTracker(cfg.tracker)
        self.last_index = -1
        self.frames_since_detect = 0
        self.force_detect = True
        self.frames_since_scan = 0
        self.force_scan = True
        self.empty_scans = 0  # scans in a row that found nobody
        self.frame_size: tuple[int, int] | None = None  # width, height of the latest frame
        self.smoothers: dict[int, OneEuroFilter] = {}
        self.keypoints: dict[int, np.ndarray] = {}  # each live track's latest keypoints [17, 3] (carried frames)
        self.keypoint_boxes: dict[int, np.ndarray] = {}  # the box each track's keypoints came with
        # the latest frame in grey, for the next carried frame's flow (not part of the state: a stream moved
        # to another process carries its next frame on prediction alone)
        self.flow_ref: FlowFrame | None = None
        self.configure(settings or cfg.stream)

    def configure(self, settings: StreamSettings) -> None:
        """Apply the stream's own settings (its region of interest); ValueError if its polygon is off the
        stream's frames (when one was seen). Tracks, smoothers and carried keypoints are kept."""
        if settings.roi is not None and self.frame_size is not None:
            check_polygon(settings.roi, self.frame_size)
        self.settings = settings
        self.roi = Roi(settings.roi, settings.keep_outside_roi) if settings.roi else None

    @property
    def detect_every(self) -> int:
        """The stream's own, else the pipeline's."""
        return self.settings.detect_every or self.cfg.detect_every

    @property
    def follows(self) -> bool:
        """Whether carried frames follow people by optical flow (there are carried frames, and it is on)."""
        return self.cfg.flow.enabled and self.detect_every > 1

    @property
    def compensates(self) -> bool:
        """Whether each frame measures the camera's motion and moves the tracks by it."""
        return self.cfg.flow.enabled and self.cfg.flow.camera

    def flow_need(self) -> float:
        """The scale (image px per frame px) the flow needs of this frame's pixels; 0 when it will not run."""
        if not (self.follows or self.compensates):
            return 0.0
        boxes = track_boxes(self.tracker.tracked)
        if not len(boxes):
            return 0.0
        return flow_scale(float((boxes[:, 3] - boxes[:, 1]).min()), self.cfg.flow)

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
        """What this frame will get (detection or not, a whole scan or crops where), changing nothing: the
        frame may still fail (its picture is decoded after this, at the scale the plan needs). A carried
        frame's ``crop_boxes`` are its tracks' predictions; :meth:`start` then commits the plan."""
        self.check_order(frame_index)
        restarted = frame_index <= self.last_index  # the camera restarted its count: tracks kept, boxes found again
        due = self.frames_since_detect + 1 >= self.detect_every
        if self.force_detect or restarted or due or not self.tracker.active():
            return self._detection_plan(frame_index)
        return FramePlan(frame_index, detect=False, crop_boxes=self.tracker.predicted_boxes(0))

    def start(self, plan: FramePlan, picture: Picture | None = None) -> FramePlan:
        """Commit a frame's plan to the stream (its ``picture`` is decoded): the counters move on and, on a
        carried frame, the tracker advances on prediction, the plan gets its tracks and, where the flow follows
        them in the picture, their boxes and keypoints are the flow's."""
        restarted = plan.frame_index <= self.last_index  # a camera that restarted its count: no flow across
        self.last_index = plan.frame_index
        prior, self.flow_ref = (None if restarted else self.flow_ref), None
        need = self.flow_need()
        if prior is not None and picture is not None and picture.image is not None and need > 0:
            self.flow_ref = flow_frame(picture.image, picture.scale, need)
            prior = prior.resized(self.flow_ref.gray.shape, self.flow_ref.scale)  # once, for both uses below
            if self.compensates:
                people = track_boxes(self.tracker.tracked + self.tracker.lost)
                m = camera_motion(prior, self.flow_ref, people, self.cfg.flow)
                if m is not None:
                    self.tracker.move_with_camera(m)
        if plan.detect:
            self.frames_since_detect = 0
            self.force_detect = False
            if plan.scan:
                self.frames_since_scan = 0
                self.force_scan = False
            else:
                self.frames_since_scan += 1
            return plan
        self.frames_since_detect += 1
        plan = _tracks_to_plan(plan, self.tracker.carry(), use_det_box=False)
        kept = [self.keypoints.get(t, _NO_KEYPOINTS) for t in plan.track_ids]
        plan.keypoints = np.stack(kept) if kept else np.zeros((0, 17, 3), np.float32)
        if not self.cfg.needs_pose_model:  # single-stage: the last keypoints move with the predicted box
            plan.keypoints = self._moved_keypoints(plan)
        if self.follows and prior is not None and self.flow_ref is not None and plan.track_ids:
            self._follow(plan, prior, self.flow_ref)
        return plan

    def _follow(self, plan: FramePlan, prior: FlowFrame, cur: FlowFrame) -> None:
        """Move the carried tracks to where optical flow finds them, from their boxes and keypoints of the
        previous frame. Only confirmed tracks are marked followed (measured by it): a flow never confirms."""
        tracks = {t.track_id: t for t in self.tracker.tracked}
        before = np.stack([self.keypoint_boxes.get(t, tracks[t].det_box) for t in plan.track_ids])
        kps = np.stack([self.keypoints.get(t, _NO_KEYPOINTS) for t in plan.track_ids])
        boxes, moved, ok = follow(prior, cur, before, kps, self.cfg.flow, self.cfg.keypoint_min_score)
        plan.boxes = np.where(ok[:, None], boxes, plan.boxes)
        if plan.keypoints is not None:
            plan.keypoints = np.where(ok[:, None, None], moved, plan.keypoints)
        plan.followed = ok & np.array([tracks[t].is_activated for t in plan.track_ids])

    def _moved_keypoints(self, plan: FramePlan) -> np.ndarray:
        """Each carried track's last keypoints, moved and scaled from the box they came with to its prediction."""
        out = plan.keypoints.copy()
        for i, tid in enumerate(plan.track_ids):
            old = self.keypoint_boxes.get(tid)
            if old is None:
                continue
            new = plan.boxes[i]
            scale = (new[3] - new[1]) / max(float(old[3] - old[1]), 1.0)
            out[i, :, :2] = (out[i, :, :2] - (old[:2] + old[2:]) / 2) * scale + (new[:2] + new[2:]) / 2
        return out

    def _detection_plan(self, frame_index: int) -> FramePlan:
        """The whole scan on a stream's first frames, when asked for or nobody is tracked (or guided detection
        is off); else crops and a part of the scan, the next one each frame."""
        guided = self.cfg.detector.guided
        warming = self.tracker.frame_id < guided.warmup_frames
        if not guided.enabled or self.force_scan or warming or not self.tracker.active():
            return FramePlan(frame_index, detect=True, scan=True)
        boxes = self.tracker.predicted_boxes(guided.lost_frames)
        part = (self.frames_since_scan + 1) % guided.scan_frames
        return FramePlan(frame_index, True, False, part, guided.scan_frames, crop_boxes=boxes)

    def smallest_person(self, h: int) -> float:
        """The height in px a scan looks for people at: ``scan.track_margin`` x the smallest tracked person's;
        with nobody tracked, ``scan.person_height`` of the frame, halved for each scan in a row that found
        nobody (a stream's first scan is coarse; it looks finer until somebody is found)."""
        scan = self.cfg.detector.scan
        boxes = track_boxes(self.tracker.active())
        if len(boxes):
            return max(float((boxes[:, 3] - boxes[:, 1]).min()) * scan.track_margin, scan.min_person_height * h)
        return max(scan.person_height * 0.5**self.empty_scans, scan.min_person_height) * h

    def scan_area(self, w: int, h: int) -> tuple[int, int, int, int] | None:
        """What a scan covers: the region of interest's bounding box, raised by the tallest person tracked
        (``scan.roi_rise`` of the frame before any): people stand in it, their bodies rise above it. None
        (the whole frame) without one, or where people outside it are kept."""
        if self.roi is None or self.roi.keep_outside:  # people outside are wanted too: the whole frame
            return None
        box = self.roi.bounds(w, h)
        if box is None:
            return None
        boxes = track_boxes(self.tracker.active())
        rise = 1.2 * float((boxes[:, 3] - boxes[:, 1]).max()) if len(boxes) else self.cfg.detector.scan.roi_rise * h
        return box[0], max(0, int(box[1] - rise)), box[2], box[3]

    def in_roi(self, dets: Detections) -> np.ndarray:
        """Which detections stand inside the region of interest (all where there is none)."""
        if self.roi is None or not len(dets):
            return np.ones(len(dets), bool)
        return self.roi.contains(ground_points(dets.boxes, dets.keypoints, self.cfg.keypoint_min_score))

    # -- step 2 -------------------------------------------------------------------------------
    def associate(self, plan: FramePlan, dets: Detections) -> FramePlan:
        """Run ByteTrack on a detection frame; the plan then holds the tracks and their det boxes. People
        outside the region of interest are left out first (unless kept); with ``guided.scan_on_loss``, a
        tracked person the crops did not find again asks for the whole scan on the next frame."""
        if self.roi is not None and not self.roi.keep_outside:
            dets = dets.take(np.flatnonzero(self.in_roi(dets)))
        before = {t.track_id for t in self.tracker.active()}
        if plan.scan:
            self.empty_scans = 0 if len(dets) else self.empty_scans + 1
        # every active track was matched to a detection of this frame: pose runs on its det box
        tracks = self.tracker.update(dets.boxes, dets.scores)
        lost = before - {t.track_id for t in tracks}
        if not plan.scan and lost and self.cfg.detector.guided.scan_on_loss:
            self.force_scan = True
        plan = _tracks_to_plan(plan, tracks, use_det_box=True)
        if dets.keypoints is not None:
            plan.keypoints = dets.keypoints[[t.det_index for t in tracks]].reshape(-1, 17, 3)
        return plan

    # -- step 3 -------------------------------------------------------------------------------
    def finish(
        self, plan: FramePlan, keypoints: np.ndarray, pose_scores: np.ndarray, timestamp: float | None = None,
        picture: Picture | None = None,
    ) -> list[Person]:
        """Fold the pose of this frame into the tracks and return the people to report; this frame's decoded
        ``picture`` is kept in grey for the next frame's flow, where :meth:`start` did not already."""
        cfg = self.cfg
        boxes = plan.boxes.copy()
        scores = plan.scores.copy()
        if not plan.detect and plan.track_ids and cfg.needs_pose_model:  # carried: the pose measures the tracks
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
        elif not plan.detect and plan.followed is not None and plan.followed.any():  # single-stage: the flow's
            f = plan.followed
            ids = [t for t, y in zip(plan.track_ids, f, strict=True) if y]
            active = self.tracker.correct(ids, boxes[f], scores[f], np.ones(len(ids), bool))
        else:
            active = self.tracker.active()
        report = {t.track_id for t in active}
        t = timestamp if timestamp is not None else plan.frame_index / cfg.tracker.frame_rate
        inside = self.in_roi(Detections(boxes, scores, keypoints if len(keypoints) == len(boxes) else None))
        people = []
        for i, tid in enumerate(plan.track_ids):
            if tid not in report or not (inside[i] or self.roi is None or self.roi.keep_outside):
                continue
            kps = self._smooth(tid, keypoints[i], t)
            people.append(
                Person(
                    track_id=tid,
                    box=tuple(round(float(v), 2) for v in boxes[i]),
                    score=round(float(scores[i]), 4),
                    keypoints=[(round(float(x), 2), round(float(y), 2), round(float(s), 4)) for x, y, s in kps],
                    outside_roi=not bool(inside[i]),
                )
            )
        if self.cfg.pose_source == "top-down" or self.follows or (self.detect_every > 1 and plan.detect):
            # the next carried frame aligns its crops by these (top-down), follows them (flow), or moves them
            # with the predicted box (single-stage)
            for i, tid in enumerate(plan.track_ids):
                self.keypoints[tid] = np.asarray(keypoints[i], np.float32)
                self.keypoint_boxes[tid] = boxes[i].astype(np.float32)
        need = self.flow_need() if self.flow_ref is None and picture is not None and picture.image is not None else 0
        if need > 0:  # the next frame follows its people from this one, at the scale this frame's people need
            self.flow_ref = flow_frame(picture.image, picture.scale, need)  # type: ignore[union-attr]
        live = {tr.track_id for tr in self.tracker.tracked + self.tracker.lost}
        self.smoothers = {k: v for k, v in self.smoothers.items() if k in live}
        self.keypoints = {k: v for k, v in self.keypoints.items() if k in live}
        self.keypoint_boxes = {k: v for k, v in self.keypoint_boxes.items() if k in live}
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
            "frames_since_scan": self.frames_since_scan,
            "force_scan": self.force_scan,
            "empty_scans": self.empty_scans,
            "settings": self.settings.model_dump(),
            "frame_size": self.frame_size,
            "smoothers": {str(k): v.state_dict() for k, v in self.smoothers.items()},
            "keypoints": {str(k): v.tolist() for k, v in self.keypoints.items()},
            "keypoint_boxes": {str(k): v.tolist() for k, v in self.keypoint_boxes.items()},
        }

    @classmethod
    def from_state(cls, cfg: PipelineConfig, state: dict[str, Any]) -> StreamState:
        settings = StreamSettings.model_validate(state["settings"]) if "settings" in state else None
        st = cls(cfg, settings)
        st.tracker = ByteTracker.from_state(state["tracker"])
        st.last_index = state["last_index"]
        st.frames_since_detect = state["frames_since_detect"]
        st.force_detect = state["force_detect"]
        st.frames_since_scan = state.get("frames_since_scan", 0)
        st.empty_scans = state.get("empty_scans", 0)
        size = state.get("frame_size")
        st.frame_size = (int(size[0]), int(size[1])) if size else None
        st.force_scan = state.get("force_scan", True)
        st.smoothers = {int(k): OneEuroFilter.from_state(cfg.smoothing, v) for k, v in state["smoothers"].items()}
        st.keypoints = {int(k): np.array(v, np.float32) for k, v in state.get("keypoints", {}).items()}
        st.keypoint_boxes = {int(k): np.array(v, np.float32) for k, v in state.get("keypoint_boxes", {}).items()}
        return st
