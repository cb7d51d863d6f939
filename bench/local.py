"""Run the Serve application on a Ray started here (or joined): the harness of the tests and benchmarks
(not shipped in the package; ``posefleet serve`` is the product's way to serve)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import ray
from ray import serve

from posefleet.config import AppConfig
from posefleet.serve.app import build_app, free_port, port_in_use, ray_env

log = logging.getLogger(__name__)

_BIND_ATTEMPTS = 4


def _start_proxy(proxy_location: str = "HeadOnly") -> int:
    """Start Serve's HTTP proxy on a free loopback port, trying another port if the bind fails.
    ``EveryNode`` on several nodes of one machine: every node's proxy binds the same port (Serve sets
    SO_REUSEPORT) and the kernel spreads connections over them, as a load balancer in front of a cluster
    spreads them over its nodes."""
    for attempt in range(1, _BIND_ATTEMPTS + 1):
        port = free_port()
        try:
            serve.start(
                proxy_location=proxy_location,
                http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False},
            )
            return port
        except Exception as exc:  # Serve reports a failed bind as RayTaskError(RuntimeError)
            if "Failed to bind" not in str(exc) or attempt == _BIND_ATTEMPTS:
                raise
            log.warning("port %d was taken before the proxy bound it; trying another", port)
            serve.shutdown()
    raise AssertionError("unreachable")


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment (so in the Ray processes started meanwhile), then back."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def local_app(
    args: dict[str, Any] | AppConfig,
    num_cpus: int = 2,
    address: str | None = None,
    metrics_port: int | None = None,
    proxy_location: str = "HeadOnly",
) -> Iterator[str]:
    """Ray (local with ``num_cpus``, or the cluster at ``address``) serving the app on a free
    loopback port through one HTTP proxy; yields the base URL and shuts everything down after.
    """
    with environment({} if address else ray_env()):  # as ``posefleet serve`` starts its Ray
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, _metrics_export_port=metrics_port)
        try:
            port = _start_proxy(proxy_location)
            serve.run(build_app(args), name="posefleet", route_prefix="/")
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()
            ray.shutdown()


def listener(port: int) -> tuple[int, str]:
    """The pid and name of the process that listens on TCP ``port`` here (Linux's /proc), or (0, '')."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name), (proc / "comm").read_text().strip()
        except OSError:
            continue
    return 0, ""


SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi and GStreamer's RTSP server
RTSP_CAMERA = Path(__file__).resolve().parents[1] / "scripts" / "rtsp_camera.py"


def rtsp_available() -> bool:
    """Whether a live RTSP camera can run here (scripts/install-test-tools.sh installs what it needs)."""
    try:
        check = subprocess.run([SYSTEM_PYTHON, str(RTSP_CAMERA), "--check"], capture_output=True)
    except OSError:
        return False
    return check.returncode == 0 and shutil.which("ffmpeg") is not None


def rtsp_camera(port: int, clip: Path) -> subprocess.Popen:
    """A live RTSP camera at ``rtsp://127.0.0.1:{port}/cam`` playing ``clip`` (ten times over) at its own rate
    to every client, listening when this returns."""
    proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_CAMERA), str(looped(clip)), "--port", str(port)],
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


@cache
def looped(clip: Path, times: int = 10) -> Path:
    """``clip`` ``times`` over, copied, not re-encoded (an RTSP session plays its file once)."""
    out = Path(tempfile.mkdtemp(prefix="posefleet-rtsp-")) / f"{clip.stem}-x{times}{clip.suffix}"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", str(times - 1), "-i", str(clip), "-c", "copy",
                    str(out)], check=True)  # fmt: skip
    return out
