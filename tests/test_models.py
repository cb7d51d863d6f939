"""Model files: shipped models verify, missing and corrupt files fail with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from posefleet import models
from posefleet.config import OrtConfig
from posefleet.pipeline.runtime import create_session


@pytest.mark.parametrize("name", sorted(models.SHIPPED))
def test_shipped_models_verify(name: str) -> None:
    loaded = models.load(name)
    assert loaded.sha256 == models.SHIPPED[name].sha256
    assert len(loaded.data) > 1_000_000


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(models.ModelFileError, match="not found"):
        models.load(str(tmp_path / "nope.onnx"))


def test_truncated_copy_fails_checksum(tmp_path: Path) -> None:
    src, _ = models.resolve("blazepose_landmark_full")
    bad = tmp_path / "pose.onnx"
    shutil.copyfile(src, bad)
    bad.write_bytes(bad.read_bytes()[:-1000])
    with pytest.raises(models.ModelFileError, match="corrupt or not the configured model"):
        create_session(str(bad), OrtConfig(), sha256=models.SHIPPED["blazepose_landmark_full"].sha256)


def test_user_file_without_checksum_loads(tmp_path: Path) -> None:
    src, _ = models.resolve("blazepose_landmark_full")
    copy = tmp_path / "mine.onnx"
    shutil.copyfile(src, copy)
    session = create_session(str(copy), OrtConfig())
    assert session.get_inputs()[0].name == "input_1"
