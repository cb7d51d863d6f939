"""Accuracy tools: COCO keypoint AP on real annotated photos; tracking consistency on known cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, SHARED_DATA
from posefleet.config import load_pipeline_config
from posefleet.evaluate import (
    COCO_BODY,
    COCO_SIGMAS,
    coco_keypoint_ap,
    evaluate,
    load_keypoint_set,
    predict_coco,
    tracking_consistency,
)
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.schema import FrameResult, Person


def test_ap_on_the_annotated_coco_photo(pipeline: Pipeline) -> None:
    result = evaluate(pipeline, DATA / "coco_785.json", DATA)
    assert result["predictions"] >= 1
    assert result["AP"] > 0.5  # a real person, well found: a broken decoder or mapping scores ~0


def test_ap_drops_when_keypoints_are_wrong(pipeline: Pipeline) -> None:
    data = load_keypoint_set(DATA / "coco_785.json")
    good = predict_coco(pipeline, data, DATA)
    mirrored = []
    for r in good:  # swap left and right: the classic top-down bug
        k = [r["keypoints"][i : i + 3] for i in range(0, 51, 3)]
        order = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
        mirrored.append(r | {"keypoints": [v for j in order for v in k[j]]})
    assert coco_keypoint_ap(data, mirrored)["AP"] < coco_keypoint_ap(data, good)["AP"]


def test_posetrack_style_set_without_area_scores_like_coco(pipeline: Pipeline, tmp_path: Path) -> None:
    data = json.loads((DATA / "coco_785.json").read_text())
    for ann in data["annotations"]:  # PoseTrack files carry no area and write iscrowd as a bool
        ann.pop("area")
        ann["iscrowd"] = False
    (tmp_path / "posetrack_style.json").write_text(json.dumps(data))
    with_area = evaluate(pipeline, DATA / "coco_785.json", DATA)
    without = evaluate(pipeline, tmp_path / "posetrack_style.json", DATA)
    assert without["predictions"] == with_area["predictions"]
    # the box area is at least the segment area, so OKS is at least as lenient: same people, AP not lower
    assert without["AP"] >= with_area["AP"] > 0.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a readable JSON file"),
        ('{"images": []}', "not a COCO annotation file"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "keypoints": ["a", "b"]}]}', "2 keypoints"),
    ],
)
def test_cli_evaluate_refuses_other_files_in_one_line(tmp_path: Path, content: str, message: str, capsys) -> None:
    """In process (an exception would fail the test as a traceback would): the CLI's own answer, one line."""
    from posefleet.cli import main

    (tmp_path / "a.json").write_text(content)
    assert main(["evaluate", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(
    not (SHARED_DATA / "coco/test_coco.json").is_file(), reason="shared/data/coco not beside the checkout"
)
def test_cli_evaluate_on_shared_coco_set(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "posefleet.cli", "evaluate", str(SHARED_DATA / "coco/test_coco.json")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert 0.2 < json.loads(proc.stdout)["AP"] <= 1.0


def frame(people: list[tuple[int, tuple[float, float, float, float]]]) -> FrameResult:
    kp = [(0.0, 0.0, 0.9)] * 17
    return FrameResult(stream_id="s", frame_index=0, width=100, height=100,
                       people=[Person(track_id=t, box=b, score=1.0, keypoints=kp) for t, b in people])  # fmt: skip


def test_tracking_consistency_counts_switches_and_fragments() -> None:
    a, b = (0.0, 0.0, 10.0, 10.0), (50.0, 50.0, 60.0, 60.0)
    reference = [frame([(1, a), (2, b)]) for _ in range(4)]
    same = [frame([(7, a), (8, b)]) for _ in range(4)]  # other ids, same assignment: fine
    assert tracking_consistency(reference, same)["id_switches"] == 0
    swapped = [frame([(7, a), (8, b)]), frame([(7, a), (8, b)]), frame([(8, a), (7, b)]), frame([(8, a), (7, b)])]
    assert tracking_consistency(reference, swapped)["id_switches"] == 2
    gap = [frame([(7, a), (8, b)]), frame([(8, b)]), frame([(7, a), (8, b)]), frame([(7, a), (8, b)])]
    result = tracking_consistency(reference, gap)
    assert result["fragmentations"] == 1 and result["matched"] == 7 / 8


@pytest.mark.skipif(
    not (SHARED_DATA / "posetrack18/annotations/test_posetrack18_val.json").is_file(),
    reason="shared/data/posetrack18 not beside the checkout",
)
def test_evaluate_on_shared_posetrack_frames_names_the_keypoints_that_differ() -> None:
    ann = SHARED_DATA / "posetrack18/annotations/test_posetrack18_val.json"
    result = evaluate(Pipeline(load_pipeline_config("balanced")), ann, SHARED_DATA / "posetrack18")
    assert result["predictions"] > 0 and result["AP"] > 0
    assert result["keypoints_not_coco"] == ["1: head_bottom (ours left_eye)", "2: head_top (ours right_eye)"]


def test_crowdpose_layout_is_scored_on_its_12_body_joints(pipeline: Pipeline, tmp_path: Path) -> None:
    """CrowdPose's 14 keypoints (12 body joints, head, neck): the COCO photo's annotation written in that
    layout scores on the body joints with COCO's sigmas, as the COCO file scores on all 17."""
    data = json.loads((DATA / "coco_785.json").read_text())
    for ann in data["annotations"]:
        kps = ann["keypoints"]
        ann["keypoints"] = kps[5 * 3 : 17 * 3] + kps[0:3] + [0, 0, 0]  # body, head (the nose), no neck
    names = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
             "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]  # fmt: skip
    data["categories"] = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": names}]
    path = tmp_path / "crowdpose_785.json"
    path.write_text(json.dumps(data))
    result = evaluate(pipeline, path, DATA)
    assert result["keypoints"].startswith("CrowdPose's 12 body joints")
    assert result["AP"] > 0.5
    body = load_keypoint_set(path)
    assert len(body["annotations"][0]["keypoints"]) == 36
    wrong = [r | {"keypoints": r["keypoints"][3:] + r["keypoints"][:3]} for r in predict_coco(pipeline, body, DATA)]
    for r in wrong:
        r["keypoints"] = r["keypoints"][15:51]  # the joints of the wrong people: shifted by one
    assert coco_keypoint_ap(body, wrong, COCO_SIGMAS[COCO_BODY])["AP"] < result["AP"]
