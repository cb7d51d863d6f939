"""Decoding a JPEG at the size the model needs: libjpeg-turbo's DCT scaling, chosen per frame from its regions
and crops, returns the same people as a full decode.

Real frames: the Pose2Sim demo's cameras (tests/data/pose2sim, 1088x1920, two people), sent as JPEG q90 as
cameras send them.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import DATA, read
from posefleet.config import load_pipeline_config
from posefleet.errors import ImageError
from posefleet.image_io import Picture, check_image, encode_jpeg
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels
from posefleet.pipeline.geometry import iou_matrix
from posefleet.pipeline.schema import FrameResult

# the tolerance stated: the same people, each person's box within IoU 0.9 of its full-decode box and its
# keypoints within 3% of its height (median over the 17) of where a full decode puts them
MIN_IOU = 0.9
MAX_KEYPOINT_OFFSET = 0.03


def picture(data: bytes) -> Picture:
    return Picture.encoded(data, *check_image(data, 10**8, 10**5))


@pytest.fixture(scope="module")
def camera_jpegs() -> list[tuple[str, int, bytes]]:
    """Frames 0 and 10 of each of the four cameras, JPEG q90."""
    out = []
    for cam in ("cam01", "cam02", "cam03", "cam04"):
        cap = cv2.VideoCapture(str(DATA / "pose2sim" / f"{cam}.mp4"))
        for i in range(11):
            ok, frame = cap.read()
            assert ok, cam
            if i in (0, 10):
                out.append((cam, i, encode_jpeg(frame, 90)))
        cap.release()
    return out


def test_a_jpeg_decodes_straight_to_the_scale_asked_for() -> None:
    data = encode_jpeg(read("camera.png"), 90)  # 512x512
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    for need, size in ((1.0, 512), (0.6, 512), (0.5, 256), (0.3, 256), (0.25, 128), (0.1, 64), (0.01, 64)):
        p = picture(data)
        image = p.decode(need)
        assert image.shape == (size, size, 3) and p.scale == size / 512, need
        # DCT scaling averages like an area resize: the same picture, smaller
        diff = np.abs(image.astype(np.int16) - cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA))
        assert diff.mean() < 4.0, (need, diff.mean())
    grey = encode_jpeg(cv2.cvtColor(read("grace.jpg"), cv2.COLOR_BGR2GRAY), 90)
    assert picture(grey).decode(0.5).shape == (300, 256, 3)  # grey JPEGs come out BGR too
    png = cv2.imencode(".png", read("camera.png"))[1].tobytes()
    p = picture(png)
    assert p.decode(0.1).shape == (512, 512, 3) and p.scale == 1.0  # only JPEGs scale


@pytest.fixture(scope="module")
def models(engine: LocalModels) -> dict[str, LocalModels]:
    """Each preset's models: the session's detector for the default; the top-down preset's own MoveNet Thunder."""
    return {"balanced": engine, "top-down": LocalModels(load_pipeline_config("top-down"))}


def run(preset: str, scaled: bool, jpegs: list[tuple[str, int, bytes]], models: dict[str, LocalModels]) -> list:
    pipeline = Pipeline(load_pipeline_config(preset, overrides={"decode": {"scaled": scaled}}), models[preset])
    out = []
    for cam, index, data in jpegs:
        p = picture(data)
        [result] = pipeline.process_many([(cam, p, index, None)])
        out.append((result, p.scale))
    return out


def same_people(full: FrameResult, scaled: FrameResult) -> None:
    assert len(scaled.people) == len(full.people) > 0, (full.stream_id, full.frame_index)
    boxes = np.array([p.box for p in scaled.people], np.float32)
    for person in full.people:
        ious = iou_matrix(np.array([person.box], np.float32), boxes)[0]
        twin = scaled.people[int(np.argmax(ious))]
        assert ious.max() >= MIN_IOU, (full.stream_id, full.frame_index, ious.max())
        offset = np.linalg.norm(np.array(person.keypoints)[:, :2] - np.array(twin.keypoints)[:, :2], axis=1)
        height = person.box[3] - person.box[1]
        assert np.median(offset) <= MAX_KEYPOINT_OFFSET * height, (full.stream_id, np.median(offset) / height)


@pytest.mark.parametrize("preset", ["balanced", "top-down"])
def test_scaled_decode_returns_the_same_people_as_full_decode(
    preset: str, camera_jpegs: list, models: dict[str, LocalModels]
) -> None:
    """The default (single-stage, track-guided crops) and top-down (pose crops of MoveNet Thunder) presets on
    real 1088x1920 frames: every frame is decoded scaled down (its people are large), and what comes back
    matches the full decode within the tolerance stated above."""
    full = run(preset, False, camera_jpegs, models)
    scaled = run(preset, True, camera_jpegs, models)
    assert all(s == 1.0 for _, s in full)
    assert all(s < 1.0 for _, s in scaled), [s for _, s in scaled]
    for (a, _), (b, _) in zip(full, scaled, strict=True):
        assert (b.width, b.height) == (a.width, a.height) == (1088, 1920)  # answers in the frame's own pixels
        same_people(a, b)


def test_the_scale_follows_what_the_frame_needs(camera_jpegs: list, models: dict[str, LocalModels]) -> None:
    """A caller that draws on the frame gets it whole; the top-down preset's crops need more than the single-stage
    scan does (Thunder's 256 px crop of a person of some 600 px, against MoveNet's scan at 320 on the frame)."""
    cam, index, data = camera_jpegs[0]
    pipeline = Pipeline(load_pipeline_config("balanced"), models["balanced"])
    p = picture(data)
    pipeline.process_many([(cam, p, index, None)], min_scale=1.0)
    assert p.scale == 1.0
    single = run("balanced", True, camera_jpegs[:1], models)[0][1]
    top_down = run("top-down", True, camera_jpegs[:1], models)[0][1]
    assert single < top_down < 1.0


def test_a_picture_that_fails_to_decode_leaves_its_stream_as_it_was(camera_jpegs: list, engine: LocalModels) -> None:
    """Decoding comes after the frame is planned: a corrupt body must not move the stream on."""
    pipeline = Pipeline(load_pipeline_config("balanced"), engine)
    cam, _, data = camera_jpegs[0]
    pipeline.process_bytes(cam, data, 0)
    state = pipeline.streams[cam]
    before = (state.last_index, state.tracker.frame_id, state.frames_since_detect, state.frames_since_scan)
    broken = data[:600] + bytes(len(data) - 602) + b"\xff\xd9"  # a sound header and end, garbage between
    with pytest.raises(ImageError, match="cannot be decoded"):
        pipeline.process_bytes(cam, broken, 1)
    assert (state.last_index, state.tracker.frame_id, state.frames_since_detect, state.frames_since_scan) == before
    assert pipeline.process_bytes(cam, data, 1).frame_index == 1
