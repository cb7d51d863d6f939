"""COCO keypoint results export (the format ``pycocotools`` COCOeval loads)."""

from __future__ import annotations

from typing import Any

from posefleet.pipeline.schema import FrameResult


def coco_results(results: list[tuple[int, FrameResult]]) -> list[dict[str, Any]]:
    """``[(image_id, FrameResult)]`` -> COCO keypoint detections, one per person.

    The person score follows the common top-down practice: detection score times the mean
    score of the keypoints that are visible (score > 0.2).
    """
    out = []
    for image_id, result in results:
        for p in result.people:
            flat: list[float] = []
            for x, y, s in p.keypoints:
                flat += [round(x, 2), round(y, 2), round(s, 4)]
            vis = [s for _, _, s in p.keypoints if s > 0.2]
            kp_mean = sum(vis) / len(vis) if vis else 0.0
            out.append({"image_id": image_id, "category_id": 1, "keypoints": flat,
                        "score": round(p.score * kp_mean, 5), "bbox": _xywh(p.box)})  # fmt: skip
    return out


def _xywh(box: tuple[float, float, float, float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
