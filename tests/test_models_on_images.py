"""Real models on real photos: people found, keypoints plausible, batching exact, runs repeatable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED_DATA, read
from posefleet.config import TilingConfig, load_pipeline_config
from posefleet.pipeline.frames import LocalModels
from posefleet.pipeline.geometry import iou_matrix
from posefleet.pipeline.pose import COCO_KEYPOINTS

KP = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
# (image, more than head and shoulders in view: BlazePose's presence is low on a bust portrait)
ONE_PERSON = [("astronaut.png", True), ("grace.jpg", False), ("camera.png", True), ("000000000785.jpg", True)]


@pytest.mark.parametrize(("name", "body"), ONE_PERSON)
def test_single_person_found_with_head_on_top(engine: LocalModels, name: str, body: bool) -> None:
    image = read(name)
    dets = engine.detector(image)
    assert len(dets) >= 1
    best = int(np.argmax(dets.scores))
    box = dets.boxes[best]
    kps, presence = engine.pose(image, box[None])
    if body:
        assert presence[0] > 0.5
    y1, y2 = box[1], box[3]
    head = kps[0, [KP["nose"], KP["left_eye"], KP["right_eye"]]]
    assert (head[:, 1] < y1 + 0.4 * (y2 - y1)).all(), "head keypoints belong in the upper part of the box"
    assert (head[:, 0] >= box[0] - 5).all() and (head[:, 0] <= box[2] + 5).all()


def test_coco_ground_truth_box_matched(engine: LocalModels) -> None:
    dets = engine.detector(read("000000000785.jpg"))
    gt = np.array([[281, 45, 281 + 219, 45 + 347]], np.float32)  # test_coco.json, image 785
    assert iou_matrix(gt, dets.boxes).max() > 0.7


@pytest.mark.parametrize("name", ["astronaut.png", "grace.jpg"])
def test_left_right_not_swapped_on_frontal_subject(engine: LocalModels, name: str) -> None:
    image = read(name)
    dets = engine.detector(image)
    kps, _ = engine.pose(image, dets.boxes[:1])
    k = kps[0]
    # Facing the camera, the person's left side is on the image's right.
    for side in ("shoulder", "eye"):
        assert k[KP[f"left_{side}"], 0] > k[KP[f"right_{side}"], 0], side


def test_batched_pose_equals_per_crop(engine: LocalModels) -> None:
    image = read("astronaut.png")
    boxes = np.array([[18, 11, 361, 509], [100, 50, 300, 400], [0, 0, 200, 512], [250, 100, 500, 500]], np.float32)
    batch, mats = engine.pose.decoder.prepare(image, boxes)
    together = engine.pose.infer(batch)
    alone = [engine.pose.infer(batch[i : i + 1]) for i in range(len(boxes))]
    for j in range(len(together)):
        np.testing.assert_allclose(together[j], np.concatenate([a[j] for a in alone]), rtol=1e-4, atol=1e-3)
    kp_batch, _ = engine.pose.decoder.decode(together, mats)
    kp_single = np.concatenate([engine.pose(image, b[None])[0] for b in boxes])
    np.testing.assert_allclose(kp_batch, kp_single, atol=1e-2)


def test_results_are_deterministic(engine: LocalModels) -> None:
    image = read("grace.jpg")
    first = engine.detector(image)
    second = engine.detector(image)
    np.testing.assert_array_equal(first.boxes, second.boxes)
    np.testing.assert_array_equal(engine.pose(image, first.boxes)[0], engine.pose(image, second.boxes)[0])


COCO_DIR = SHARED_DATA / "coco"


@pytest.mark.skipif(not (COCO_DIR / "test_coco.json").is_file(), reason="shared/data/coco not beside the checkout")
def test_every_annotated_person_detected_on_coco_images(engine: LocalModels) -> None:
    """Every person annotated with 10+ keypoints is found (IoU > 0.5) in the shared COCO images."""
    import cv2

    gt = json.loads((COCO_DIR / "test_coco.json").read_text())
    missed = []
    for im in gt["images"]:
        image = cv2.imread(str(COCO_DIR / im["file_name"]))
        boxes = engine.detector(image).boxes
        for a in gt["annotations"]:
            if a["image_id"] != im["id"] or a["num_keypoints"] < 10:
                continue
            x, y, w, h = a["bbox"]
            if iou_matrix(np.array([[x, y, x + w, y + h]], np.float32), boxes).max(initial=0) <= 0.5:
                missed.append((im["file_name"], a["bbox"]))
    assert not missed


def test_tiling_a_wide_frame_finds_every_person_more_surely(cfg) -> None:
    """Four real photos side by side (a wide 'court'): overlapping tiles see each person larger."""
    import cv2

    from posefleet.pipeline.detector import Detector

    panels = [read(n) for n, _ in ONE_PERSON]
    panels = [cv2.resize(p, (round(p.shape[1] * 480 / p.shape[0]), 480)) for p in panels]
    wide = np.concatenate(panels, axis=1)
    edges = np.cumsum([0] + [p.shape[1] for p in panels])
    runs = {}
    for tiled in (False, True):
        det_cfg = cfg.detector.model_copy(deep=True)
        det_cfg.scan.adaptive = False  # the fixed grid of `tiling` (the top-down and crowd presets')
        det_cfg.tiling = TilingConfig(enabled=tiled, cols=2, rows=1, overlap=0.25, min_aspect=1.6)
        runs[tiled] = Detector(det_cfg)(wide)
    tiled = runs[True]
    centres = (tiled.boxes[:, 0] + tiled.boxes[:, 2]) / 2
    found = {int(np.searchsorted(edges, c) - 1) for c in centres}
    assert found == {0, 1, 2, 3}  # one person per panel, none missed
    assert tiled.scores.min() > runs[False].scores.min()
    assert (tiled.scores >= 0.3).sum() > (runs[False].scores >= 0.3).sum()  # more people found surely


def test_small_frames_are_not_tiled(cfg) -> None:
    from posefleet.pipeline.detector import make_decoder

    decoder = make_decoder(load_pipeline_config("top-down").detector)  # a fixed 2x1 grid
    assert len(decoder.regions(426, 240)) == 1  # tiles would be upscaled
    assert len(decoder.regions(1920, 1080)) == 3  # full frame + 2 tiles
