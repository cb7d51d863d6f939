"""Pose sources on real images: the detector's own keypoints (single-stage), top-down crops aligned
upright, and one batched pass over several streams giving what one stream at a time gives."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import DATA, read, video_frames
from posefleet.config import PipelineConfig
from posefleet.evaluate import oks
from posefleet.pipeline import geometry
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels


def annotated_person() -> tuple[np.ndarray, float]:
    """The one person of COCO image 785 with all 17 keypoints labelled: keypoints [17, 3] and area."""
    gt = json.loads((DATA / "coco_785.json").read_text())
    ann = max(gt["annotations"], key=lambda a: a["num_keypoints"])
    return np.array(ann["keypoints"], np.float32).reshape(17, 3), float(ann["area"])


def best_oks(people: list, truth: np.ndarray, area: float) -> float:
    return max((oks(np.array(p.keypoints), truth, area) for p in people), default=0.0)


def test_single_stage_keypoints_land_on_the_person(pipeline: Pipeline) -> None:
    truth, area = annotated_person()
    result = pipeline.process("photo", read("000000000785.jpg"), 0)
    assert pipeline.cfg.pose_source == "single-stage" and result.timings.pose_ms == 0.0  # no second model
    assert best_oks(result.people, truth, area) > 0.75


def rotate_quarter(image: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image turned 90 degrees clockwise, and ``points [K, 3]`` moved with it."""
    h = image.shape[0]
    out = points.copy()
    out[:, 0], out[:, 1] = h - 1 - points[:, 1], points[:, 0]
    return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE), out


def test_alignment_turns_a_lying_person_upright(engine: LocalModels, topdown_cfg: PipelineConfig) -> None:
    truth, area = annotated_person()
    image, truth_rot = rotate_quarter(read("000000000785.jpg"), truth)
    # the crop affine from the true keypoints puts the shoulders straight above the hips
    m = geometry.aligned_crop_affine(truth_rot, 256, 256, 1.25, 0.5)
    assert m is not None
    pts = truth_rot[:, :2] @ m[:, :2].T + m[:, 2]
    shoulders, hips = pts[[5, 6]].mean(axis=0), pts[[11, 12]].mean(axis=0)
    assert shoulders[1] < hips[1] - 20 and abs(shoulders[0] - hips[0]) < 0.1 * (hips[1] - shoulders[1])
    # and BlazePose on the aligned crop finds the lying person far better than on the box's square
    scores = {}
    for align in (True, False):
        cfg = topdown_cfg.model_copy(update={"pose": topdown_cfg.pose.model_copy(update={"align": align})})
        scores[align] = best_oks(Pipeline(cfg, engine).process("rotated", image, 0).people, truth_rot, area)
    assert scores[True] > 0.7 and scores[True] > scores[False] + 0.1, scores


@pytest.mark.parametrize("preset", ["balanced", "top-down"])
def test_streams_batched_together_get_what_each_gets_alone(engine: LocalModels, preset: str) -> None:
    from posefleet.config import load_pipeline_config

    cfg = load_pipeline_config(preset)
    models = engine if preset == "balanced" else LocalModels(cfg)  # the preset's own pose model (Thunder)
    clip = video_frames("test_video_structuralize.mp4", 6)
    photo = read("000000000785.jpg")
    alone, together = Pipeline(cfg, models), Pipeline(cfg, models)
    for i, frame in enumerate(clip):
        a = [alone.process("clip", frame, i), alone.process("photo", photo, i)]
        b = together.process_many([("clip", frame, i, None), ("photo", photo, i, None)])
        for x, y in zip(a, b, strict=True):
            assert [p.model_dump() for p in x.people] == [p.model_dump() for p in y.people]
    assert sum(len(r.people) for r in b) >= 2


def test_the_top_down_preset_puts_thunder_keypoints_on_the_person() -> None:
    """MoveNet Thunder (the top-down preset's pose model) on the annotated COCO photo: AP well above a broken
    mapping's ~0, and the head above the hips above the ankles."""
    from posefleet.config import load_pipeline_config
    from posefleet.evaluate import evaluate

    pipeline = Pipeline(load_pipeline_config("top-down"))
    assert evaluate(pipeline, DATA / "coco_785.json", DATA)["AP"] > 0.6
    person = pipeline.process("photo", read("000000000785.jpg"), 0).people[0]
    kps = np.array(person.keypoints)
    assert kps[0, 1] < kps[11:13, 1].mean() < kps[15:17, 1].mean()
