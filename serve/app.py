"""The Serve application: ``Ingress`` -> stream workers, composed with ``.bind()``; with
``serving.models: deployments`` also -> (``Detector``, ``Pose``) Serve deployments.

``serve run configs/serve-cpu.yaml`` and ``posefleet serve`` both build it from the ``args`` of a
Serve config file (an :class:`~posefleet.serving_config.AppConfig`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pydantic
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from posefleet.actors.deployments import DetectorDeployment, PoseDeployment
from posefleet.config import CONFIG_DIR
from posefleet.serve.ingress import Ingress
from posefleet.serving_config import AppConfig, DeploymentSettings, ServingConfig


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
