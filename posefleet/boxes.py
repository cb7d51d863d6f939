"""Detection recall on box ground truth: the Volleyball dataset's ``annotations.txt`` (12 players boxed per
annotated frame) and MOT17-layout sequences (pedestrians).

Every annotated frame is reached the way a camera would reach it: the frames before it in its folder run
first through one stream, so the tracker and track-guided detection are in the state they would be live.
A person counts as found when a returned box overlaps its box at IoU >= 0.5 (one returned box per person).
Volleyball annotates players only: precision there is the share of returned people who are players, so
referees, line judges and the crowd count against it (a region of interest keeps them out).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.geometry import iou_matrix

MATCH_IOU = 0.5


@dataclass
class AnnotatedFrame:
    image: Path
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 of the people who count
    ignore: np.ndarray  # [M, 4] people who neither count nor are wrong to return (MOT's flag 0, other classes)
    context: list[Path]  # the frames before it, in order, run first through the same stream


def _frame_number(path: Path) -> int:
    return int(path.stem) if path.stem.isdigit() else -1


def read_volleyball(ann_file: str | Path, context: int = 10) -> list[AnnotatedFrame]:
    """The Volleyball dataset's ``annotations.txt``: per line ``<frame>.jpg <group activity>`` then ``x y w h
    <action>`` per player. Frames are looked for beside it, in ``frames/``, or in the dataset's own layout
    (``<frame>/<frame>.jpg``); up to ``context`` frames before each annotated one are run first."""
    ann = Path(ann_file)
    try:
        lines = [ln.split() for ln in ann.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise ValueError(f"{ann}: not readable ({exc})") from exc
    out = []
    for n, parts in enumerate(lines, 1):
        if len(parts) < 2 or not parts[0].endswith(".jpg") or (len(parts) - 2) % 5:
            raise ValueError(f"{ann}:{n}: expected '<frame>.jpg <activity>' then 'x y w h action' per player")
        name = parts[0]
        folders = [ann.parent, ann.parent / "frames", ann.parent / Path(name).stem]
        image = next((d / name for d in folders if (d / name).is_file()), None)
        if image is None:
            continue  # an annotated frame the sample does not hold
        boxes = []
        for i in range(2, len(parts), 5):
            try:
                x, y, w, h = (float(v) for v in parts[i : i + 4])
            except ValueError as exc:
                raise ValueError(f"{ann}:{n}: a box is not four numbers ({exc})") from exc
            boxes.append([x, y, x + w, y + h])
        frame = _frame_number(image)
        before = sorted(
            (p for p in image.parent.glob("*.jpg") if 0 <= frame - _frame_number(p) <= context and p != image),
            key=_frame_number,
        )
        out.append(AnnotatedFrame(image, np.array(boxes, np.float32).reshape(-1, 4), np.zeros((0, 4)), before))
    if not out:
        raise ValueError(f"{ann}: none of its annotated frames was found beside it")
    return out


def read_mot(seq_dir: str | Path) -> list[AnnotatedFrame]:
    """Every frame of a MOT17-layout sequence, each with the ones before it as context."""
    from posefleet.mot import PEDESTRIAN, read_sequence

    images, gt = read_sequence(seq_dir)
    out = []
    for index, path in enumerate(images):
        rows = gt[gt[:, 0] == index + 1]
        counts = (rows[:, 6] == 1) & (rows[:, 7] == PEDESTRIAN)
        xyxy = np.column_stack([rows[:, 2], rows[:, 3], rows[:, 2] + rows[:, 4], rows[:, 3] + rows[:, 5]])
        out.append(AnnotatedFrame(path, xyxy[counts].astype(np.float32), xyxy[~counts], images[:index]))
    return out


def match(truth: np.ndarray, found: np.ndarray) -> tuple[int, np.ndarray]:
    """People of ``truth`` found by ``found`` (one-to-one at IoU >= 0.5), and which found boxes matched."""
    matched = np.zeros(len(found), bool)
    if not len(truth) or not len(found):
        return 0, matched
    iou = iou_matrix(truth, found)
    rows, cols = linear_sum_assignment(-iou)
    good = iou[rows, cols] >= MATCH_IOU
    matched[cols[good]] = True
    return int(good.sum()), matched


def evaluate_frames(pipeline: Pipeline, frames: Iterable[AnnotatedFrame], stream: str) -> dict[str, Any]:
    """Recall, precision and people per frame of the pipeline on annotated frames (context run first)."""
    result = None
    truths = found = returned = frames_n = 0
    done: list[Path] = []  # the frames the stream has run, in order: a sequence's next frame goes on from them
    for f in frames:
        going_on = bool(done) and f.context == done
        if not going_on:
            pipeline.forget(stream)
            done = []
        todo = [f.image] if going_on else [*f.context, f.image]
        for path in todo:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path}: not an image OpenCV can read")
            result = pipeline.process(stream, image, len(done))
            done.append(path)
        boxes = np.array([p.box for p in result.people], np.float32).reshape(-1, 4)
        if len(f.ignore) and len(boxes):
            boxes = boxes[~(iou_matrix(boxes, f.ignore.astype(np.float32)) > MATCH_IOU).any(axis=1)]
        hit, _ = match(f.boxes, boxes)
        truths += len(f.boxes)
        found += hit
        returned += len(boxes)
        frames_n += 1
    return {
        "frames": frames_n,
        "people": truths,
        "recall": found / truths if truths else None,
        "precision": found / returned if returned else None,
        "returned_per_frame": returned / frames_n if frames_n else 0.0,
    }


def evaluate_boxes(pipeline: Pipeline, paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    """Per set: a Volleyball ``annotations.txt`` (or a folder holding one), or a MOT17 sequence folder."""
    out = {}
    for n, p in enumerate(paths):
        path = Path(p)
        if path.is_dir() and (path / "seqinfo.ini").is_file():
            frames = read_mot(path)
        elif path.is_dir() and (path / "annotations.txt").is_file():
            frames = read_volleyball(path / "annotations.txt")
        elif path.is_file():
            frames = read_volleyball(path)
        else:
            raise ValueError(f"{path}: neither a Volleyball annotations.txt nor a MOT17 sequence folder")
        name = path.name if path.name != "annotations.txt" else path.parent.name
        out[name] = evaluate_frames(pipeline, frames, f"boxes-{n}")
        pipeline.forget(f"boxes-{n}")
    return out
