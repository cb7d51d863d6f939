"""Accuracy tools: COCO keypoint AP on real annotated photos; tracking consistency on known cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, SHARED_DATA
from posefleet.actors.pipeline import PoseEngine
from posefleet.evaluate import coco_keypoint_ap, evaluate, predict_coco, tracking_consistency
from posefleet.serve.schema import FrameResult, Person


def test_ap_on_the_annotated_coco_photo(engine: PoseEngine) -> None:
    result = evaluate(engine, DATA / "coco_785.json", DATA)
    assert result["predictions"] >= 1
    assert result["AP"] > 0.5  # a real person, well found: a broken decoder or mapping scores ~0


def test_ap_drops_when_keypoints_are_wrong(engine: PoseEngine) -> None:
    good = predict_coco(engine, DATA / "coco_785.json", DATA)
    mirrored = []
    for r in good:  # swap left and right: the classic top-down bug
        k = [r["keypoints"][i : i + 3] for i in range(0, 51, 3)]
        order = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
        mirrored.append(r | {"keypoints": [v for j in order for v in k[j]]})
    assert (
        coco_keypoint_ap(DATA / "coco_785.json", mirrored)["AP"] < coco_keypoint_ap(DATA / "coco_785.json", good)["AP"]
    )


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
