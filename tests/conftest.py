"""Shared fixtures: real models loaded once per session, the test data folder, shared/ if present."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from posefleet.config import PipelineConfig, load_pipeline_config
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def cfg() -> PipelineConfig:
    return load_pipeline_config("balanced")


# The top-down pipeline with BlazePose (the batched pose model, crops aligned by the body) in place of the
# preset's MoveNet Thunder: what the tests of batching, alignment and variants exercise.
BLAZEPOSE = {"pose": {"decoder": "blazepose", "model": "blazepose_landmark_full", "max_batch": 32, "align": True,
                      "min_person_score": 0.5}}  # fmt: skip


@pytest.fixture(scope="session")
def topdown_cfg() -> PipelineConfig:
    return load_pipeline_config("top-down", overrides=BLAZEPOSE)


@pytest.fixture(scope="session")
def engine(topdown_cfg: PipelineConfig) -> LocalModels:
    """Both models (the top-down preset loads the pose model too); any preset's pipeline can share them."""
    return LocalModels(topdown_cfg)


@pytest.fixture(scope="session")
def pipeline(cfg: PipelineConfig, engine: LocalModels) -> Pipeline:
    """The default preset's in-process pipeline."""
    return Pipeline(cfg, engine)


def read(name: str) -> np.ndarray:
    image = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    assert image is not None, name
    return image


def video_frames(name: str, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(DATA / name))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert frames, name
    return frames


def wait_until(check: Callable[[], object], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll ``check`` until it holds or ``timeout_s`` passes: a test waits for what it needs to have
    happened (a checkpoint stored, a frame served), not for a guessed time."""
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(every_s)
    return bool(check())
