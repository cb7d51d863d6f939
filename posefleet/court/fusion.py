"""A group's time-matched frames fused into court-level people: each person associated across the cameras, one
group id a player over time, court positions, and 17 keypoints in 3D where two calibrated cameras see them.

Plain Python (no Ray): ``posefleet run --group`` drives it in process, the group's fuser actor when served.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain

import numpy as np
from numba import njit

from posefleet.court.associate import UNMATCHED, View, cluster_views, epipolar_costs, essentials, ground_costs
from posefleet.court.calibration import CalibrationError, Camera, camera_from_model, check_rig, check_size
from posefleet.court.compiled import KERNEL, f64
from posefleet.court.group_tracker import Candidates, GroupTracker
from posefleet.court.homography import CourtTemplate, Homography, court_template, fit_homography
from posefleet.court.schema import CourtOutline, GroupFrame, GroupPerson
from posefleet.court.settings import GroupSettings
from posefleet.court.skeleton import BONES, BoneLengths, bone_lengths, hold_lengths
from posefleet.court.triangulate import (
    Rig,
    Triangulated,
    gather_people,
    mean_errors,
    on_floor,
    triangulate_people,
    undistort,
)
from posefleet.pipeline.schema import FrameResult

LEFT_ANKLE, RIGHT_ANKLE, LEFT_HIP, RIGHT_HIP = 15, 16, 11, 12
CODEC_PADDING_PX = 16  # a video's frames may be this much smaller than its calibrated sensor (1088 coded as 1080)
N_KEYPOINTS = 17
NO_ID = np.iinfo(np.int64).max  # above every group id


@njit(**KERNEL)
def _place_people(K, dist, untilt, R, center, view, keypoints, boxes, min_score, floor_z, ankle_height, normalise):
    """People ``keypoints [N, 17, 3]``, ``boxes [N, 4]``, each seen by rig camera ``view [N]`` (-1: by none):
    where each stands in the image ``[N, 2]`` (between its ankles when both are seen, else its box's bottom
    centre), where that is on the floor ``[N, 2]`` (NaN: not calibrated, or not on the floor; an ankle seen lies
    ``ankle_height`` over the floor), and (``normalise``) its keypoints undistorted and normalised, homogeneous
    ``[N, 17, 3]``."""
    n = keypoints.shape[0]
    norm, pixels, xy = np.ones((n, N_KEYPOINTS, 3)), np.empty((n, 2)), np.full((n, 2), np.nan)
    for i in range(n):
        left, right = keypoints[i, LEFT_ANKLE], keypoints[i, RIGHT_ANKLE]
        seen = left[2] >= min_score and right[2] >= min_score
        if seen:
            pixels[i, 0], pixels[i, 1] = (left[0] + right[0]) / 2, (left[1] + right[1]) / 2
        else:
            pixels[i, 0], pixels[i, 1] = (boxes[i, 0] + boxes[i, 2]) / 2, boxes[i, 3]
        v = view[i]
        if v < 0:
            continue
        if normalise:
            for j in range(N_KEYPOINTS):
                norm[i, j, 0], norm[i, j, 1] = undistort(K, dist, untilt, v, keypoints[i, j, 0], keypoints[i, j, 1])
        x, y = undistort(K, dist, untilt, v, pixels[i, 0], pixels[i, 1])
        xy[i, 0], xy[i, 1] = on_floor(R, center, v, x, y, floor_z + (ankle_height if seen else 0.0))
    return norm, pixels, xy


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
            min_views_new=2 if len(self.cameras) >= 2 else 1, streams=sorted(self.streams),
        )  # fmt: skip
        self._column = {s: c for c, s in enumerate(self.tracker.streams)}
        self._last_views: dict[str, dict[int, int]] = {}  # stream -> track id -> group id on the last frame
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
        self.tracker.warm()
        rig, cfg = self._rig, self.cfg
        _place_people(rig.K, rig.dist, rig.untilt, rig.R, rig.center, np.zeros(0, np.int64),
                      np.zeros((0, N_KEYPOINTS, 3)), np.zeros((0, 4)), 0.0, 0.0, 0.0, True)  # fmt: skip
        if V < 2:
            return  # one calibrated camera at most: placed on the floor, nothing associated or triangulated
        J = N_KEYPOINTS
        epipolar_costs(self._essentials, np.zeros((V, 0, J, 3)), np.zeros((V, 0, J)), cfg.min_score)
        cluster_views(np.ones(2, np.int64), np.zeros((2, 2, 1, 1)), 1.0)
        gather_people(np.zeros((V, 0, J, 3)), np.zeros((V, 0, J, 3)), np.zeros((0, V), np.int64))
        triangulate_people(self._rig, np.zeros((0, J, V, 2)), np.zeros((0, J, V)), np.zeros((0, J, V, 2)),
                           cfg.min_score, cfg.outlier_px, cfg.max_view_px)  # fmt: skip
        mean_errors(self._rig, np.zeros((0, J, 3)), np.zeros((0, J, V, 2)), np.zeros((0, J, V), bool))
        hold_lengths(np.zeros((0, J, 3)), np.zeros((0, len(BONES))), cfg.bones.tolerance)
        bone_lengths(np.zeros((0, J, 3)))
        self.bones.estimate([])
        _standing(np.zeros((0, J, 3)))

    @property
    def streams(self) -> set[str]:
        return set(self.cameras) | set(self.homographies)

    # -- per camera ---------------------------------------------------------------------------------------------

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
        view = np.full(n, -1)  # each person's camera in the rig (-1: placed by court points)
        ends = np.cumsum([len(ps) for ps in people]).tolist()
        spans = [slice(end - len(ps), end) for ps, end in zip(people, ends, strict=True)]
        for result, at in zip(results, spans, strict=True):
            if result.stream_id in self._view_index:
                view[at] = self._view_index[result.stream_id]
        rig, cfg = self._rig, self.cfg
        norm, pixels, xy = _place_people(rig.K, rig.dist, rig.untilt, rig.R, rig.center, view, kp, boxes,
                                         cfg.min_score, cfg.floor_z, cfg.ankle_height_m, normalise)  # fmt: skip
        for result, at in zip(results, spans, strict=True):
            if result.stream_id in self.homographies and at.stop > at.start:
                xy[at] = self.homographies[result.stream_id].to_court(pixels[at])
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

    def _pair_costs(self, views: dict[str, View], kp: np.ndarray, norm: np.ndarray,
                    last: dict[str, np.ndarray]) -> np.ndarray:  # fmt: skip
        """``[S, S, N, N]`` every pair of the frame's views' costs (``views``' order; :data:`UNMATCHED` past a
        view's people), in units of their own threshold, so calibrated and court-point pairs mix (1.0: the limit).
        Two people who were one player on the last frame (``last``: each view's people's group ids then, -1: none)
        have theirs scaled by ``hint_factor``: that keeps the association stable where costs are close. Every
        calibrated pair's costs come from one batched call; all are scaled in one batch."""
        cfg = self.cfg
        streams = list(views)
        S, N = len(streams), max(map(len, views.values()), default=0)
        calibrated = [a for a, s in enumerate(streams) if s in self._view_index]
        rig = [self._view_index[streams[a]] for a in calibrated]
        epipolar = epipolar_costs(self._essentials, norm, kp[..., 2], cfg.min_score) if kp.shape[1] else None
        if epipolar is not None and len(calibrated) == S:  # calibrated cameras only: the batch, in frame order
            raw, limit = epipolar[rig][:, rig], cfg.max_epipolar
        else:
            raw, limit = np.full((S, S, N, N), UNMATCHED), np.full((S, S, 1, 1), cfg.max_ground_m)
            if epipolar is not None:
                n = np.arange(epipolar.shape[2])
                raw[np.ix_(calibrated, calibrated, n, n)] = epipolar[np.ix_(rig, rig)]
                limit[np.ix_(calibrated, calibrated)] = cfg.max_epipolar
            for a, sa in enumerate(streams):  # court-point cameras: metres between the people's court positions
                for b, sb in enumerate(streams):
                    if a != b and not (a in calibrated and b in calibrated):
                        raw[a, b, : len(views[sa]), : len(views[sb])] = ground_costs(views[sa], views[sb])
        held = np.full((S, N), -1)
        for a, s in enumerate(streams):
            held[a, : len(last[s])] = last[s]
        same = (held[:, None, :, None] == held[None, :, None, :]) & (held[:, None, :, None] >= 0)
        return np.where(raw >= UNMATCHED, UNMATCHED, raw / limit * np.where(same, cfg.hint_factor, 1.0))

    def fuse(self, results: Mapping[str, FrameResult], timestamp: float | None = None) -> GroupFrame:
        """One group frame from each camera's time-matched result (streams without a camera are left out)."""
        t0 = time.thread_time()  # CPU time: what fusing costs, not what other threads took meanwhile
        views = self._views([r for s, r in results.items() if s in self.streams and not r.dropped])
        kp, norm = self._stacked(views)
        last = {}
        for s, v in views.items():
            held = self._last_views.get(s, {})
            last[s] = np.array([held.get(t, -1) for t in v.track_ids.tolist()], np.int64)
        costs = self._pair_costs(views, kp, norm, last)
        streams = list(views)
        at, members = cluster_views(np.array([len(v) for v in views.values()], np.int64), costs, 1.0)
        order = [streams[v] for v in at]
        # each cluster's group id on the last frame: the one its views' tracks had, if they agree (-1: none)
        was = np.stack([last[s][np.maximum(members[:, a], 0)] for a, s in enumerate(order)], axis=1) if order else None
        if was is not None:
            was = np.where(members >= 0, was, -1)
            top, low = was.max(axis=1, initial=-1), np.where(was >= 0, was, NO_ID).min(axis=1)
            previous = np.where(top == low, top, -1)
        else:
            previous = np.zeros(0, np.int64)
        solved = self._triangulate(order, members, kp, norm, previous)
        candidates, rows = self._candidates(views, order, members, solved)
        now = timestamp if timestamp is not None else time.time()
        ids = self.tracker.update(now, candidates)
        kept = [c for c, gid in enumerate(ids) if gid is not None]
        if solved is not None and self.cfg.bones.enabled:
            measured = [c for c in kept if rows[c] >= 0]
            self.bones.add([ids[c] for c in measured], solved.bones[[rows[c] for c in measured]])  # type: ignore[misc]
            self.bones.keep(set(self.tracker.ids.tolist()))
        held = candidates.views[kept].T.tolist()  # [S, kept]
        kept_ids = [ids[c] for c in kept]
        self._last_views = {
            s: {t: g for t, g in zip(column, kept_ids, strict=True) if t >= 0}
            for s, column in zip(self.tracker.streams, held, strict=True)
        }
        people = self._people(candidates, rows, solved, ids, sorted(kept, key=ids.__getitem__))
        frames = {s: r.frame_index for s, r in results.items() if s in views}
        ms = (time.thread_time() - t0) * 1000.0
        return GroupFrame.model_construct(
            group=self.group, timestamp=timestamp, frames=frames, people=people, fusion_ms=round(ms, 3),
            court=self.outline,
        )

    def _candidates(
        self, views: dict[str, View], order: list[str], members: np.ndarray, solved: Solved | None,
    ) -> tuple[Candidates, list[int]]:  # fmt: skip
        """Each cluster (``members [K, len(order)]``) that stands somewhere, as a candidate for the group tracker:
        its court position from its 3D feet, else hips, else any joint, else its views' ground points, its views
        (less those the triangulation dropped as another person's); and its row in ``solved`` (-1: no 3D)."""
        K = len(members)
        row = np.full(K, -1)
        xy = np.full((K, 2), np.nan)
        if solved is not None:
            row[solved.people] = np.arange(len(solved.people))
            xy[solved.people] = _standing(f64(solved.points))
            if solved.dropped.any():  # the calibrated views dropped as another person's leave it
                members = members.copy()
                for p, v in zip(*np.nonzero(solved.dropped), strict=True):
                    members[solved.people[p], order.index(self._camera_order[v])] = -1
        for k in np.flatnonzero(np.isnan(xy[:, 0])).tolist():  # no 3D: its views' ground points
            grounds = [views[s].ground[i] for s, i in zip(order, members[k].tolist(), strict=True) if i >= 0]
            grounds = [g for g in grounds if np.isfinite(g).all()]
            if grounds:
                xy[k] = sum(grounds) / len(grounds)
        placed = np.flatnonzero(np.isfinite(xy).all(axis=1))
        members = members[placed]
        held = np.full((len(placed), len(self._column)), -1, np.int64)  # [K, S] in the tracker's streams
        for a, s in enumerate(order):
            held[:, self._column[s]] = np.where(members[:, a] >= 0, views[s].track_ids[members[:, a]], -1)
        return Candidates(xy[placed], held), row[placed].tolist()

    def _people(
        self, candidates: Candidates, rows: list[int], solved: Solved | None, ids: list[int | None], kept: list[int]
    ) -> list[GroupPerson]:
        """The players of a group frame: the candidates ``kept`` (in their order) with their group ``ids``, 3D
        keypoints from their ``rows`` of ``solved`` (-1: none)."""
        xy = candidates.xy[kept]
        out = self.outside(xy)
        outs = [None] * len(kept) if out is None else out.tolist()
        court = np.round(xy, 3).tolist()
        with3d = [rows[c] for c in kept if rows[c] >= 0]
        if with3d:
            assert solved is not None
            points = solved.points[with3d]
            full = np.concatenate([points, solved.score[with3d, :, None]], axis=2)
            full[np.isnan(points).any(axis=2)] = 0.0
            err = np.round(solved.reprojection_px[with3d], 2)
            solved_rows = iter(zip(np.round(full, 4).tolist(), np.where(np.isnan(err), None, err).tolist(),
                                   solved.n_views[with3d].tolist(), strict=True))  # fmt: skip
        none = [0] * N_KEYPOINTS
        people = []
        for c, xy_c, out_c, views in zip(kept, court, outs, candidates.views[kept], strict=True):
            kp3d, reproj, n_views = next(solved_rows) if rows[c] >= 0 else (None, None, none)
            people.append(GroupPerson.model_construct(  # built from checked numbers: no validation needed
                group_id=ids[c], views=self.tracker.views_of(views), court_xy=tuple(xy_c), outside_court=out_c,
                keypoints3d=kp3d, reprojection_px=reproj, n_views=n_views,
            ))  # fmt: skip
        return people

    def _triangulate(
        self, order: list[str], members: np.ndarray, kp: np.ndarray, norm: np.ndarray, previous: np.ndarray
    ) -> Solved | None:
        """Every person (cluster, ``members [K, len(order)]``) seen by two or more calibrated cameras triangulated
        in one batch (None: nobody). A view whose person reprojects further than ``max_view_px`` (median) was
        another person: it is dropped and that person solved again; a person whose two views disagree gets no
        3D. A person who was one player on the last frame (``previous [K]``, -1: none) has its limbs fitted to
        that player's bone lengths (:mod:`posefleet.court.skeleton`)."""
        V = len(self._camera_order)
        idx = np.full((len(members), V), -1)  # [K, V] each cluster's person in each camera of the rig
        for a, s in enumerate(order):
            if s in self._view_index:
                idx[:, self._view_index[s]] = members[:, a]
        people = np.flatnonzero((idx >= 0).sum(axis=1) >= 2)
        if not len(people):
            return None
        pix, sc, nrm = gather_people(kp, norm, idx[people])
        cfg = self.cfg
        tri, dropped_views = triangulate_people(self._rig, pix, sc, nrm, cfg.min_score, cfg.outlier_px,
                                                cfg.max_view_px)  # fmt: skip
        n_views = tri.views.sum(axis=2)
        solved = np.flatnonzero(n_views.any(axis=1))
        if not len(solved):
            return None
        if len(solved) < len(people):  # some got no 3D (their views disagreed): the others
            tri = Triangulated(*(a[solved] for a in (tri.points, tri.score, tri.reprojection_px, tri.views,
                                                      tri.view_px)))  # fmt: skip
            pix, n_views, dropped_views, people = pix[solved], n_views[solved], dropped_views[solved], people[solved]
        points, reproj = tri.points, tri.reprojection_px
        measured = None
        if cfg.bones.enabled:
            measured = bone_lengths(points)
            held = self.bones.estimate([g if g >= 0 else None for g in previous[people].tolist()])
            if np.isfinite(held).any():
                points = hold_lengths(points, held, cfg.bones.tolerance)
                moved = (points != tri.points).any(axis=2)  # the joints held: their errors again
                reproj = np.where(moved, mean_errors(self._rig, points, pix, tri.views & moved[..., None]), reproj)
        return Solved(
            people=people, points=points, score=tri.score, reprojection_px=reproj, n_views=n_views,
            dropped=dropped_views, bones=measured,
        )  # fmt: skip


@njit(**KERNEL)
def _standing(points):
    """Where 3D people ``points [P, J, 3]`` (NaN: no joint) stand on the floor ``[P, 2]``: between their feet,
    else their hips, else the mean of their joints (NaN: none)."""
    out = np.full((points.shape[0], 2), np.nan)
    for p in range(points.shape[0]):
        for a, b in ((LEFT_ANKLE, RIGHT_ANKLE), (LEFT_HIP, RIGHT_HIP)):
            if np.isfinite(points[p, a]).all() and np.isfinite(points[p, b]).all():
                out[p, 0] = (points[p, a, 0] + points[p, b, 0]) / 2
                out[p, 1] = (points[p, a, 1] + points[p, b, 1]) / 2
                break
        else:
            x, y, n = 0.0, 0.0, 0
            for j in range(points.shape[1]):
                if np.isfinite(points[p, j]).all():
                    x, y, n = x + points[p, j, 0], y + points[p, j, 1], n + 1
            if n:
                out[p, 0], out[p, 1] = x / n, y / n
    return out


@dataclass
class Solved:
    """The people triangulated on a group frame (their cluster indices), per keypoint: ``points [P, J, 3]``
    (NaN where none), ``score [P, J]``, ``reprojection_px [P, J]``, ``n_views [P, J]``; and the calibrated views
    dropped from each as another person's."""

    people: np.ndarray  # [P] their clusters
    points: np.ndarray
    score: np.ndarray
    reprojection_px: np.ndarray
    n_views: np.ndarray
    dropped: np.ndarray  # [P, V] the rig's views dropped
    bones: np.ndarray | None = None  # [P, B] each bone's length as triangulated, before it was held

