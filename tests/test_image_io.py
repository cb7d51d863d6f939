"""Bad and unusual image input: a clear ImageError, or correct handling, never a crash."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from conftest import DATA, read
from posefleet.config import PipelineConfig
from posefleet.errors import ImageError
from posefleet.image_io import as_bgr, decode_image
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels

LIMITS = {"max_pixels": 40_000_000, "max_side": 16384}


def png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is not an image at all", "not a JPEG or PNG"),
        (png_header_only(0, 0), "zero size"),
        (png_header_only(20000, 20000), "limit"),
        (png_header_only(640, 480), "truncated PNG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated"),
    ],
)
def test_bad_bytes_give_clear_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode_image(data, **LIMITS)


def test_truncated_jpeg_is_refused() -> None:
    data = (DATA / "grace.jpg").read_bytes()
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_grey_and_rgba_pngs_decode_to_bgr() -> None:
    colour = read("astronaut.png")
    grey = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA)
    for image in (grey, rgba):
        ok, buf = cv2.imencode(".png", image)
        assert ok
        out = decode_image(buf.tobytes(), **LIMITS)
        assert out.shape == (*colour.shape[:2], 3) and out.dtype == np.uint8


def test_arrays_of_any_channel_layout_become_bgr() -> None:
    colour = read("camera.png")
    assert as_bgr(colour[:, :, 0]).shape == colour.shape
    assert as_bgr(cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA)).shape == colour.shape
    with pytest.raises(ImageError, match="zero size"):
        as_bgr(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageError, match="uint8"):
        as_bgr(np.zeros((10, 10, 3), np.float32))


def test_pipeline_on_grey_photo_finds_the_person(engine: LocalModels, cfg: PipelineConfig) -> None:
    """A greyscale PNG goes through decode, detector and pose like a colour one."""
    _, buf = cv2.imencode(".png", cv2.cvtColor(read("astronaut.png"), cv2.COLOR_BGR2GRAY))
    result = Pipeline(cfg, engine).process_bytes("grey", buf.tobytes(), 0)
    assert len(result.people) == 1 and result.timings.decode_ms > 0
