"""Accuracy: COCO keypoint AP (OKS, via pycocotools) on any COCO-format set, and tracking
consistency of a detect-every-N run against the detect-every-frame run on video without labels.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from posefleet.coco import coco_results
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.geometry import iou_matrix
from posefleet.pipeline.pose import COCO_KEYPOINTS
from posefleet.pipeline.schema import FrameResult

# COCO's per-keypoint OKS constants (sigmas), nose to ankles.
COCO_SIGMAS = np.array(
    [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
     0.087, 0.087, 0.089, 0.089]
)  # fmt: skip


def person_keypoints(data: dict[str, Any]) -> list[str]:
    """The keypoint names of a COCO file's person category (id 1), empty if it has none."""
    person = next((c for c in data.get("categories", []) if c.get("id") == 1), None)
    return list((person or {}).get("keypoints") or [])


# CrowdPose's 14 keypoints begin with the 12 body joints COCO has too, in COCO's order (shoulders to ankles)
CROWDPOSE_BODY = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]  # fmt: skip
COCO_BODY = slice(5, 17)  # the same 12 joints among COCO's 17


def crowdpose_body(data: dict[str, Any]) -> dict[str, Any]:
    """A CrowdPose file (14 keypoints: 12 body joints, head, neck) cut to its 12 body joints, scored with
    COCO's sigmas for them; the head and neck have no COCO counterpart."""
    names = person_keypoints(data)
    if names[:12] != CROWDPOSE_BODY:
        raise ValueError("not CrowdPose's keypoint layout (left_shoulder ... right_ankle, head, neck)")
    out = dict(data, categories=[dict(c, keypoints=CROWDPOSE_BODY, skeleton=[]) for c in data["categories"]])
    anns = []
    for ann in data["annotations"]:
        kps = ann["keypoints"][: 12 * 3]
        area = ann.get("area") or float(ann["bbox"][2] * ann["bbox"][3])
        anns.append(dict(ann, keypoints=kps, num_keypoints=sum(v > 0 for v in kps[2::3]), area=area,
                         iscrowd=int(ann.get("iscrowd", 0))))  # fmt: skip
    out["annotations"] = anns
    return out


def load_keypoint_set(ann_file: str | Path) -> dict[str, Any]:
    """A COCO-format 17-keypoint annotation file, checked, with what COCOeval needs filled in.

    PoseTrack-style files (same 17 keypoints) carry no ``area``: it becomes the box area, as
    mmpose does for them. Other keypoint layouts (CrowdPose's 14, ...) are refused by name.
    """
    try:
        data = json.loads(Path(ann_file).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{ann_file}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "annotations" not in data:
        raise ValueError(f"{ann_file}: not a COCO annotation file (no 'images' and 'annotations')")
    names = person_keypoints(data)
    if len(names) == 14:
        return crowdpose_body(data)
    if len(names) != 17:
        raise ValueError(f"{ann_file}: category 1 has {len(names)} keypoints, not COCO's 17 (nor CrowdPose's 14)")
    for ann in data["annotations"]:
        if "bbox" not in ann or "keypoints" not in ann:
            raise ValueError(f"{ann_file}: annotation {ann.get('id')} has no bbox or keypoints")
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann["iscrowd"] = int(ann.get("iscrowd", 0))
    return data


def predict_coco(pipeline: Pipeline, gt: dict[str, Any], image_dir: str | Path) -> list[dict[str, Any]]:
    """The pipeline's people on every image of a COCO annotation set, each image the first frame of a
    stream of its own (the same path as ``posefleet run``: detector, tracker, the preset's pose source)."""
    results = []
    for n, im in enumerate(gt["images"]):
        image = cv2.imread(str(Path(image_dir) / im["file_name"]), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(Path(image_dir) / im["file_name"])
        result = pipeline.process(f"eval-{n}", image, 0)
        results += coco_results([(im["id"], result)])
        pipeline.forget(f"eval-{n}")
    return results


def coco_keypoint_ap(
    data: dict[str, Any], results: list[dict[str, Any]], sigmas: np.ndarray | None = None
) -> dict[str, float]:
    """COCO keypoint AP/AR of ``results`` (pycocotools' COCOeval, iouType 'keypoints'); ``sigmas``: the
    per-keypoint OKS constants where the set is not COCO's 17."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
        if not results:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"AP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR": float(s[5])}


def evaluate(pipeline: Pipeline, ann_file: str | Path, image_dir: str | Path) -> dict[str, Any]:
    """Keypoint AP of the pipeline on a COCO-format set: COCO's 17 keypoints (PoseTrack's too), or CrowdPose's
    12 body joints with COCO's sigmas."""
    data = load_keypoint_set(ann_file)
    results = predict_coco(pipeline, data, image_dir)
    if person_keypoints(data) == CROWDPOSE_BODY:
        for r in results:
            r["keypoints"] = r["keypoints"][COCO_BODY.start * 3 : COCO_BODY.stop * 3]
        ap = coco_keypoint_ap(data, results, COCO_SIGMAS[COCO_BODY])
        return ap | {"predictions": len(results), "keypoints": "CrowdPose's 12 body joints, COCO's sigmas"}
    out: dict[str, Any] = coco_keypoint_ap(data, results) | {"predictions": len(results)}
    pairs = enumerate(zip(person_keypoints(data), COCO_KEYPOINTS, strict=True))  # both 17 (checked at load)
    if differ := [f"{i}: {theirs} (ours {ours})" for i, (theirs, ours) in pairs if theirs != ours]:
        out["keypoints_not_coco"] = differ  # PoseTrack: head_bottom/head_top where COCO has eyes; AP understates
    return out


def oks(a: np.ndarray, b: np.ndarray, area: float) -> float:
    """Object keypoint similarity of keypoints ``a`` against reference ``b`` (both [17, 3])."""
    visible = b[:, 2] > 0.3
    if not visible.any():
        return float("nan")
    d2 = np.sum((a[:, :2] - b[:, :2]) ** 2, axis=1)
    e = d2 / (2 * area * (2 * COCO_SIGMAS) ** 2 + np.spacing(1))
    return float(np.mean(np.exp(-e[visible])))


def tracking_consistency(reference: list[FrameResult], test: list[FrameResult], iou: float = 0.5) -> dict[str, Any]:
    """Compare a run with the detect-every-frame ``reference`` run of the same frames.

    Each reference track is followed through the frames: an *id switch* is a frame where it is
    matched (box IoU >= ``iou``) to a different test id than the last time; a *fragmentation* is a
    frame where it goes unmatched between two matched frames. Keypoints of matched people are
    compared by OKS with the reference's.
    """
    last: dict[int, int] = {}
    gap: dict[int, bool] = {}
    switches = fragments = matched = total = 0
    oks_values = []
    for ref, tst in zip(reference, test, strict=True):
        rb = np.array([p.box for p in ref.people], np.float32).reshape(-1, 4)
        tb = np.array([p.box for p in tst.people], np.float32).reshape(-1, 4)
        m = iou_matrix(rb, tb)
        for i, rp in enumerate(ref.people):
            total += 1
            j = int(np.argmax(m[i])) if m.shape[1] else -1
            if j < 0 or m[i, j] < iou:
                if rp.track_id in last:
                    gap[rp.track_id] = True
                continue
            matched += 1
            tid = tst.people[j].track_id
            if rp.track_id in last:
                switches += last[rp.track_id] != tid
                fragments += gap.get(rp.track_id, False)
            last[rp.track_id], gap[rp.track_id] = tid, False
            x1, y1, x2, y2 = rp.box
            value = oks(np.array(tst.people[j].keypoints), np.array(rp.keypoints), max((x2 - x1) * (y2 - y1), 1.0))
            if not np.isnan(value):
                oks_values.append(value)
    return {
        "id_switches": switches,
        "fragmentations": fragments,
        "matched": matched / total if total else 1.0,
        "mean_oks_vs_reference": float(np.mean(oks_values)) if oks_values else float("nan"),
    }
