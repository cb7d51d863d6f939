"""Tracking quality against box ground truth in the MOTChallenge layout (MOT17: ``img1/``,
``gt/gt.txt``, ``seqinfo.ini``): MOTA, IDF1, id switches, computed by ``motmetrics``.

Ground truth follows the MOT17 devkit's rules: pedestrians (class 1) with the "consider" flag
count; a prediction that covers a person who does not count (static person, reflection,
occluder, flag 0) is removed before matching instead of being called a false positive.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.geometry import iou_matrix

PEDESTRIAN = 1
MATCH_IOU = 0.5  # MOTChallenge's threshold for a prediction to be the same person as a truth


def _motmetrics() -> Any:
    try:
        import motmetrics
    except ImportError as exc:  # an optional extra: say which
        raise ValueError("tracking evaluation needs motmetrics: pip install -e '.[test]'") from exc
    return motmetrics


def read_sequence(seq_dir: str | Path) -> tuple[list[Path], np.ndarray]:
    """A sequence's frame files in order and its ground-truth rows (frame, id, x, y, w, h, flag, class)."""
    seq = Path(seq_dir)
    info = configparser.ConfigParser()
    if not info.read(seq / "seqinfo.ini") or "Sequence" not in info:
        raise ValueError(f"{seq}: no seqinfo.ini with a [Sequence] section (MOT17 layout expected)")
    images = sorted((seq / info["Sequence"].get("imDir", "img1")).glob(f"*{info['Sequence'].get('imExt', '.jpg')}"))
    gt_file = seq / "gt" / "gt.txt"
    if not images or not gt_file.is_file():
        raise ValueError(f"{seq}: needs frames in img1/ and ground truth in gt/gt.txt")
    gt = np.loadtxt(gt_file, delimiter=",", ndmin=2)
    if gt.shape[1] < 8:
        raise ValueError(f"{gt_file}: expected 8+ comma-separated columns, got {gt.shape[1]}")
    return images, gt[:, :8]


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    return np.column_stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]])


def _distances(truth: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """motmetrics' distance convention: 1 - IoU, NaN where the pair cannot match. (Computed here:
    motmetrics 1.4's own ``iou_matrix`` uses an API NumPy 2 removed.)"""
    iou = iou_matrix(truth, hyp).astype(np.float64)
    return np.where(iou >= MATCH_IOU, 1.0 - iou, np.nan)


def track_sequence(pipeline: Pipeline, seq_dir: str | Path, stream: str) -> Any:
    """Run the tracker over a sequence and accumulate its matches against the ground truth."""
    mm = _motmetrics()
    images, gt = read_sequence(seq_dir)
    acc = mm.MOTAccumulator(auto_id=True)
    for index, path in enumerate(images):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: not an image OpenCV can read")
        people = pipeline.process(stream, image, index).people
        rows = gt[gt[:, 0] == index + 1]  # MOT frames count from 1
        counts = (rows[:, 6] == 1) & (rows[:, 7] == PEDESTRIAN)
        counted, ignored = rows[counts], rows[~counts]
        hyp = np.asarray([p.box for p in people], np.float64).reshape(-1, 4)
        ids = [p.track_id for p in people]
        if len(ignored) and len(hyp):  # covering a person who does not count is neither right nor wrong
            keep = ~(iou_matrix(hyp, _xyxy(ignored[:, 2:6])) > MATCH_IOU).any(axis=1)
            hyp, ids = hyp[keep], [i for i, k in zip(ids, keep, strict=True) if k]
        acc.update(counted[:, 1].astype(int).tolist(), ids, _distances(_xyxy(counted[:, 2:6]), hyp))
    return acc


METRICS = ["num_frames", "mota", "idf1", "num_switches", "num_fragmentations", "precision", "recall",
           "num_objects", "num_unique_objects", "mostly_tracked", "mostly_lost"]  # fmt: skip


def evaluate_mot(pipeline: Pipeline, seq_dirs: list[str | Path]) -> dict[str, dict[str, float]]:
    """Per-sequence and overall MOT metrics of the pipeline's tracks on MOT-layout sequences."""
    mm = _motmetrics()
    accs = [track_sequence(pipeline, d, f"mot-{i}") for i, d in enumerate(seq_dirs)]
    summary = mm.metrics.create().compute_many(
        accs, metrics=METRICS, names=[Path(d).name for d in seq_dirs], generate_overall=True
    )
    # NaN (e.g. precision with no prediction at all) becomes None: valid JSON
    return {name: {k: None if np.isnan(v) else float(v) for k, v in row.items()}
            for name, row in summary.to_dict("index").items()}  # fmt: skip
