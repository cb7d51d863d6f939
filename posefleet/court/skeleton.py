"""A player's limbs keep their length: each group id's arm and leg bones estimated over time (the median of the
lengths its triangulated joints gave lately), and each new 3D pose fitted to them.

Triangulated joints jitter along the bone as much as across it, so a forearm seen by four cameras measures
20% longer or shorter from frame to frame. A person's bones do not change: once a player has enough samples,
each child joint (elbow, wrist, knee, ankle) is placed on the sphere of its bone's length around its parent,
at the point nearest to where it was triangulated. The direction the views saw is kept; only the length is
held. No state but the samples (``BoneLengths``); the fit is a compiled loop, a bone at a time."""

from __future__ import annotations

import numpy as np
from numba import njit

from posefleet.court.compiled import KERNEL, f64

# (parent, child) COCO joints, each child after its parent: shoulder -> elbow -> wrist, hip -> knee -> ankle
BONES: tuple[tuple[int, int], ...] = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16))
BONE_NAMES = ("upper arm L", "forearm L", "upper arm R", "forearm R", "thigh L", "shank L", "thigh R", "shank R")
_PARENT = np.array([a for a, _ in BONES])
_CHILD = np.array([b for _, b in BONES])


def bone_lengths(points: np.ndarray) -> np.ndarray:
    """``points [P, J, 3]`` (NaN where a joint is missing) -> each bone's length ``[P, B]`` (NaN: not seen)."""
    return _bone_lengths(f64(points), _PARENT, _CHILD)


@njit(**KERNEL)
def _bone_lengths(points, parents, children):
    out = np.empty((points.shape[0], len(parents)))
    for p in range(points.shape[0]):
        for b in range(len(parents)):
            a, c = points[p, parents[b]], points[p, children[b]]
            out[p, b] = np.sqrt((c[0] - a[0]) ** 2 + (c[1] - a[1]) ** 2 + (c[2] - a[2]) ** 2)
    return out


def hold_lengths(points: np.ndarray, lengths: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """``points [P, J, 3]`` with each bone's child placed within ``tolerance`` (a fraction) of ``lengths [P, B]``
    from its (already placed) parent, along the direction it was seen in; a NaN length, or a joint missing, leaves
    the child where it is. Bones from the torso first, then the ones hanging from them (:data:`BONES`' order)."""
    return _hold_lengths(f64(points), f64(lengths), float(tolerance), _PARENT, _CHILD)


@njit(**KERNEL)
def _hold_lengths(points, lengths, tolerance, parents, children):
    out = points.copy()
    for p in range(out.shape[0]):
        for b in range(len(parents)):
            parent, child = out[p, parents[b]], out[p, children[b]]
            target = lengths[p, b]
            if not np.isfinite(target):
                continue  # not known yet: the child stays where it was seen
            d0, d1, d2 = child[0] - parent[0], child[1] - parent[1], child[2] - parent[2]
            n = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
            ratio = min(max(n, target * (1 - tolerance)), target * (1 + tolerance)) / n
            if np.isfinite(ratio):
                child[0], child[1], child[2] = parent[0] + d0 * ratio, parent[1] + d1 * ratio, parent[2] + d2 * ratio
    return out


class BoneLengths:
    """Each group id's last ``window`` measured lengths a bone; its estimate is their median once it has
    ``min_samples`` of them (NaN before). Every player's samples are rows of one array, so that a frame reads and
    writes all of them at once."""

    def __init__(self, window: int, min_samples: int) -> None:
        self.window, self.min_samples = window, min_samples
        self.slot: dict[int, int] = {}  # group id -> its row in the arrays below
        self.samples = np.full((0, window, len(BONES)), np.nan)  # a ring of lengths a player, NaN where none yet
        self.at = np.zeros(0, np.int64)  # each row's next sample written

    def _slots(self, ids: list[int | None]) -> np.ndarray:
        return np.array([self.slot.get(gid, -1) for gid in ids], np.int64)  # type: ignore[arg-type]

    def estimate(self, ids: list[int | None]) -> np.ndarray:
        """``[P, B]`` the lengths held for each id (NaN: unknown id, or too few samples of that bone)."""
        slots = self._slots(ids)
        have = slots >= 0
        # with nobody too: the fuser's warm-up loads the kernel by asking for nobody
        held = _medians(self.samples[slots[have]], int(self.min_samples))
        if have.all():
            return held
        out = np.full((len(ids), len(BONES)), np.nan)
        out[have] = held
        return out

    def add(self, ids: list[int], lengths: np.ndarray) -> None:
        """Each id's measured ``lengths [P, B]`` (NaN where the bone was not seen) join its samples."""
        finite = np.isfinite(lengths)
        seen = finite.any(axis=1)
        ids = [gid for gid, ok in zip(ids, seen.tolist(), strict=True) if ok]
        new = [gid for gid in ids if gid not in self.slot]
        if new:
            self.slot.update({gid: len(self.samples) + k for k, gid in enumerate(new)})
            self.samples = np.concatenate([self.samples, np.full((len(new), self.window, len(BONES)), np.nan)])
            self.at = np.r_[self.at, np.zeros(len(new), np.int64)]
        rows = self._slots(ids)
        at = self.at[rows]
        self.samples[rows, at] = np.where(finite[seen], lengths[seen], self.samples[rows, at])
        self.at[rows] = (at + 1) % self.window

    def keep(self, ids: set[int]) -> None:
        """Forget the players no longer tracked."""
        if set(self.slot) <= ids:
            return
        kept = [gid for gid in self.slot if gid in ids]
        rows = self._slots(kept)  # type: ignore[arg-type]
        self.samples, self.at = self.samples[rows], self.at[rows]
        self.slot = {gid: k for k, gid in enumerate(kept)}


@njit(**KERNEL)
def _medians(samples, min_samples):
    """``samples [P, window, B]`` -> each bone's median over its finite samples ``[P, B]``, NaN with fewer than
    ``min_samples`` of them (numpy's median: a selection, not a sort)."""
    P, W, B = samples.shape
    out, column = np.empty((P, B)), np.empty(W)
    for p in range(P):
        for b in range(B):
            n = 0
            for w in range(W):
                x = samples[p, w, b]
                if np.isfinite(x):
                    column[n] = x
                    n += 1
            out[p, b] = np.median(column[:n]) if n >= max(min_samples, 1) else np.nan
    return out
