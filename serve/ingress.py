"""HTTP ingress: the ``Ingress`` Serve deployment (FastAPI through ``serve.ingress``), whose routes come
from its mixins, one module a concern:

- ``transports``: frames in, three ways (``POST /v1/streams/{id}/frames``, ``WS /v1/streams/{id}/ws``,
  ``POST /v1/frames``) and from camera sources, one path behind them;
- ``management``: streams, sources and stats;
- ``viewer_routes``: the live page and its feeds;
- ``api`` and ``auth``: the FastAPI app, OpenAPI descriptions, error answers, bearer tokens.

Each frame's encoded bytes go to its stream's holder in one Ray call (``FrameRouter``), where it is admitted
(in order, stale frames dropped under overload), decoded and run through the pipeline. Calls to a holder
that died are retried for a while, then answered 503 with Retry-After: clients see retries or clear
errors, never a hang. Errors map to HTTP answers in one place (:func:`posefleet.serve.api.error_answer`).
"""

import contextlib
import logging

import ray
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from ray.serve.handle import DeploymentHandle

from posefleet.actors.owner import app_owner
from posefleet.actors.router import FrameRouter
from posefleet.actors.source import source_registry
from posefleet.pipeline.admission import Budget
from posefleet.pipeline.schema import Health
from posefleet.serve.api import app
from posefleet.serve.capacity import Caps, Shares
from posefleet.serve.group_routes import GroupRoutes
from posefleet.serve.management import Management
from posefleet.serve.transports import FrameTransports
from posefleet.serve.viewer_routes import ViewerRoutes
from posefleet.serving_config import AppConfig


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress(FrameTransports, Management, ViewerRoutes, GroupRoutes):
    def __init__(
        self,
        app_cfg: AppConfig,
        deploy_id: str,
        detector: DeploymentHandle | None = None,
        pose: DeploymentHandle | None = None,
    ):
        self.serving = s = app_cfg.serving
        # the deploy's actors belong to its owner: created by the first replica, removed after the last
        self.owner = app_owner(deploy_id, s.namespace)
        self.member = ray.get_runtime_context().get_actor_id()
        ray.get(self.owner.join.remote(self.member))
        models = (detector, pose) if detector is not None else None
        self.router = FrameRouter(app_cfg, deploy_id, models)
        self.detector, self.pose, self.hub = detector, pose, self.router.hub
        self.metrics = self.router.metrics
        self.slots = Budget(s.limits.max_inflight_frames, s.admission.frame_timeout_s, "frames")
        self.shares = Shares(s.limits.batch_frames_per_client)
        self.node = ray.get_runtime_context().get_node_id()[:12]  # answers say which node served them
        app.state.auth_tokens = s.security.api_tokens()
        app.state.retry_after = s.retry_after_s
        caps = s.limits
        self.sources = None
        if s.sources.enabled:  # the cameras this deploy pulls itself
            app_name = serve.get_replica_context().app_name
            self.sources = source_registry(app_cfg, deploy_id, app_name, models)
        self.viewers = Caps("viewers", caps.max_viewers, caps.max_viewers_per_client)
        self.sockets = Caps("sockets", caps.max_sockets, caps.max_sockets_per_client)
        self.uploads = Caps("uploads", caps.max_uploads, caps.max_uploads_per_client)
        if not app.state.auth_tokens:
            logging.getLogger("posefleet.ingress").warning(
                "no API token (set %s or serving.security.auth_token): every client is admitted",
                s.security.auth_token_env,
            )
        if s.security.cors_origins:
            app.add_middleware(
                CORSMiddleware, allow_origins=s.security.cors_origins, allow_methods=["*"], allow_headers=["*"]
            )

    def __del__(self) -> None:
        """Serve stops this replica (app deleted, redeployed or scaled down): flush the sinks, leave the
        deploy's owner."""
        with contextlib.suppress(Exception):
            self.router.close()
        with contextlib.suppress(Exception):
            ray.get(self.owner.leave.remote(self.member), timeout=10)

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health()
