"""Run the Serve application on a Ray started here (or joined): the harness of the tests and benchmarks
(not shipped in the package; ``posefleet serve`` is the product's way to serve)."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import serve

from posefleet.config import AppConfig
from posefleet.serve.app import build_app, port_in_use

log = logging.getLogger(__name__)

# Ray's worker processes take ports 10002-19999 by default, and every outgoing connection (Ray
# opens many) takes one from the kernel's ephemeral range. A port picked inside either range can be
# gone by the time the HTTP proxy binds it, so pick between the two.
_LOW_PORT = 20000
_BIND_ATTEMPTS = 4


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS starts at 49152


def free_port() -> int:
    """A loopback port free right now and outside the ranges Ray and the kernel hand out."""
    high = max(_ephemeral_low() - 1, _LOW_PORT + 100)
    for _ in range(200):
        port = random.randint(_LOW_PORT, high)
        if not port_in_use("127.0.0.1", port):
            return port
    with socket.socket() as s:  # everything busy: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_proxy() -> int:
    """Start Serve's HTTP proxy on a free loopback port, trying another port if the bind fails."""
    for attempt in range(1, _BIND_ATTEMPTS + 1):
        port = free_port()
        try:
            serve.start(
                proxy_location="HeadOnly",
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
def local_app(
    args: dict[str, Any] | AppConfig,
    num_cpus: int = 2,
    address: str | None = None,
    metrics_port: int | None = None,
) -> Iterator[str]:
    """Ray (local with ``num_cpus``, or the cluster at ``address``) serving the app on a free
    loopback port through one HTTP proxy; yields the base URL and shuts everything down after.
    """
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _metrics_export_port=metrics_port)
    try:
        port = _start_proxy()
        serve.run(build_app(args), name="posefleet", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
