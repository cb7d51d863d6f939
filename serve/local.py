"""Run the Serve application on a Ray started here (or joined), for tests, benchmarks and demos."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray import serve

from posefleet.config import AppConfig
from posefleet.serve.app import build_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = free_port()
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _metrics_export_port=metrics_port)
    try:
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False},
        )
        serve.run(build_app(args), name="posefleet", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
