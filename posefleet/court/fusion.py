"""A group's time-matched frames fused into court-level people: each person associated across the cameras, one
group id a player over time, court positions, and 17 keypoints in 3D where two calibrated cameras see them.

Plain Python (no Ray): ``posefleet run --group`` drives it in process, the group's fuser actor when served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from posefleet.court.associate import UNMATCHED, View, cluster_views, epipolar_costs, essential, ground_costs
from posefleet.court.calibration import CalibrationError, Camera, camera_from_model, check_rig, check_size
from posefleet.court.group_tracker import Candidate, GroupTracker
from posefleet.court.homography import CourtTemplate, Homography, court_template, fit_homography
from posefleet.court.schema import CourtOutline, GroupFrame, GroupPerson
from posefleet.court.settings import GroupSettings
from posefleet.court.triangulate import Triangulated, project_all, triangulate_points
from posefleet.pipeline.schema import FrameResult

LEFT_ANKLE, RIGHT_ANKLE, LEFT_HIP, RIGHT_HIP = 15, 16, 11, 12
CODEC_PADDING_PX = 16  # a video's frames may be this much smaller than its calibrated sensor (1088 coded as 1080)
N_KEYPOINTS = 17


def ground_pixels(keypoints: np.ndarray, boxes: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Where people stand in the image ``[N, 2]``: between the ankles when both are seen (``[N]`` True), else the
    box's bottom centre. ``keypoints [N, 17, 3]``, ``boxes [N, 4]``."""
    ankles = keypoints[:, [LEFT_ANKLE, RIGHT_ANKLE]]
    seen = (ankles[..., 2] >= min_score).all(axis=1)
    bottom = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], axis=1)
    return np.where(seen[:, None], ankles[..., :2].mean(axis=1), bottom), seen


class GroupFuser:
    """Fuses one group's frames. Cameras are given by stream id; a stream without one is ignored."""

    def __init__(self, group: str, settings: GroupSettings, cameras: Mapping[str, Camera] | None = None) -> None:
        self.group = group
        self.settings = settings
        self.cfg = settings.fusion
        self.cameras: dict[str, Camera] = dict(cameras or {})
        for stream, model in settings.cameras.items():
            self.cameras.setdefault(stream, camera_from_model(stream, model))
        check_rig(self.cameras)
        self.homographies: dict[str, Homography] = {s: fit_homography(h) for s, h in settings.court_points.items()}
        both = set(self.cameras) & set(self.homographies)
        if both:
            raise CalibrationError(f"streams {', '.join(sorted(both))} have both a calibration and court points")
        marked = {h.template.name for h in self.homographies.values()}
        if settings.court is None and len(marked) > 1:
            raise CalibrationError(f"the group's court points are of several courts ({', '.join(sorted(marked))})")
        # the court is the one named, else the one the court points were marked on
        name = settings.court or next(iter(marked), None)
        self.template: CourtTemplate | None = court_template(name) if name else None
        self.outline = None if self.template is None else CourtOutline(
            name=self.template.name, length=self.template.length, width=self.template.width, net_x=self.template.net_x
        )
        self.tracker = GroupTracker(
            max_distance_m=self.cfg.max_distance_m, max_age_s=self.cfg.max_age_s,
            min_views_new=2 if len(self.cameras) >= 2 else 1,
        )  # fmt: skip
        self._last_views: dict[tuple[str, int], int] = {}  # (stream, track id) -> group id on the last frame
        self._checked: set[str] = set()
        self._essential: dict[tuple[str, str], np.ndarray] = {}
        self._camera_order = sorted(self.cameras)

    @property
    def streams(self) -> set[str]:
        return set(self.cameras) | set(self.homographies)

    # -- per camera ---------------------------------------------------------------------------------------------

    def court_xy(self, stream: str, pixels: np.ndarray, ankles: np.ndarray | None = None) -> np.ndarray | None:
        """Image points of ``stream`` on the court (metres, ``[N, 2]``), or None for a stream with no camera.
        ``ankles [N]``: the points are ankles, which a calibrated camera places at ankle height over the floor."""
        if stream in self.homographies:
            return self.homographies[stream].to_court(pixels)
        if stream not in self.cameras:
            return None
        cam = self.cameras[stream]
        xy = cam.floor_points(pixels, self.cfg.floor_z)[:, :2]
        if ankles is not None and ankles.any():
            xy[ankles] = cam.floor_points(pixels[ankles], self.cfg.floor_z + self.cfg.ankle_height_m)[:, :2]
        return xy

    def outside(self, xy: np.ndarray) -> np.ndarray | None:
        if self.template is None:
            return None
        return ~self.template.inside(xy, self.cfg.court_margin_m)

    def place(self, result: FrameResult) -> FrameResult:
        """``result`` with each person's ``court_xy`` (and ``outside_court`` where the court is known) set; raises
        CalibrationError for a frame whose size does not fit its camera's calibration."""
        self._placed(result)
        return result

    def _placed(self, result: FrameResult) -> tuple[list, np.ndarray, np.ndarray]:
        """A camera's people (those inside its region of interest), their keypoints ``[N, 17, 3]`` and court points
        ``[N, 2]`` (NaN where none), each person's ``court_xy`` set on the way."""
        people = [p for p in result.people if not p.outside_roi]
        n = len(people)
        kp = np.array([p.keypoints for p in people], dtype=np.float64).reshape(n, N_KEYPOINTS, 3)
        boxes = np.array([p.box for p in people], dtype=np.float64).reshape(n, 4)
        self._check_size(result)
        xy = self.court_xy(result.stream_id, *ground_pixels(kp, boxes, self.cfg.min_score)) if n else np.zeros((0, 2))
        if xy is None:
            return people, kp, np.full((n, 2), np.nan)
        out = self.outside(xy)
        placed = np.round(xy, 3).tolist()
        finite = np.isfinite(xy).all(axis=1).tolist()
        for i, p in enumerate(people):
            if finite[i]:
                p.court_xy = tuple(placed[i])
                p.outside_court = None if out is None else bool(out[i])
        return people, kp, xy

    def _view(self, result: FrameResult) -> View:
        """A camera's people as arrays, placed on the court (each person's ``court_xy`` set on the way)."""
        people, kp, xy = self._placed(result)
        n, stream = len(people), result.stream_id
        norm = None
        if stream in self.cameras:
            flat = self.cameras[stream].normalised(kp[..., :2].reshape(-1, 2)).reshape(n, N_KEYPOINTS, 2)
            norm = np.concatenate([flat, np.ones((n, N_KEYPOINTS, 1))], axis=2)
        ids = np.array([p.track_id for p in people], dtype=np.int64)
        return View(stream, ids, kp, xy, norm)

    def _check_size(self, result: FrameResult) -> None:
        stream = result.stream_id
        if stream in self._checked or stream not in self.cameras:
            return
        cam = self.cameras[stream]
        w, h = cam.size
        if not (0 <= w - result.width <= CODEC_PADDING_PX and 0 <= h - result.height <= CODEC_PADDING_PX):
            check_size(cam, result.width, result.height)
        self._checked.add(stream)

    # -- per group frame ----------------------------------------------------------------------------------------

    def _pair_costs(self, views: dict[str, View]) -> Callable[[str, str], np.ndarray]:
        """Costs in units of their own threshold, so calibrated and court-point pairs mix (1.0: the limit). Two
        people who were one player on the last frame have theirs scaled by ``hint_factor``: that keeps the
        association stable where costs are close."""
        cfg = self.cfg
        last = {s: np.array([self._last_views.get((s, t), -1) for t in v.track_ids.tolist()]) for s, v in views.items()}

        def costs(sa: str, sb: str) -> np.ndarray:
            if sa in self.cameras and sb in self.cameras:
                key = (sa, sb)
                if key not in self._essential:
                    self._essential[key] = essential(self.cameras[sa], self.cameras[sb])
                raw, limit = epipolar_costs(self._essential[key], views[sa], views[sb], cfg.min_score), cfg.max_epipolar
            else:
                raw, limit = ground_costs(views[sa], views[sb]), cfg.max_ground_m
            same = (last[sa][:, None] == last[sb][None]) & (last[sa][:, None] >= 0)
            scaled = raw / limit * np.where(same, cfg.hint_factor, 1.0)
            return np.where(raw >= UNMATCHED, UNMATCHED, scaled)

        return costs

    def fuse(self, results: Mapping[str, FrameResult], timestamp: float | None = None) -> GroupFrame:
        """One group frame from each camera's time-matched result (streams without a camera are left out)."""
        t0 = time.perf_counter()
        views = {
            stream: self._view(result)
            for stream, result in results.items()
            if stream in self.streams and not result.dropped
        }
        costs = self._pair_costs(views)
        clusters = [c.members for c in cluster_views({s: len(v) for s, v in views.items()}, costs, 1.0)]
        solved = self._triangulate(views, clusters)
        people, candidates = [], []
        for k, members in enumerate(clusters):
            person, candidate = self._fused(views, members, solved.get(k))
            if candidate is not None:
                people.append(person)
                candidates.append(candidate)
        now = timestamp if timestamp is not None else time.time()
        ids = self.tracker.update(now, candidates)
        kept = []
        for person, gid in zip(people, ids, strict=True):
            if gid is not None:
                person.group_id = gid
                kept.append(person)
        self._last_views = {(s, tid): p.group_id for p in kept for s, tid in p.views.items()}
        kept.sort(key=lambda p: p.group_id)
        frames = {s: r.frame_index for s, r in results.items() if s in views}
        ms = (time.perf_counter() - t0) * 1000.0
        return GroupFrame.model_construct(
            group=self.group, timestamp=timestamp, frames=frames, people=kept, fusion_ms=round(ms, 3),
            court=self.outline,
        )

    def _fused(
        self, views: dict[str, View], members: dict[str, int], tri: Solved | None
    ) -> tuple[GroupPerson, Candidate | None]:
        kp3d = np.zeros((N_KEYPOINTS, 4))
        reproj: list[float | None] = [None] * N_KEYPOINTS
        n_views = [0] * N_KEYPOINTS
        xy = None
        if tri is not None:
            # a view that disagrees with the others was another person: it leaves this one
            members = {s: i for s, i in members.items() if s not in tri.dropped}
            ok = np.isfinite(tri.points).all(axis=1)
            kp3d[ok, :3], kp3d[ok, 3] = tri.points[ok], tri.score[ok]
            reproj = [None if e != e else e for e in np.round(tri.reprojection_px, 2).tolist()]  # NaN: none
            n_views = tri.n_views.tolist()
            for joints in ([LEFT_ANKLE, RIGHT_ANKLE], [LEFT_HIP, RIGHT_HIP]):
                if ok[joints].all():
                    xy = tri.points[joints, :2].mean(axis=0)
                    break
            else:
                xy = tri.points[ok, :2].mean(axis=0) if ok.any() else None
        if xy is None:
            grounds = [views[s].ground[i] for s, i in members.items() if np.isfinite(views[s].ground[i]).all()]
            xy = np.mean(grounds, axis=0) if grounds else None
        view_ids = {s: int(views[s].track_ids[i]) for s, i in members.items()}
        has3d = any(n_views)
        out = self.outside(xy) if xy is not None else None
        person = GroupPerson.model_construct(  # built from checked numbers: no validation needed
            group_id=0, views=view_ids,
            court_xy=None if xy is None else (round(float(xy[0]), 3), round(float(xy[1]), 3)),
            outside_court=None if out is None else bool(out[0]),
            keypoints3d=np.round(kp3d, 4).tolist() if has3d else None,
            reprojection_px=reproj if has3d else None, n_views=n_views,
        )  # fmt: skip
        if xy is None:
            return person, None
        return person, Candidate(np.asarray(xy, dtype=np.float64), view_ids, len(members))

    def _triangulate(self, views: dict[str, View], clusters: list[dict[str, int]]) -> dict[int, Solved]:
        """Every person seen by two or more calibrated cameras triangulated in one batch (index in ``clusters`` ->
        result). A view whose person reprojects further than ``max_view_px`` (median) was another person: it is
        dropped and that person solved again; a person whose two views disagree gets no 3D."""
        order = self._camera_order
        cams = [self.cameras[s] for s in order]
        people = [k for k, m in enumerate(clusters) if sum(s in self.cameras for s in m) >= 2]
        if not people:
            return {}
        P, V, J = len(people), len(order), N_KEYPOINTS
        pix, nrm, sc = np.zeros((P, V, J, 2)), np.zeros((P, V, J, 2)), np.zeros((P, V, J))
        for p, k in enumerate(people):
            for v, s in enumerate(order):
                if s in clusters[k]:
                    view, i = views[s], clusters[k][s]
                    pix[p, v], nrm[p, v], sc[p, v] = (
                        view.keypoints[i, :, :2],
                        view.norm[i, :, :2],
                        view.keypoints[i, :, 2],
                    )
        dropped: list[set[str]] = [set() for _ in people]
        cfg = self.cfg
        for _ in range(V - 1):
            tri = triangulate_points(
                cams, pix.transpose(0, 2, 1, 3).reshape(P * J, V, 2), sc.transpose(0, 2, 1).reshape(P * J, V),
                nrm.transpose(0, 2, 1, 3).reshape(P * J, V, 2), cfg.min_score, cfg.outlier_px,
            )  # fmt: skip
            points = tri.points.reshape(P, J, 3)
            median = self._view_errors(cams, points, pix, sc)  # [P, V]
            worst = np.nan_to_num(median, nan=-1.0).argmax(axis=1)
            bad = np.flatnonzero(median[np.arange(P), worst] > cfg.max_view_px)
            if not len(bad):
                break
            for p in bad:
                present = (sc[p].max(axis=1) >= cfg.min_score).sum()
                if present <= 2:
                    sc[p] = 0.0  # two views that disagree: no 3D for this person
                else:
                    sc[p, worst[p]] = 0.0
                    dropped[p].add(order[worst[p]])
        out = {}
        for p, k in enumerate(people):
            rows = slice(p * J, (p + 1) * J)
            if tri.n_views[rows].any():
                out[k] = Solved(
                    tri.points[rows], tri.score[rows], tri.reprojection_px[rows], tri.views[rows], dropped[p]
                )
        return out

    def _view_errors(self, cams: list[Camera], points: np.ndarray, pix: np.ndarray, sc: np.ndarray) -> np.ndarray:
        """``[P, V]``: the median pixel error of each person's keypoints in each view that sees it (NaN: none)."""
        P, J = points.shape[:2]
        px, _ = project_all(cams, points.reshape(-1, 3))  # [V, P*J, 2]
        err = np.linalg.norm(px.reshape(len(cams), P, J, 2) - pix.transpose(1, 0, 2, 3), axis=3)  # [V, P, J]
        seen = (sc.transpose(1, 0, 2) >= self.cfg.min_score) & np.isfinite(err)
        return nan_median(np.where(seen, err, np.nan)).T


@dataclass
class Solved(Triangulated):
    """One person's triangulation, with the calibrated views dropped from it as another person's."""

    dropped: set[str] = field(default_factory=set)


def nan_median(values: np.ndarray) -> np.ndarray:
    """The median over the last axis, NaNs left out (NaN where all are): numpy's nanmedian is ~1 ms here."""
    s = np.sort(values, axis=-1)  # NaN sorts last
    n = np.isfinite(values).sum(axis=-1, keepdims=True)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0), axis=-1)
    hi = np.take_along_axis(s, np.maximum(n // 2, 0), axis=-1)
    return np.where(n > 0, (lo + hi) / 2, np.nan)[..., 0]
