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


def test_tracks_scored_against_themselves_are_perfect(tmp_path: Path, cfg: PipelineConfig, engine: LocalModels) -> None:
    seq = sequence_from_own_tracks(tmp_path, cfg, engine)
    overall = evaluate_mot(Pipeline(cfg, engine), [seq])["OVERALL"]
    assert overall["num_objects"] >= 10  # two players over 6 frames
    assert overall["mota"] == 1.0 and overall["idf1"] == 1.0 and overall["num_switches"] == 0


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


@pytest.mark.skipif(not (SHARED_DATA / "mot17-mini").is_dir(), reason="shared/data/mot17-mini not beside the checkout")
def test_mot17_mini_runs_and_what_is_found_is_mostly_right(cfg: PipelineConfig, engine: LocalModels) -> None:
    sequences = sorted((SHARED_DATA / "mot17-mini").iterdir())
    result = evaluate_mot(Pipeline(cfg, engine), sequences)
    assert set(result) == {s.name for s in sequences} | {"OVERALL"}
    assert result["OVERALL"]["num_objects"] > 500
    assert result["OVERALL"]["precision"] > 0.8  # small crowds stretch MoveNet's recall, not its precision
