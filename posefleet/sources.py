"""Frame sources read with OpenCV: a video file, an image, a folder of images, a webcam or a URL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class SourceError(ValueError):
    """A source that cannot be opened or read; the message is meant for the user."""


@dataclass
class Frame:
    index: int
    timestamp: float
    image: np.ndarray
    name: str


@dataclass
class Source:
    """Frames of one source, with what is known about it up front."""

    name: str
    fps: float
    count: int | None  # None for live sources
    _frames: Iterator[Frame]

    def __iter__(self) -> Iterator[Frame]:
        return self._frames


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{path}: not an image OpenCV can read")
    return image


def _images(paths: list[Path], fps: float) -> Iterator[Frame]:
    for i, p in enumerate(paths):
        yield Frame(i, i / fps, _read_image(p), p.name)


def _video(cap: cv2.VideoCapture, fps: float, name: str) -> Iterator[Frame]:
    i = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok or image is None:
                return
            yield Frame(i, i / fps, image, f"{name}#{i}")
            i += 1
    finally:
        cap.release()


def open_source(spec: str, image_fps: float = 30.0) -> Source:
    """Open a path, a folder, a webcam index (``0``) or a stream URL (``rtsp://...``)."""
    if spec.isdigit() or "://" in spec:
        cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        if not cap.isOpened():
            raise SourceError(f"cannot open camera or stream {spec!r}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        return Source(spec, fps, None, _video(cap, fps, spec))
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SourceError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return Source(path.name, image_fps, len(paths), _images(paths, image_fps))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Source(path.stem, image_fps, 1, _images([path], image_fps))
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path}: not a video or image OpenCV can read")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 else 30.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return Source(path.stem, fps, count, _video(cap, fps, path.stem))
