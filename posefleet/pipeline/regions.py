"""Where the detector looks in a frame, in pure numpy: a full scan, or crops around tracked people.

A *scan* covers the frame (or the region of interest's bounding box) with overlapping tiles sized so
that the smallest person expected is at least ``scan.min_person_px`` tall in the model input. A model
call returns at most a fixed number of people (MoveNet MultiPose: 6), so a region that comes back
full is split in two at the same scale and looked at again (:func:`split`). Between scans the
detector runs only on *crops* around the tracked people (:func:`crop_regions`): each crop holds at
most ``guided.max_people`` of them and is scaled so its smallest person is ``guided.min_person_px``
tall, and nearby people share a crop where that costs fewer input pixels than one call each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from posefleet.config import GuidedConfig, ScanConfig
from posefleet.pipeline.geometry import round_up, tile_rects

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels


@dataclass(frozen=True)
class Region:
    """A part of a frame and the scale the detector sees it at (input px per frame px)."""

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float
    split_depth: int = 0

    @property
    def rect(self) -> Rect:
        return self.x0, self.y0, self.x1, self.y1

    def long_side(self, multiple: int = 32) -> int:
        """The model input's long side for this region (a multiple of ``multiple``)."""
        return max(multiple, round_up(max(self.x1 - self.x0, self.y1 - self.y0) * self.scale, multiple))


def _clip_rect(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> Rect:
    return max(0, math.floor(x0)), max(0, math.floor(y0)), min(w, math.ceil(x1)), min(h, math.ceil(y1))


def scan_regions(
    w: int, h: int, input_size: int, cfg: ScanConfig, smallest: float | None = None, area: Rect | None = None
) -> list[Region]:
    """Tiles covering ``area`` (default: the frame) so a person ``smallest`` px tall (default: the config's
    ``person_height`` of the frame) is ``min_person_px`` in the input, never enlarged; the whole area at
    ``input_size`` first when ``include_full_frame``. One region when the whole area already suffices."""
    ax0, ay0, ax1, ay1 = area or (0, 0, w, h)
    aw, ah = max(1, ax1 - ax0), max(1, ay1 - ay0)
    person = smallest if smallest and smallest > 0 else cfg.person_height * h
    full_scale = input_size / max(aw, ah)
    full = Region(ax0, ay0, ax1, ay1, full_scale)
    need = min(1.0, cfg.min_person_px / person)
    if full_scale >= need * 0.999:
        return [full]
    tile = input_size / need  # a tile's long side in frame pixels

    def grid(tile: float) -> tuple[int, int]:
        step = tile * (1 - cfg.overlap)
        cols = math.ceil((aw - tile) / step) + 1 if aw > tile else 1
        rows = math.ceil((ah - tile) / step) + 1 if ah > tile else 1
        return cols, rows

    cols, rows = grid(tile)
    while cols * rows > cfg.max_tiles:  # a budget: larger tiles (people smaller than asked), still square-ish
        tile *= 1.1
        cols, rows = grid(tile)
    tiles = [
        Region(ax0 + x0, ay0 + y0, ax0 + x1, ay0 + y1, input_size / max(x1 - x0, y1 - y0))
        for x0, y0, x1, y1 in tile_rects(aw, ah, cols, rows, cfg.overlap)
    ]
    return ([full] if cfg.include_full_frame else []) + tiles


def split(region: Region, overlap: float) -> list[Region]:
    """Two halves of a region along its long side, sharing ``overlap`` of a half, at the same scale."""
    x0, y0, x1, y1 = region.rect
    depth = region.split_depth + 1
    if x1 - x0 >= y1 - y0:
        half = (x1 - x0) / (2 - overlap)
        a, b = round(x0 + half), round(x1 - half)
        return [Region(x0, y0, a, y1, region.scale, depth), Region(b, y0, x1, y1, region.scale, depth)]
    half = (y1 - y0) / (2 - overlap)
    a, b = round(y0 + half), round(y1 - half)
    return [Region(x0, y0, x1, a, region.scale, depth), Region(x0, b, x1, y1, region.scale, depth)]


def _crop_scale(smallest: np.ndarray | float, cfg: GuidedConfig) -> np.ndarray:
    """The scale a crop is seen at: its smallest person ``min_person_px`` tall, enlarged at most ``max_upscale``."""
    return np.minimum(cfg.max_upscale, cfg.min_person_px / np.maximum(smallest, 1.0))


def _crop_costs(rects: np.ndarray, smallest: np.ndarray, cfg: GuidedConfig) -> tuple[np.ndarray, np.ndarray]:
    """What calls on crops ``rects [..., 4]`` whose smallest person is ``smallest [...]`` px tall cost: input
    pixels (plus a call's own cost in pixels), and their input's long side."""
    s = _crop_scale(smallest, cfg)
    w, h = rects[..., 2] - rects[..., 0], rects[..., 3] - rects[..., 1]
    return np.maximum(32.0, w * s) * np.maximum(32.0, h * s) + cfg.call_px, np.maximum(w, h) * s


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rects ``[..., 4]`` holding both ``a`` and ``b`` (broadcast)."""
    return np.concatenate(np.broadcast_arrays(np.minimum(a[..., :2], b[..., :2]), np.maximum(a[..., 2:], b[..., 2:])),
                          axis=-1)  # fmt: skip


def _pair_gains(
    a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray], centres: np.ndarray,
    cfg: GuidedConfig,
) -> np.ndarray:
    """Input pixels saved by merging each crop of ``a`` with each of ``b`` (each: rects ``[n, 4]``, smallest
    person ``[n]``, cost ``[n]``): ``[na, nb]``, -inf where not allowed (the merge is larger than ``max_input``,
    holds more than ``max_people`` tracked centres, or saves nothing)."""
    (ra, sa, pa), (rb, sb, pb) = a, b
    merged = _union(ra[:, None], rb[None])
    merged_px, long_side = _crop_costs(merged, np.minimum(sa[:, None], sb[None]), cfg)
    m = merged.astype(np.float32)[..., None, :]  # the centres are float32: compared as they are
    cx, cy = centres[:, 0], centres[:, 1]
    inside = ((cx >= m[..., 0]) & (cx < m[..., 2]) & (cy >= m[..., 1]) & (cy < m[..., 3])).sum(axis=2)
    saved = pa[:, None] + pb[None] - merged_px
    ok = (long_side <= cfg.max_input) & (inside <= cfg.max_people) & (saved > 0)
    return np.where(ok, saved, -np.inf)


def crop_regions(boxes: np.ndarray, w: int, h: int, cfg: GuidedConfig) -> list[Region]:
    """Crops around tracked ``boxes`` ``[N, 4]``: each box grown by ``margin``; neighbours merged while the
    merged crop costs fewer input pixels than the two apart, holds at most ``max_people`` (counting every
    tracked person whose centre lies inside) and stays within ``max_input``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        return []
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    rects, smallest = [], []
    for x0, y0, x1, y1 in boxes:
        bh = max(float(y1 - y0), 1.0)
        m = cfg.margin * bh
        rect = _clip_rect(x0 - m, y0 - m, x1 + m, y1 + m, w, h)
        if rect[2] - rect[0] < 2 or rect[3] - rect[1] < 2:
            continue
        rects.append(rect)
        smallest.append(bh)
    n = len(rects)
    if not n:
        return []
    # greedy: the best-saving pair merges first (ties: the pair found first); a merge is a new crop at the end,
    # and only its pairs are scored again, all in a few array operations (a pair at a time in Python cost ~1.5 ms
    # a frame at 12 people). gains[i, j] (i < j): what merging crops i and j saves (-inf: not allowed)
    size = 2 * n - 1
    r, sm, px = np.zeros((size, 4)), np.zeros(size), np.zeros(size)
    r[:n], sm[:n] = rects, smallest
    px[:n] = _crop_costs(r[:n], sm[:n], cfg)[0]
    live = np.zeros(size, bool)
    live[:n] = True
    gains = np.full((size, size), -np.inf)
    first = (r[:n], sm[:n], px[:n])
    gains[:n, :n] = np.where(np.triu(np.ones((n, n), bool), 1), _pair_gains(first, first, centres, cfg), -np.inf)
    nxt = n
    while True:
        best = gains.max()
        if best == -np.inf:
            break
        tied = np.argwhere(gains == best)  # row-major: (i, j) order
        if len(tied) > 1:  # found first: the first crops' pairs in (i, j) order, then each merge's in (j, i) order
            later = tied[:, 1] >= n
            tied = tied[np.lexsort((np.where(later, tied[:, 0], tied[:, 1]), np.where(later, tied[:, 1], tied[:, 0]),
                                    later))]  # fmt: skip
        i, j = tied[0]
        r[nxt], sm[nxt] = _union(r[i], r[j]), min(sm[i], sm[j])
        px[nxt] = _crop_costs(r[nxt], sm[nxt], cfg)[0]
        live[[i, j]], live[nxt] = False, True
        gains[[i, j]], gains[:, [i, j]] = -np.inf, -np.inf
        alive = np.flatnonzero(live[:nxt])
        if len(alive):
            new = (r[nxt : nxt + 1], sm[nxt : nxt + 1], px[nxt : nxt + 1])
            gains[alive, nxt] = _pair_gains((r[alive], sm[alive], px[alive]), new, centres, cfg)[:, 0]
        nxt += 1
    out = []
    for k in np.flatnonzero(live).tolist():
        x0, y0, x1, y1 = r[k].tolist()
        s = float(_crop_scale(sm[k], cfg))
        if _crop_costs(r[k], sm[k], cfg)[1] > cfg.max_input:  # one person larger than max_input allows: seen smaller
            s = cfg.max_input / max(x1 - x0, y1 - y0)
        out.append(Region(*_clip_rect(x0, y0, x1, y1, w, h), s))
    return sorted(out, key=lambda r: (r.y0, r.x0))
