"""A group's time-matched frames fused into court-level people: each person associated across the cameras, one
group id a player over time, court positions, and 17 keypoints in 3D where two calibrated cameras see them.

Plain Python (no Ray): ``posefleet run --group`` drives it in process, the group's fuser actor when served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from posefleet.court.associate import UNMATCHED, View, cluster_views, epipolar_costs, essentials, ground_costs
from posefleet.court.calibration import CalibrationError, Camera, camera_from_model, check_rig, check_size
from posefleet.court.group_tracker import Candidate, GroupTracker
from posefleet.court.homography import CourtTemplate, Homography, court_template, fit_homography
from posefleet.court.schema import CourtOutline, GroupFrame, GroupPerson
from posefleet.court.settings import GroupSettings
from posefleet.court.skeleton import BONES, BoneLengths, bone_lengths, hold_lengths
from posefleet.court.triangulate import Rig, pixel_errors, triangulate_people
from posefleet.pipeline.schema import FrameResult

LEFT_ANKLE, RIGHT_ANKLE, LEFT_HIP, RIGHT_HIP = 15, 16, 11, 12
CODEC_PADDING_PX = 16  # a video's frames may be this much smaller than its calibrated sensor (1088 coded as 1080)
N_KEYPOINTS = 17


def ground_pixels(keypoints: np.ndarray, boxes: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Where people stand in the image ``[N, 2]``: between the ankles when both are seen (``[N]`` True), else the
    box's bottom centre. ``keypoints [N, 17, 3]``, ``boxes [N, 4]``."""
    ankles = keypoints[:, LEFT_ANKLE : RIGHT_ANKLE + 1]
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
        self._camera_order = sorted(self.cameras)
        self._view_index = {s: v for v, s in enumerate(self._camera_order)}
        self._rig = Rig.of([self.cameras[s] for s in self._camera_order])  # stacked once for the batched maths
        self._essentials = essentials(list(self._rig.cameras))
        self.bones = BoneLengths(self.cfg.bones.window, self.cfg.bones.min_samples)
        self._warm()

    def _warm(self) -> None:
        """Load the compiled kernels now (compile them, the first time on a machine: ~10 s, cached on disk), so
        that no frame waits for them."""
        V = len(self._rig)
        if V < 2:
            return  # homography cameras alone: no kernel runs
        cfg, J = self.cfg, N_KEYPOINTS
        epipolar_costs(self._essentials, np.zeros((V, 0, J, 3)), np.zeros((V, 0, J)), cfg.min_score)
        triangulate_people(self._rig, np.zeros((0, J, V, 2)), np.zeros((0, J, V)), np.zeros((0, J, V, 2)),
                           cfg.min_score, cfg.outlier_px, cfg.max_view_px)  # fmt: skip
        pixel_errors(self._rig, np.zeros((0, 3)), np.zeros((0, V, 2)))
        hold_lengths(np.zeros((0, J, 3)), np.zeros((0, len(BONES))), cfg.bones.tolerance)
        self.bones.estimate([])

    @property
    def streams(self) -> set[str]:
        return set(self.cameras) | set(self.homographies)

    # -- per camera ---------------------------------------------------------------------------------------------

    def _floor_z(self, ankles: np.ndarray | None) -> float | np.ndarray:
        """The height a ground point lies at: the floor's, an ankle's over it."""
        return self.cfg.floor_z + (0.0 if ankles is None else np.where(ankles, self.cfg.ankle_height_m, 0.0))

    def outside(self, xy: np.ndarray) -> np.ndarray | None:
        if self.template is None:
            return None
        return ~self.template.inside(xy, self.cfg.court_margin_m)

    def place(self, result: FrameResult) -> FrameResult:
        """``result`` with each person's ``court_xy`` (and ``outside_court`` where the court is known) set; raises
        CalibrationError for a frame whose size does not fit its camera's calibration."""
        if result.stream_id in self.streams:
            self._views([result], normalise=False)
        return result

    def _views(self, results: list[FrameResult], normalise: bool = True) -> dict[str, View]:
        """Each camera's people (those inside its region of interest) as arrays, placed on the court (each person's
        ``court_xy`` set on the way): every camera's people in one batch, a calibrated camera's keypoints and
        ground points undistorted in one call (``normalise``: the keypoints too, for the association and
        triangulation)."""
        for result in results:
            self._check_size(result)
        people = [[p for p in r.people if not p.outside_roi] for r in results]
        flat = [p for ps in people for p in ps]
        n = len(flat)
        # numbers straight out of the people's lists: numpy's nested-sequence conversion is the slow part here
        kp = np.fromiter(chain.from_iterable(chain.from_iterable(p.keypoints for p in flat)), np.float64,
                         count=n * N_KEYPOINTS * 3).reshape(n, N_KEYPOINTS, 3)  # fmt: skip
        boxes = np.fromiter(chain.from_iterable(p.box for p in flat), np.float64, count=n * 4).reshape(n, 4)
        ids = np.fromiter((p.track_id for p in flat), np.int64, count=n)
        pixels, ankles = ground_pixels(kp, boxes, self.cfg.min_score)
        xy = np.full((n, 2), np.nan)
        norm = np.ones((n, N_KEYPOINTS, 3))
        ground = np.full((n, 2), np.nan)
        view = np.full(n, -1)  # each person's camera in the rig (-1: placed by court points)
        ends = np.cumsum([len(ps) for ps in people]).tolist()
        spans = [slice(end - len(ps), end) for ps, end in zip(people, ends, strict=True)]
        for result, at in zip(results, spans, strict=True):
            stream, m = result.stream_id, at.stop - at.start
            if not m:
                continue
            if stream in self.homographies:
                xy[at] = self.homographies[stream].to_court(pixels[at])
                continue
            cam = self.cameras[stream]
            view[at] = self._view_index[stream]
            if normalise:
                both = cam.normalised(np.concatenate([kp[at, :, :2].reshape(-1, 2), pixels[at]]))
                norm[at, :, :2] = both[: m * N_KEYPOINTS].reshape(m, N_KEYPOINTS, 2)
                ground[at] = both[m * N_KEYPOINTS :]
            else:
                ground[at] = cam.normalised(pixels[at])
        calibrated = view >= 0
        if calibrated.any():  # every calibrated camera's ground points onto the floor in one batch
            xy[calibrated] = self._rig.floor(view[calibrated], ground[calibrated], self._floor_z(ankles[calibrated]))
        out = self.outside(xy)
        placed = np.round(xy, 3).tolist()
        finite = np.isfinite(xy).all(axis=1).tolist()
        outs = [None] * n if out is None else out.tolist()
        for p, xy_p, ok, o in zip(flat, placed, finite, outs, strict=True):
            if ok:  # plain attributes: these are the fuser's own results, and pydantic's checked setattr costs here
                object.__setattr__(p, "court_xy", tuple(xy_p))
                object.__setattr__(p, "outside_court", o)
        return {
            r.stream_id: View(r.stream_id, ids[at], kp[at], xy[at], norm[at] if r.stream_id in self.cameras else None)
            for r, at in zip(results, spans, strict=True)
        }

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

    def _stacked(self, views: dict[str, View]) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated views' people padded into one array each, in camera order: keypoints ``[V, N, J, 3]``
        (score 0 for padding) and normalised keypoints ``[V, N, J, 3]``."""
        order = self._camera_order
        counts = np.array([len(views[s]) if s in views else 0 for s in order])
        N = int(counts.max(initial=0))
        kp, norm = np.zeros((len(order), N, N_KEYPOINTS, 3)), np.zeros((len(order), N, N_KEYPOINTS, 3))
        for v, s in enumerate(order):
            if counts[v]:
                kp[v, : counts[v]], norm[v, : counts[v]] = views[s].keypoints, views[s].norm
        return kp, norm

    def _pair_costs(self, views: dict[str, View], kp: np.ndarray, norm: np.ndarray) -> Callable[[str, str], np.ndarray]:
        """Costs in units of their own threshold, so calibrated and court-point pairs mix (1.0: the limit). Two
        people who were one player on the last frame have theirs scaled by ``hint_factor``: that keeps the
        association stable where costs are close. Every calibrated pair's costs come from one batched call."""
        cfg = self.cfg
        last = {s: np.array([self._last_views.get((s, t), -1) for t in v.track_ids.tolist()]) for s, v in views.items()}
        epipolar = epipolar_costs(self._essentials, norm, kp[..., 2], cfg.min_score) if kp.shape[1] else None
        index = self._view_index

        def costs(sa: str, sb: str) -> np.ndarray:
            if sa in index and sb in index and epipolar is not None:
                raw = epipolar[index[sa], index[sb], : len(views[sa]), : len(views[sb])]
                limit = cfg.max_epipolar
            else:
                raw, limit = ground_costs(views[sa], views[sb]), cfg.max_ground_m
            same = (last[sa][:, None] == last[sb][None]) & (last[sa][:, None] >= 0)
            scaled = raw / limit * np.where(same, cfg.hint_factor, 1.0)
            return np.where(raw >= UNMATCHED, UNMATCHED, scaled)

        return costs

    def fuse(self, results: Mapping[str, FrameResult], timestamp: float | None = None) -> GroupFrame:
        """One group frame from each camera's time-matched result (streams without a camera are left out)."""
        t0 = time.thread_time()  # CPU time: what fusing costs, not what other threads took meanwhile
        views = self._views([r for s, r in results.items() if s in self.streams and not r.dropped])
        kp, norm = self._stacked(views)
        costs = self._pair_costs(views, kp, norm)
        clusters = [c.members for c in cluster_views({s: len(v) for s, v in views.items()}, costs, 1.0)]
        solved = self._triangulate(views, kp, norm, clusters)
        people, candidates, rows = self._people(views, clusters, solved)
        now = timestamp if timestamp is not None else time.time()
        ids = self.tracker.update(now, candidates)
        if solved is not None and self.cfg.bones.enabled:
            measured = [(gid, r) for gid, r in zip(ids, rows, strict=True) if gid is not None and r >= 0]
            self.bones.add([gid for gid, _ in measured], solved.bones[[r for _, r in measured]])
            self.bones.keep({t.group_id for t in self.tracker.tracks})
        kept = []
        for person, gid in zip(people, ids, strict=True):
            if gid is not None:
                person.group_id = gid
                kept.append(person)
        self._last_views = {(s, tid): p.group_id for p in kept for s, tid in p.views.items()}
        kept.sort(key=lambda p: p.group_id)
        frames = {s: r.frame_index for s, r in results.items() if s in views}
        ms = (time.thread_time() - t0) * 1000.0
        return GroupFrame.model_construct(
            group=self.group, timestamp=timestamp, frames=frames, people=kept, fusion_ms=round(ms, 3),
            court=self.outline,
        )

    def _people(
        self, views: dict[str, View], clusters: list[dict[str, int]], solved: Solved | None
    ) -> tuple[list[GroupPerson], list[Candidate], list[int]]:
        """Each cluster as a person (3D where it was triangulated, its court position from its 3D feet, else hips,
        else any joint, else its views' ground points), and as a candidate for the group tracker (those placed),
        with its row in ``solved`` (-1: no 3D)."""
        K = len(clusters)
        row = np.full(K, -1)
        xy = np.full((K, 2), np.nan)
        kp3d: list = [None] * K
        reproj: list = [None] * K
        n_views: list = [[0] * N_KEYPOINTS] * K
        if solved is not None:
            row[solved.people] = np.arange(len(solved.people))
            ok = np.isfinite(solved.points).all(axis=2)  # [P, J]
            pts = np.where(ok[..., None], solved.points, np.nan)
            feet, hips = ok[:, [LEFT_ANKLE, RIGHT_ANKLE]].all(axis=1), ok[:, [LEFT_HIP, RIGHT_HIP]].all(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):  # a person without a joint: NaN, placed below
                anywhere = np.where(ok[..., None], pts[..., :2], 0.0).sum(axis=1) / ok.sum(axis=1)[:, None]
            at_hips = np.where(hips[:, None], pts[:, [LEFT_HIP, RIGHT_HIP], :2].mean(axis=1), anywhere)
            xy[solved.people] = np.where(feet[:, None], pts[:, [LEFT_ANKLE, RIGHT_ANKLE], :2].mean(axis=1), at_hips)
            full = np.zeros((*ok.shape, 4))
            full[ok] = np.c_[solved.points[ok], solved.score[ok]]
            kp3d_rows = np.round(full, 4).tolist()
            err = np.round(solved.reprojection_px, 2)
            reproj_rows = np.where(np.isfinite(err), err, None).tolist()
            views_rows = solved.n_views.tolist()
            for p, k in enumerate(solved.people):
                kp3d[k], reproj[k], n_views[k] = kp3d_rows[p], reproj_rows[p], views_rows[p]
        members = [
            {s: i for s, i in m.items() if s not in solved.dropped[row[k]]} if row[k] >= 0 else m  # type: ignore[union-attr]
            for k, m in enumerate(clusters)
        ]
        for k in np.flatnonzero(~np.isfinite(xy).all(axis=1)).tolist():
            grounds = [views[s].ground[i] for s, i in members[k].items() if np.isfinite(views[s].ground[i]).all()]
            if grounds:
                xy[k] = np.mean(grounds, axis=0)
        placed = np.isfinite(xy).all(axis=1)
        out = self.outside(xy)
        outs = [None] * K if out is None else out.tolist()
        court = np.round(xy, 3).tolist()
        people, candidates, rows = [], [], []
        for k in range(K):
            view_ids = {s: int(views[s].track_ids[i]) for s, i in members[k].items()}
            if not placed[k]:
                continue
            has3d = row[k] >= 0
            people.append(GroupPerson.model_construct(  # built from checked numbers: no validation needed
                group_id=0, views=view_ids, court_xy=tuple(court[k]), outside_court=outs[k],
                keypoints3d=kp3d[k] if has3d else None, reprojection_px=reproj[k] if has3d else None,
                n_views=n_views[k],
            ))  # fmt: skip
            candidates.append(Candidate(xy[k], view_ids, len(members[k])))
            rows.append(int(row[k]))
        return people, candidates, rows

    def _triangulate(
        self, views: dict[str, View], kp: np.ndarray, norm: np.ndarray, clusters: list[dict[str, int]]
    ) -> Solved | None:
        """Every person seen by two or more calibrated cameras triangulated in one batch (None: nobody). A view
        whose person reprojects further than ``max_view_px`` (median) was another person: it is dropped and that
        person solved again; a person whose two views disagree gets no 3D. A person who was one player on the last
        frame has its limbs fitted to that player's bone lengths (:mod:`posefleet.court.skeleton`)."""
        order = self._camera_order
        people = [k for k, m in enumerate(clusters) if sum(s in self.cameras for s in m) >= 2]
        if not people:
            return None
        V = len(order)
        idx = np.array([[clusters[k].get(s, -1) for s in order] for k in people])  # [P, V]
        seen = idx >= 0
        got = kp[np.arange(V)[None], np.maximum(idx, 0)].transpose(0, 2, 1, 3)  # [P, J, V, 3]
        pix = got[..., :2]
        nrm = norm[np.arange(V)[None], np.maximum(idx, 0)][..., :2].transpose(0, 2, 1, 3)
        sc = np.where(seen[:, None], got[..., 2], 0.0)
        cfg = self.cfg
        tri, dropped_views = triangulate_people(self._rig, pix, sc, nrm, cfg.min_score, cfg.outlier_px,
                                                cfg.max_view_px)  # fmt: skip
        n_views = tri.views.sum(axis=2)
        solved = np.flatnonzero(n_views.any(axis=1))
        if not len(solved):
            return None
        points, reproj = tri.points[solved], tri.reprojection_px[solved]
        measured = None
        if cfg.bones.enabled:
            measured = bone_lengths(points)
            last = [self._last_player(views, clusters[people[p]]) for p in solved.tolist()]
            held = self.bones.estimate(last)
            if np.isfinite(held).any():
                points = hold_lengths(points, held, cfg.bones.tolerance)
                reproj = self._reprojection(points, pix[solved], tri.views[solved])
        return Solved(
            people=[people[p] for p in solved.tolist()], points=points, score=tri.score[solved],
            reprojection_px=reproj, n_views=n_views[solved],
            dropped=[{order[v] for v in np.flatnonzero(dropped_views[p]).tolist()} for p in solved.tolist()],
            bones=measured,
        )  # fmt: skip

    def _last_player(self, views: dict[str, View], members: dict[str, int]) -> int | None:
        """The group id this person's camera tracks had on the last frame (None: none had one, or they differ)."""
        ids = {self._last_views.get((s, int(views[s].track_ids[i]))) for s, i in members.items()} - {None}
        return ids.pop() if len(ids) == 1 else None

    def _reprojection(self, points: np.ndarray, pixels: np.ndarray, used: np.ndarray) -> np.ndarray:
        """``[P, J]`` the mean pixel error of ``points [P, J, 3]`` in the views ``used [P, J, V]`` of their
        ``pixels [P, J, V, 2]`` (NaN where no point)."""
        P, J, V = used.shape
        err = pixel_errors(self._rig, points.reshape(P * J, 3), pixels.reshape(P * J, V, 2))[0].reshape(P, J, V)
        n = used.sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, np.where(used, err, 0.0).sum(axis=2) / n, np.nan)


@dataclass
class Solved:
    """The people triangulated on a group frame (their cluster indices), per keypoint: ``points [P, J, 3]``
    (NaN where none), ``score [P, J]``, ``reprojection_px [P, J]``, ``n_views [P, J]``; and the calibrated views
    dropped from each as another person's."""

    people: list[int]
    points: np.ndarray
    score: np.ndarray
    reprojection_px: np.ndarray
    n_views: np.ndarray
    dropped: list[set[str]] = field(default_factory=list)
    bones: np.ndarray | None = None  # [P, B] each bone's length as triangulated, before it was held

