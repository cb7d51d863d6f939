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


@dataclass
class _Crop:
    members: list[int]
    rect: tuple[float, float, float, float]
    smallest: float  # px height of the smallest member

    def scale(self, cfg: GuidedConfig) -> float:
        return min(cfg.max_upscale, cfg.min_person_px / max(self.smallest, 1.0))

    def input_px(self, cfg: GuidedConfig) -> float:
        x0, y0, x1, y1 = self.rect
        s = self.scale(cfg)
        return max(32.0, (x1 - x0) * s) * max(32.0, (y1 - y0) * s) + cfg.call_px

    def long_side(self, cfg: GuidedConfig) -> float:
        x0, y0, x1, y1 = self.rect
        return max(x1 - x0, y1 - y0) * self.scale(cfg)


def _union(a: _Crop, b: _Crop) -> _Crop:
    ra, rb = a.rect, b.rect
    rect = (min(ra[0], rb[0]), min(ra[1], rb[1]), max(ra[2], rb[2]), max(ra[3], rb[3]))
    return _Crop(a.members + b.members, rect, min(a.smallest, b.smallest))


def _people_inside(rect: tuple[float, float, float, float], centres: np.ndarray) -> int:
    x0, y0, x1, y1 = rect
    return int(np.sum((centres[:, 0] >= x0) & (centres[:, 0] < x1) & (centres[:, 1] >= y0) & (centres[:, 1] < y1)))


def crop_regions(boxes: np.ndarray, w: int, h: int, cfg: GuidedConfig) -> list[Region]:
    """Crops around tracked ``boxes`` ``[N, 4]``: each box grown by ``margin``; neighbours merged while the
    merged crop costs fewer input pixels than the two apart, holds at most ``max_people`` (counting every
    tracked person whose centre lies inside) and stays within ``max_input``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        return []
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    crops = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        bh = max(float(y1 - y0), 1.0)
        m = cfg.margin * bh
        rect = _clip_rect(x0 - m, y0 - m, x1 + m, y1 + m, w, h)
        if rect[2] - rect[0] < 2 or rect[3] - rect[1] < 2:
            continue
        crops.append(_Crop([i], tuple(float(v) for v in rect), bh))  # type: ignore[arg-type]
    def gain(a: _Crop, b: _Crop) -> tuple[float, _Crop] | None:
        """Input pixels saved by merging two crops, and the merge; None where it is not allowed."""
        merged = _union(a, b)
        if merged.long_side(cfg) > cfg.max_input or _people_inside(merged.rect, centres) > cfg.max_people:
            return None
        saved = a.input_px(cfg) + b.input_px(cfg) - merged.input_px(cfg)
        return (saved, merged) if saved > 0 else None

    # greedy: the best-saving pair merges first; only the pairs of the new crop are scored again (O(n^2))
    live = dict(enumerate(crops))
    pairs = {(i, j): g for i in live for j in live if i < j and (g := gain(live[i], live[j])) is not None}
    nxt = len(crops)
    while pairs:
        (i, j), (_, merged) = max(pairs.items(), key=lambda item: item[1][0])
        del live[i], live[j]
        pairs = {k: v for k, v in pairs.items() if i not in k and j not in k}
        pairs |= {(k, nxt): g for k in live if (g := gain(live[k], merged)) is not None}
        live[nxt] = merged
        nxt += 1
    crops = list(live.values())
    out = []
    for c in crops:
        s = c.scale(cfg)
        if c.long_side(cfg) > cfg.max_input:  # one person larger than max_input allows: seen smaller
            s = cfg.max_input / max(c.rect[2] - c.rect[0], c.rect[3] - c.rect[1])
        out.append(Region(*_clip_rect(*c.rect, w, h), s))
    return sorted(out, key=lambda r: (r.y0, r.x0))
