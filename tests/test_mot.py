"""MOT-format tracking evaluation: known answers on a real clip laid out as a MOT17 sequence."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from conftest import SHARED_DATA, video_frames
from posefleet.config import PipelineConfig
from posefleet.mot import evaluate_mot, read_sequence
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels

pytest.importorskip("motmetrics", reason="motmetrics is in the test extra")


def sequence_from_own_tracks(root: Path, cfg: PipelineConfig, engine: LocalModels, relabel: dict | None = None) -> Path:
    """The basketball clip as a MOT17 sequence whose ground truth is the pipeline's own tracks
    (``relabel`` maps (frame, track id) -> (gt id, flag, class) to plant known faults)."""
    seq = root / "court"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=court\nimDir=img1\nframeRate=30\nimExt=.jpg\n")
    pipeline, rows = Pipeline(cfg, engine), []
    for i, frame in enumerate(video_frames("test_video_structuralize.mp4", 6)):
        path = seq / "img1" / f"{i + 1:06d}.jpg"
        cv2.imwrite(str(path), frame)
        for p in pipeline.process("truth", cv2.imread(str(path)), i).people:
            gt_id, flag, cls = (relabel or {}).get((i, p.track_id), (p.track_id, 1, 1))
            x1, y1, x2, y2 = p.box
            rows.append(f"{i + 1},{gt_id},{x1},{y1},{x2 - x1},{y2 - y1},{flag},{cls},1.0")
    (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    return seq


def test_tracking_scored_against_independent_ground_truth(tmp_path: Path, cfg: PipelineConfig,
                                                          engine: LocalModels) -> None:  # fmt: skip
    """COCO photo 785 panning across 8 frames, its annotated person box moved with it: truth made by
    COCO's annotators, not by the pipeline."""
    import json

    import numpy as np

    from conftest import DATA, read

    ann = max(json.loads((DATA / "coco_785.json").read_text())["annotations"], key=lambda a: a["area"])
    x, y, w, h = ann["bbox"]
    photo = read("000000000785.jpg")
    seq = tmp_path / "pan"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=pan\nimDir=img1\nframeRate=30\nimExt=.jpg\n")
    rows = []
    for i in range(8):
        dx = 12 * i - 40  # the camera pans: the person moves right 12 px a frame
        shifted = cv2.warpAffine(photo, np.float32([[1, 0, dx], [0, 1, 0]]), (photo.shape[1], photo.shape[0]))
        cv2.imwrite(str(seq / "img1" / f"{i + 1:06d}.jpg"), shifted)
        rows.append(f"{i + 1},7,{x + dx},{y},{w},{h},1,1,1.0")
    (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    overall = evaluate_mot(Pipeline(cfg, engine), [seq])["OVERALL"]
    assert overall["num_objects"] == 8
    assert overall["recall"] >= 0.875 and overall["num_switches"] == 0 and overall["idf1"] >= 0.8, overall


def test_swapped_truth_ids_are_switches(tmp_path: Path, cfg: PipelineConfig, engine: LocalModels) -> None:
    swap = {(i, t): (3 - t, 1, 1) for i in range(3, 6) for t in (1, 2)}  # the two players trade ids at frame 3
    overall = evaluate_mot(Pipeline(cfg, engine), [sequence_from_own_tracks(tmp_path, cfg, engine, swap)])["OVERALL"]
    assert overall["num_switches"] == 2 and overall["mota"] < 1.0


def test_a_prediction_on_a_distractor_is_not_a_false_positive(
    tmp_path: Path, cfg: PipelineConfig, engine: LocalModels
) -> None:
    distractor = {(i, 2): (2, 0, 7) for i in range(6)}  # player 2 is class 7 with flag 0: not counted
    overall = evaluate_mot(Pipeline(cfg, engine), [sequence_from_own_tracks(tmp_path, cfg, engine, distractor)])
    assert overall["OVERALL"]["num_unique_objects"] == 1
    assert overall["OVERALL"]["precision"] == 1.0 and overall["OVERALL"]["mota"] == 1.0


def test_a_folder_that_is_not_a_sequence_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"seqinfo\.ini"):
        read_sequence(tmp_path)


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
@pytest.mark.skipif(not (SHARED_DATA / "mot17-mini").is_dir(), reason="shared/data/mot17-mini not beside the checkout")
def test_mot17_mini_runs_and_what_is_found_is_mostly_right(cfg: PipelineConfig, engine: LocalModels) -> None:
    sequences = sorted((SHARED_DATA / "mot17-mini").iterdir())
    result = evaluate_mot(Pipeline(cfg, engine), sequences)
    assert set(result) == {s.name for s in sequences} | {"OVERALL"}
    assert result["OVERALL"]["num_objects"] > 500
    assert result["OVERALL"]["precision"] > 0.8  # small crowds stretch MoveNet's recall, not its precision
