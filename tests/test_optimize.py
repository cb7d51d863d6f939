"""posefleet optimize writes INT8/FP16 variants calibrated on real frames, and they run in the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BLAZEPOSE, DATA, read
from posefleet.config import load_pipeline_config
from posefleet.optimize import optimize
from posefleet.pipeline.engine import Pipeline


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
def test_variants_are_written_calibrated_and_usable(tmp_path: Path) -> None:
    cfg = load_pipeline_config("top-down", overrides=BLAZEPOSE)
    made = optimize(cfg, tmp_path, str(DATA / "test_video_structuralize.mp4"), frames=4)
    assert "int8" in made["detector"] and {"int8", "fp16"} <= set(made["pose"])  # FP16 MoveNet does not load
    for model in made["pose"].values():
        variant = cfg.model_copy(update={"pose": cfg.pose.model_copy(update={"model": model})})
        people = Pipeline(variant).process("photo", read("000000000785.jpg"), 0).people
        assert people and len(people[0].keypoints) == 17
    single_stage = optimize(load_pipeline_config("balanced"), tmp_path / "s", str(DATA / "demo.mp4"), frames=2)
    assert set(single_stage) == {"detector"}  # no pose model to optimise
