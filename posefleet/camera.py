"""A camera the server pulls itself: read and decoded with OpenCV's FFmpeg backend in a thread of its own,
reconnected with backoff when it drops or stalls, ``failed`` with the reason when it never works.

Plain Python, tested without Ray; a source actor (``actors/source.py``) runs one and hands its frames on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from posefleet.allowlist import redact
from posefleet.serving_config import SourcesConfig

State = Literal["connecting", "running", "reconnecting", "stopped", "failed"]
OnFrame = Callable[[np.ndarray, int, float], None]  # (BGR image, frame index, capture time)


@dataclass
class CameraStatus:
    state: State = "connecting"
    frames: int = 0  # frames handed on
    skipped: int = 0  # read but not handed on (over max_fps)
    fps: float = 0.0
    last_frame_at: float | None = None
    last_error: str | None = None
    reconnects: int = 0
    started_at: float = field(default_factory=time.time)


class CameraReader:
    """Reads ``url`` until stopped. Frame indices keep counting across reconnects (a stream's frames must
    increase); a frame is handed on at most ``max_fps`` times a second, at the camera's pace."""

    def __init__(self, url: str, cfg: SourcesConfig, on_frame: OnFrame, max_fps: float | None = None,
                 first_index: int = 0):  # fmt: skip
        self.url, self.cfg, self.on_frame = url, cfg, on_frame
        self.max_fps = min(max_fps or cfg.max_fps, cfg.max_fps)
        self.status = CameraStatus()
        self.next_index = first_index
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera {redact(url)}", daemon=True)
        self._times: list[float] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(wait_s)
        if self.status.state != "failed":
            self.status.state = "stopped"

    # -- the reading thread -----------------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture | None:
        ms = int(self.cfg.open_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.stall_s * 1000)]
        if self.url.startswith(("rtsp://", "rtsps://")):  # OpenCV takes FFmpeg's options from this variable only
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{self.cfg.rtsp_transport}"
        cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _run(self) -> None:
        delay, failed_connects, ever_connected = self.cfg.reconnect_min_s, 0, False
        while not self._stop.is_set():
            cap, read = self._open(), 0
            if cap is None:
                why = f"cannot open {redact(self.url)}"
            else:
                why, read = self._read_until_dropped(cap)
                cap.release()
                if self._stop.is_set():
                    break
                if not read:  # a camera only once it gave a frame: a web page that FFmpeg opens is none
                    why = f"{redact(self.url)} opened but gave no frame ({why})"
            self.status.last_error = why
            if read:
                ever_connected, failed_connects, delay = True, 0, self.cfg.reconnect_min_s
            else:
                failed_connects += 1
                if not ever_connected and failed_connects >= self.cfg.max_failed_connects:
                    self.status.state = "failed"
                    return
            self.status.state = "reconnecting" if ever_connected else "connecting"
            self.status.reconnects += ever_connected
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.cfg.reconnect_max_s)
        self.status.state = "stopped"

    def _read_until_dropped(self, cap: cv2.VideoCapture) -> tuple[str, int]:
        """Hand frames on until the camera drops, stalls (no frame for ``stall_s``) or we stop; why it ended,
        and how many frames were read."""
        period = 1.0 / self.max_fps
        last_sent = 0.0
        source_fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        is_file = "://" not in self.url
        file_period = 1.0 / source_fps if is_file and 0 < source_fps < 1000 else 0.0
        started = time.monotonic()
        read = 0
        while not self._stop.is_set():
            ok, image = cap.read()
            now = time.monotonic()
            if not ok or image is None:
                why = "end of file" if is_file else f"no frame for {self.cfg.stall_s:g} s or the camera closed"
                return why, read
            read += 1
            self.status.state = "running"
            if file_period:  # a file plays at its own frame rate, like a camera
                wait = started + read * file_period - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            if now - last_sent < period * 0.95:
                self.status.skipped += 1
                continue
            last_sent = now
            index, self.next_index = self.next_index, self.next_index + 1
            self._count(time.time())
            self.on_frame(image, index, time.time())
        return "stopped", read

    def _count(self, t: float) -> None:
        self.status.frames += 1
        self.status.last_frame_at = t
        self._times = [x for x in self._times[-60:] if t - x <= 5.0] + [t]
        span = self._times[-1] - self._times[0]
        self.status.fps = round((len(self._times) - 1) / span, 2) if span > 0 else 0.0
