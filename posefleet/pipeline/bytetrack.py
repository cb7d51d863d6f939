"""ByteTrack (Zhang et al., 2022) on numpy + scipy, one id space per tracker instance.

Faithful to the reference algorithm: Kalman prediction of tracked and lost tracks, a first
association of high-score detections (IoU fused with score), a second association of the
remaining tracked tracks with low-score detections, unconfirmed tracks matched to what is left,
new tracks from unmatched high-score detections, and a lost-track buffer. Unlike the reference,
ids come from a counter per instance (streams never share ids) and the whole state is a plain dict
(:meth:`ByteTracker.state_dict`) so a stream's tracker can move between processes.

For detect-every-N pipelines it also offers :meth:`ByteTracker.carry` (advance one frame on
prediction alone) and :meth:`ByteTracker.correct` (measure carried tracks by id, e.g. from pose
keypoints), which never re-associate and so cannot swap ids between detections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from posefleet.config import TrackerConfig
from posefleet.pipeline.geometry import iou_matrix
from posefleet.pipeline.kalman import KalmanFilterXYAH, tlbr_to_xyah, xyah_to_tlbr

_KF = KalmanFilterXYAH()


class TrackState(IntEnum):
    NEW = 0
    TRACKED = 1
    LOST = 2
    REMOVED = 3


@dataclass
class Track:
    track_id: int
    mean: np.ndarray
    cov: np.ndarray
    score: float
    start_frame: int
    frame_id: int
    state: TrackState = TrackState.TRACKED
    is_activated: bool = False
    tracklet_len: int = 0
    det_box: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))
    det_index: int = -1  # index of the detection matched in the latest update, -1 if none

    @property
    def box(self) -> np.ndarray:
        return xyah_to_tlbr(self.mean)

    def measure(self, box: np.ndarray, score: float, frame_id: int) -> None:
        self.mean, self.cov = _KF.update(self.mean, self.cov, tlbr_to_xyah(box))
        self.det_box = np.asarray(box, np.float32)
        self.score = float(score)
        self.frame_id = frame_id
        self.state = TrackState.TRACKED
        self.is_activated = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id, "mean": self.mean.tolist(), "cov": self.cov.tolist(),
            "score": self.score, "start_frame": self.start_frame, "frame_id": self.frame_id,
            "state": int(self.state), "is_activated": self.is_activated, "tracklet_len": self.tracklet_len,
            "det_box": self.det_box.tolist(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Track:
        return cls(
            track_id=d["track_id"], mean=np.array(d["mean"]), cov=np.array(d["cov"]), score=d["score"],
            start_frame=d["start_frame"], frame_id=d["frame_id"], state=TrackState(d["state"]),
            is_activated=d["is_activated"], tracklet_len=d["tracklet_len"],
            det_box=np.array(d["det_box"], np.float32),
        )  # fmt: skip


def _assign(cost: np.ndarray, thresh: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Min-cost matching with pairs above ``thresh`` forbidden; returns matches and the unmatched."""
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return [], list(range(rows)), list(range(cols))
    gated = np.where(cost > thresh, thresh + 1e4, cost)
    r, c = linear_sum_assignment(gated)
    matches = [(i, j) for i, j in zip(r, c, strict=True) if cost[i, j] <= thresh]
    mr = {i for i, _ in matches}
    mc = {j for _, j in matches}
    return matches, [i for i in range(rows) if i not in mr], [j for j in range(cols) if j not in mc]


def track_boxes(tracks: list[Track]) -> np.ndarray:
    """``[N, 4]`` the tracks' boxes (x1, y1, x2, y2) from their states, in one batch (a track's own ``box`` is a
    few numpy calls, and the tracker asks for all of them many times a frame)."""
    if not tracks:
        return np.zeros((0, 4), np.float32)
    return xyah_to_tlbr(np.stack([t.mean for t in tracks]))


def _iou_cost(tracks: list[Track], boxes: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    if not tracks or len(boxes) == 0:
        return np.zeros((len(tracks), len(boxes)))
    sim = iou_matrix(track_boxes(tracks), boxes).astype(np.float64)
    if scores is not None:  # ByteTrack's fuse_score
        sim = sim * scores[None, :]
    return 1.0 - sim


class ByteTracker:
    """Multi-object tracker for one stream."""

    def __init__(self, cfg: TrackerConfig | None = None):
        self.cfg = cfg or TrackerConfig()
        self.frame_id = 0
        self.next_id = 1
        self.tracked: list[Track] = []
        self.lost: list[Track] = []

    @property
    def max_time_lost(self) -> int:
        return int(self.cfg.frame_rate / 30.0 * self.cfg.track_buffer)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; :meth:`from_state` restores an identical tracker."""
        return {
            "config": self.cfg.model_dump(),
            "frame_id": self.frame_id,
            "next_id": self.next_id,
            "tracked": [t.to_dict() for t in self.tracked],
            "lost": [t.to_dict() for t in self.lost],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ByteTracker:
        tracker = cls(TrackerConfig.model_validate(state["config"]))
        tracker.frame_id = state["frame_id"]
        tracker.next_id = state["next_id"]
        tracker.tracked = [Track.from_dict(d) for d in state["tracked"]]
        tracker.lost = [Track.from_dict(d) for d in state["lost"]]
        return tracker

    # -- helpers ----------------------------------------------------------------------------
    def _predict(self, tracks: list[Track]) -> None:
        if not tracks:
            return
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        for i, t in enumerate(tracks):
            if t.state != TrackState.TRACKED:
                mean[i, 7] = 0.0
        mean, cov = _KF.multi_predict(mean, cov)
        for i, t in enumerate(tracks):
            t.mean, t.cov = mean[i], cov[i]

    def _new_track(self, box: np.ndarray, score: float, det_index: int) -> Track:
        mean, cov = _KF.initiate(tlbr_to_xyah(box))
        track = Track(
            track_id=self.next_id, mean=mean, cov=cov, score=float(score), start_frame=self.frame_id,
            frame_id=self.frame_id, is_activated=self.frame_id == 1, det_box=np.asarray(box, np.float32),
            det_index=det_index,
        )  # fmt: skip
        self.next_id += 1
        return track

    def _drop_expired_lost(self) -> None:
        self.lost = [t for t in self.lost if self.frame_id - t.frame_id <= self.max_time_lost]

    def _dedupe(self) -> None:
        """Reference ``remove_duplicate_stracks``: a tracked/lost pair over 0.85 IoU keeps the older."""
        if not self.tracked or not self.lost:
            return
        iou = iou_matrix(track_boxes(self.tracked), track_boxes(self.lost))
        drop_t, drop_l = set(), set()
        for p, q in zip(*np.nonzero(iou > 0.85), strict=True):
            a, b = self.tracked[p], self.lost[q]
            if a.frame_id - a.start_frame > b.frame_id - b.start_frame:
                drop_l.add(q)
            else:
                drop_t.add(p)
        self.tracked = [t for i, t in enumerate(self.tracked) if i not in drop_t]
        self.lost = [t for i, t in enumerate(self.lost) if i not in drop_l]

    def active(self) -> list[Track]:
        """Confirmed tracks seen in the current frame."""
        return [t for t in self.tracked if t.is_activated and t.state == TrackState.TRACKED]

    # -- one frame with detections ----------------------------------------------------------
    def update(self, boxes: np.ndarray, scores: np.ndarray) -> list[Track]:
        """Advance one frame with this frame's detections; returns the active tracks."""
        cfg = self.cfg
        self.frame_id += 1
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        high = np.flatnonzero(scores >= cfg.high_thresh)
        low = np.flatnonzero((scores >= cfg.low_thresh) & (scores < cfg.high_thresh))
        for t in self.tracked + self.lost:
            t.det_index = -1

        unconfirmed = [t for t in self.tracked if not t.is_activated]
        confirmed = [t for t in self.tracked if t.is_activated]
        pool = confirmed + self.lost
        self._predict(pool)  # as the reference: unconfirmed tracks are not predicted

        activated: list[Track] = []
        newly_lost: list[Track] = []

        def apply(track: Track, det: int) -> None:
            was_tracked = track.state == TrackState.TRACKED
            track.measure(boxes[det], scores[det], self.frame_id)
            track.tracklet_len = track.tracklet_len + 1 if was_tracked else 0
            track.det_index = int(det)
            activated.append(track)

        # 1) high-score detections against tracked + lost tracks
        cost = _iou_cost(pool, boxes[high], scores[high] if cfg.fuse_score else None)
        matches, u_track, u_high = _assign(cost, cfg.match_thresh)
        for ti, di in matches:
            apply(pool[ti], high[di])
        # 2) low-score detections against the still-unmatched tracked tracks
        remain = [pool[i] for i in u_track if pool[i].state == TrackState.TRACKED]
        cost = _iou_cost(remain, boxes[low])
        matches, u_remain, _ = _assign(cost, cfg.second_match_thresh)
        for ti, di in matches:
            apply(remain[ti], low[di])
        for i in u_remain:
            remain[i].state = TrackState.LOST
            newly_lost.append(remain[i])
        # 3) unconfirmed tracks (seen once) against the high detections left over
        left = high[u_high]
        cost = _iou_cost(unconfirmed, boxes[left], scores[left] if cfg.fuse_score else None)
        matches, _, u_left = _assign(cost, cfg.unconfirmed_match_thresh)
        for ti, di in matches:
            apply(unconfirmed[ti], left[di])
        # 4) new tracks from confident unmatched detections
        for di in left[u_left]:
            if scores[di] >= cfg.new_track_thresh:
                track = self._new_track(boxes[di], scores[di], int(di))
                activated.append(track)

        kept_lost = [t for t in self.lost if t.state == TrackState.LOST]
        self.tracked = activated
        self.lost = kept_lost + newly_lost
        self._drop_expired_lost()
        self._dedupe()
        return self.active()

    def predicted_boxes(self, lost_frames: int) -> np.ndarray:
        """Where the tracked people, and those lost at most ``lost_frames`` ago, should be in the next frame
        ``[N, 4]``: the Kalman prediction :meth:`update` will make, without advancing the tracker."""
        tracks = self.tracked + [t for t in self.lost if self.frame_id - t.frame_id <= lost_frames]
        if not tracks:
            return np.zeros((0, 4), np.float32)
        mean = np.stack([t.mean for t in tracks]).copy()
        cov = np.stack([t.cov for t in tracks])
        moving = np.array([t.state == TrackState.TRACKED and t.is_activated for t in tracks])
        mean[~moving, 7] = 0.0
        predicted, _ = _KF.multi_predict(mean, cov)
        predicted = np.where(np.array([t.is_activated for t in tracks])[:, None], predicted, mean)
        return xyah_to_tlbr(predicted)

    def move_with_camera(self, m: np.ndarray) -> None:
        """Move every track's state (tracked and lost) by the camera's motion since the last frame, a 2x3
        similarity ``m`` in image px: centres and velocities turned, scaled and (centres) shifted, heights
        scaled, covariances carried along (BoT-SORT's camera-motion compensation)."""
        tracks = self.tracked + self.lost
        if not tracks:
            return
        lin = m[:, :2]
        s = float(np.sqrt(abs(np.linalg.det(lin))))
        t = np.eye(8)
        t[:2, :2] = t[4:6, 4:6] = lin
        t[3, 3] = t[7, 7] = s
        mean = np.stack([tr.mean for tr in tracks]) @ t.T
        mean[:, :2] += m[:, 2]
        cov = t @ np.stack([tr.cov for tr in tracks]) @ t.T
        for i, tr in enumerate(tracks):
            tr.mean, tr.cov = mean[i], cov[i]

    # -- frames between detections --------------------------------------------------------
    def carry(self) -> list[Track]:
        """Advance one frame on prediction alone; returns tracks to measure this frame.

        Both confirmed and unconfirmed tracks are returned: a good pose confirms a new track.
        """
        self.frame_id += 1
        for t in self.tracked + self.lost:
            t.det_index = -1
        self._predict(self.tracked + self.lost)
        return list(self.tracked)

    def correct(self, track_ids: list[int], boxes: np.ndarray, scores: np.ndarray, ok: np.ndarray) -> list[Track]:
        """Measure carried tracks by id; a track whose measurement is not ``ok`` is lost.

        Returns the active tracks. Tracks not named keep their prediction.
        """
        by_id = {t.track_id: t for t in self.tracked}
        for tid, box, score, good in zip(track_ids, boxes, scores, ok, strict=True):
            track = by_id.get(int(tid))
            if track is None:
                continue
            if good:
                track.measure(box, score, self.frame_id)
                track.tracklet_len += 1
            elif track.is_activated:
                track.state = TrackState.LOST
            else:
                track.state = TrackState.REMOVED
        self.lost += [t for t in self.tracked if t.state == TrackState.LOST]
        self.tracked = [t for t in self.tracked if t.state == TrackState.TRACKED]
        self._drop_expired_lost()
        return self.active()
