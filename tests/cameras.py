"""Cameras for the tests and the bench: a live RTSP camera (GStreamer's RTSP server, scripts/rtsp_camera.py)
and an MJPEG-over-HTTP one (Debian's ffmpeg), each playing a real clip at its own rate on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from posefleet.serve.launcher import port_in_use

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi and GStreamer's RTSP server
RTSP_CAMERA = Path(__file__).resolve().parents[1] / "scripts" / "rtsp_camera.py"


def rtsp_available() -> bool:
    """Whether a live RTSP camera can run here (scripts/install-test-tools.sh installs what it needs)."""
    try:
        check = subprocess.run([SYSTEM_PYTHON, str(RTSP_CAMERA), "--check"], capture_output=True)
    except OSError:
        return False
    return check.returncode == 0 and shutil.which("ffmpeg") is not None


def rtsp_camera(port: int, clip: Path, workdir: Path) -> subprocess.Popen:
    """A live RTSP camera at ``rtsp://127.0.0.1:{port}/cam`` playing ``clip`` (ten times over, copied into
    ``workdir``: a test's tmp_path) at its own rate to every client, listening when this returns."""
    proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_CAMERA), str(looped(clip, workdir)), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return _listening(proc, port)


def mjpeg_camera(port: int, clip: Path) -> subprocess.Popen:
    """A live MJPEG-over-HTTP camera at ``http://127.0.0.1:{port}/cam.mjpg`` (Debian's ffmpeg, ``clip`` in a
    loop at its own rate, one client), listening when this returns."""
    proc = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-q:v", "5", "-f", "mpjpeg",
         "-listen", "1", f"http://127.0.0.1:{port}/cam.mjpg"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return _listening(proc, port)


def _listening(proc: subprocess.Popen, port: int, timeout_s: float = 20.0) -> subprocess.Popen:
    """``proc`` once its port takes connections (or ``timeout_s`` passed, or it died)."""
    deadline = time.monotonic() + timeout_s
    while not port_in_use("127.0.0.1", port) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def looped(clip: Path, workdir: Path, times: int = 10) -> Path:
    """``clip`` ``times`` over in ``workdir``, copied, not re-encoded (an RTSP session plays its file once)."""
    out = workdir / f"{clip.stem}-x{times}{clip.suffix}"
    if out.is_file():
        return out
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", str(times - 1), "-i", str(clip), "-c", "copy",
                    str(out)], check=True)  # fmt: skip
    return out
