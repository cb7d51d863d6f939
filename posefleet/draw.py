"""Annotated pictures: skeletons, boxes and track ids in stable colours, plus a status line."""

from __future__ import annotations

import colorsys
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from posefleet.pipeline.pose import COCO_SKELETON
from posefleet.pipeline.schema import Person


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per track id (golden-ratio hue walk)."""
    hue = (track_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_people(
    image: np.ndarray, people: Iterable[Person], kp_threshold: float = 0.3, status: str | None = None
) -> np.ndarray:
    """A copy of ``image`` with every person drawn; ``status`` (e.g. FPS) goes top-left."""
    out = image.copy()
    scale = max(out.shape[:2]) / 640.0
    thick = max(1, round(2 * scale))
    for person in people:
        colour = track_colour(person.track_id)
        kps = np.asarray(person.keypoints, np.float32)
        x1, y1, x2, y2 = (round(v) for v in person.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, max(1, thick // 2))
        for a, b in COCO_SKELETON:
            if kps[a, 2] >= kp_threshold and kps[b, 2] >= kp_threshold:
                pa = (int(kps[a, 0]), int(kps[a, 1]))
                pb = (int(kps[b, 0]), int(kps[b, 1]))
                cv2.line(out, pa, pb, colour, thick, cv2.LINE_AA)
        for x, y, s in kps:
            if s >= kp_threshold:
                cv2.circle(out, (int(x), int(y)), thick + 1, (255, 255, 255), -1, cv2.LINE_AA)
        label = f"#{person.track_id}"
        cv2.putText(out, label, (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, thick)
    if status:  # white on a dark band, readable on any frame
        font, size = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, 0.6 * scale)
        (tw, th), base = cv2.getTextSize(status, font, size, 1)
        cv2.rectangle(out, (0, 0), (tw + 12, th + base + 10), (20, 20, 20), -1)
        cv2.putText(out, status, (6, th + 5), font, size, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class AnnotatedWriter:
    """Annotated output: an H.264 MP4 that browsers and players play (.mp4), a Motion-JPEG AVI (.avi), or,
    for one image, a picture (.jpg/.png).

    MP4s are encoded with PyAV, whose wheels bundle FFmpeg with libx264 (GPL-2.0-or-later; README,
    "Licences"), in yuv420p, so an odd width or height loses its last column or row; the index goes at the
    front (``+faststart``) so a browser starts playing before the whole file has come."""

    CRF = 23  # x264's default quality: about 1 Mbit/s at 720p for annotated court footage
    PRESET = "veryfast"  # ~3x faster than x264's "medium" for a few % more bytes: writing must keep up

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.writer: cv2.VideoWriter | None = None
        self.container: Any = None
        self.stream: Any = None
        self.frames = 0
        self.is_image = path.suffix.lower() in {".jpg", ".jpeg", ".png"}
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray) -> None:
        if self.is_image:
            cv2.imwrite(str(self.path), image)
        elif self.path.suffix.lower() == ".mp4":
            self._write_h264(image)
        else:
            if self.writer is None:
                h, w = image.shape[:2]
                self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, (w, h))
                if not self.writer.isOpened():
                    raise OSError(f"cannot write video {self.path}")
            self.writer.write(image)

    def _write_h264(self, image: np.ndarray) -> None:
        import av

        h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
        if self.container is None:
            try:
                self.container = av.open(str(self.path), "w", options={"movflags": "+faststart"})
            except (OSError, av.FFmpegError) as exc:
                raise OSError(f"cannot write video {self.path}: {exc}") from exc
            rate = Fraction(self.fps if self.fps and self.fps > 0 else 30.0).limit_denominator(1001)
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            self.stream.options = {"crf": str(self.CRF), "preset": self.PRESET}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="bgr24")
        frame.pts = self.frames
        self.frames += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.container is not None:
            self.container.mux(self.stream.encode(None))  # what the encoder still holds
            self.container.close()
            self.container = None
