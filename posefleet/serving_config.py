"""Typed configuration of serving: the Serve deployments, admission and caps, checkpoints, camera sources, sinks, the
viewer, security and group fusion; ``AppConfig`` is a Serve application's ``args`` (the pipeline's preset and
overrides beside these). Presets in ``configs/*.yaml`` and Serve config files override the defaults."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from posefleet.config import PipelineConfig, Policy, _Strict, load_pipeline_config
from posefleet.court.settings import GroupsConfig


class DeploymentSettings(_Strict):
    """Replicas and resources of one Serve deployment."""

    num_replicas: int = Field(1, ge=1)
    autoscaling: dict[str, Any] | None = Field(
        None, description="Serve autoscaling_config (min_replicas, max_replicas, ...); replaces num_replicas"
    )
    num_cpus: float = Field(1.0, ge=0.0)
    num_gpus: float = Field(0.0, ge=0.0, description="fractions share a GPU between replicas")
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = Field(
        128, ge=-1, description="requests Serve queues for this deployment; beyond: 503 + Retry-After (-1: unbounded)"
    )
    max_replicas_per_node: int | None = Field(None, ge=1, description="1 spreads replicas over nodes")
    health_check_period_s: float = Field(2.0, gt=0.0, description="how soon a dead replica is replaced")
    health_check_timeout_s: float = Field(10.0, gt=0.0)


class IngressSettings(DeploymentSettings):
    """The ingress caps frames, uploads, sockets and viewers itself (``serving.limits``; 503 + Retry-After
    beyond each), so Serve's ``max_ongoing_requests`` sits above their sum: Serve never queues a frame behind
    a viewer or an upload."""

    num_cpus: float = Field(0.5, ge=0.0)
    max_ongoing_requests: int = Field(1000, ge=1)
    # a burst of connections (200 viewers at once) waits in Serve's router for a moment before it reaches the
    # replica and its caps: a small queue bound there refused an honest frame in the burst
    max_queued_requests: int = Field(1000, ge=-1)


class BatchSettings(_Strict):
    max_batch_size: int = Field(8, ge=1, description="frames (detector) or crops (pose) per inference")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0)


class ModelDeploymentSettings(DeploymentSettings):
    batch: BatchSettings = Field(default_factory=BatchSettings)

    @model_validator(mode="after")
    def _batches_can_fill(self) -> ModelDeploymentSettings:
        if self.max_ongoing_requests < self.batch.max_batch_size:
            raise ValueError("max_ongoing_requests must be >= batch.max_batch_size, else batches never fill")
        return self


class AdmissionConfig(_Strict):
    """What each stream's holder enforces (the ingress replica with ``workers: 0``, else the stream worker
    holding it): one frame in flight per stream, the rest by the overload policy; decoded pixels in flight;
    streams held, in all and per client; idle streams forgotten."""

    overload_policy: Policy = Field(
        "drop_oldest", description="per-stream default; a request may set its stream's policy"
    )
    max_waiting_per_stream: int = Field(4, ge=1, description="frames a 'wait' stream may queue")
    frame_timeout_s: float = Field(
        10.0, gt=0.0, description="a frame in flight (or waiting for an ingress slot) longer than this is abandoned"
    )
    order_wait_s: float = Field(
        1.0, gt=0.0, le=10.0,
        description=(
            "a frame reaching its stream's holder before the frame sent just before it waits for that one at "
            "most this long (Ray runs an async actor's calls in any order)"
        ),
    )  # fmt: skip
    max_decoding_pixels: int = Field(
        4 * 4096 * 2160, ge=1,
        description=(
            "decoded pixels in flight per stream holder; a frame beyond waits its turn, at most "
            "frame_timeout_s, then 503: memory stays bounded whatever the mix of sizes"
        ),
    )  # fmt: skip
    max_streams: int = Field(10_000, ge=1, description="streams held at once per stream holder")
    max_streams_per_client: int = Field(5_000, ge=1, description="per client, per stream holder")
    stream_idle_s: float = Field(
        600.0, gt=0.0, description="a stream with no frame for this long is forgotten (state, checkpoint, view)"
    )


class CheckpointConfig(_Strict):
    every: int = Field(10, ge=1, description="frames between a stream's state checkpoints (and its first)")
    flush_s: float = Field(
        0.5, gt=0.0, le=10.0, description="how often a worker sends its streams' checkpoints, all in one call"
    )
    active_s: float = Field(
        60.0, gt=0.0, description="a stream checkpointed within this counts where new streams are placed "
        "(one sending under every/active_s frames a second, or none, leaves its worker's count)",
    )  # fmt: skip


class LimitsConfig(_Strict):
    """What each ingress replica enforces: frames in flight, request sizes, and what a client may hold apart
    from frames, per client and in total; beyond a cap: 503 + Retry-After (413 for a body too large). A
    client is its bearer token (or, with auth off, its address). Long-lived connections and uploads never
    take a frame slot (``max_inflight_frames``)."""

    max_inflight_frames: int = Field(48, ge=1, description="frames in flight per ingress replica")
    batch_frames_per_client: int = Field(
        8, ge=1,
        description=(
            "frames of POST /v1/frames one client has in flight at once per ingress replica; the rest of its "
            "batches wait (not refused): one client's big batch cannot queue ahead of every other stream"
        ),
    )  # fmt: skip
    max_body_bytes: int = Field(20_000_000, ge=1, description="a request's body (a WebSocket message: one frame)")
    max_batch_frames: int = Field(64, ge=1, description="frames one POST /v1/frames may carry")
    ws_max_inflight: int = Field(
        4, ge=1, description="a WebSocket's frames unanswered before the server stops reading (backpressure)"
    )
    max_viewers: int = Field(32, ge=0, description="open GET /v1/events")
    max_viewers_per_client: int = Field(8, ge=0)
    max_sockets: int = Field(256, ge=0, description="open frame WebSockets")
    max_sockets_per_client: int = Field(128, ge=0)
    max_uploads: int = Field(256, ge=1, description="request bodies being read")
    max_uploads_per_client: int = Field(128, ge=1)
    body_timeout_s: float = Field(
        10.0, gt=0.0, description="a request body not read in full within this is refused (408)"
    )
    socket_idle_s: float = Field(120.0, gt=0.0, description="a WebSocket silent this long is closed")
    page_size: int = Field(100, ge=1, le=10_000, description="GET /v1/streams: the default and largest page")

    def held(self) -> int:
        """Requests the caps let one ingress replica hold open at once (beside management calls)."""
        return self.max_viewers + self.max_sockets + self.max_uploads + self.max_inflight_frames


class SourcesConfig(_Strict):
    """Cameras the cluster pulls itself (``POST /v1/sources``): off unless enabled, and only from what the
    allowlist names; the server never fetches anything else."""

    enabled: bool = Field(False, description="accept POST /v1/sources")
    allow_schemes: list[Literal["rtsp", "rtsps", "http", "https", "file"]] = Field(
        default_factory=lambda: ["rtsp", "rtsps", "http", "https"], description="URL schemes a source may use"
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="names a camera URL may use as they are, or IP networks (CIDR) for addresses; empty: none",
    )
    allow_dirs: list[str] = Field(default_factory=list, description="directories file sources may read from")
    max_sources: int = Field(16, ge=0, description="sources at once, per cluster")
    max_per_node: int = Field(8, ge=1, description="source actors a node runs at most (then the next node)")
    num_cpus: float = Field(0.1, ge=0.0, description="CPUs Ray reserves for each source actor (it decodes)")
    max_fps: float = Field(30.0, gt=0.0, description="the most frames a second a source hands on (and the default)")
    open_timeout_s: float = Field(10.0, gt=0.0, description="connecting to a camera gives up after this")
    rtsp_transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP media over the control connection (tcp: no lost packets, passes NAT) or udp"
    )
    stall_s: float = Field(5.0, gt=0.0, description="no frame for this long: the camera stalled, reconnect")
    reconnect_min_s: float = Field(0.5, gt=0.0)
    reconnect_max_s: float = Field(10.0, gt=0.0, description="backoff between reconnects doubles up to this")
    state_file: str | None = Field(
        None,
        description=(
            "the sources asked for are kept in this file (owner-only: URLs may hold credentials) and started "
            "again by the next deploy, or after a head restart; None: they last as long as the deploy"
        ),
    )
    max_failed_connects: int = Field(
        5, ge=1, description="a source that never connected ends 'failed' after this many tries in a row"
    )


class WebhookConfig(_Strict):
    """Every stream's results POSTed to a receiver as ``{"results": [...]}`` batches, retried with backoff
    (at least once: each batch has an ``X-Posefleet-Batch`` id, each result its stream and frame index)."""

    url: str | None = Field(None, description="http(s) URL the batches go to; None: off")
    token_env: str | None = Field(None, description="env var whose value is sent as a bearer token")
    batch_max: int = Field(200, ge=1, description="results a batch holds at most")
    interval_s: float = Field(1.0, gt=0.0, description="a batch that is not full goes after this long")
    timeout_s: float = Field(10.0, gt=0.0, description="one POST gives up after this (then retried)")
    retry_min_s: float = Field(0.5, gt=0.0)
    retry_max_s: float = Field(30.0, gt=0.0, description="backoff between retries doubles up to this")
    max_queue: int = Field(
        100_000, ge=1, description="results waiting per ingress replica; beyond it the oldest are shed"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("a webhook URL starts with http:// or https://")
        return url


class SinkConfig(_Strict):
    """Every stream's results appended as JSON lines, one file per stream and hour (rotated by size too),
    and/or pushed to a webhook."""

    directory: str | None = Field(None, description="results/<stream>/<UTC hour>[.n].jsonl here; None: off")
    rotate_mb: float = Field(64.0, gt=0.0, description="a file this large is closed and the next one opened")
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)


class ViewerConfig(_Strict):
    enabled: bool = Field(True, description="serve the live viewer at / and publish results to it")
    thumbnail_interval_s: float = Field(
        0.5, gt=0.0, description="a picture per stream this often while a viewer watches"
    )
    idle_thumbnail_interval_s: float = Field(
        5.0, gt=0.0, description="a picture per stream this often while nobody watches (what an ended stream shows)"
    )
    ended_after_s: float = Field(10.0, gt=0.0, description="a stream not heard from this long is shown ended")
    keep_ended_s: float = Field(600.0, ge=0.0, description="an ended stream's last picture and result stay this long")
    max_ended: int = Field(32, ge=0, description="ended streams kept for the viewer at most (the newest)")
    thumbnail_width: int = Field(384, ge=32)
    max_hz: float = Field(10.0, gt=0.0, description="event rate to each open viewer")
    flush_s: float = Field(
        0.1, gt=0.0, le=5.0, description="how often each ingress replica sends its results to the viewer hub"
    )


class SecurityConfig(_Strict):
    auth_token: str | None = Field(None, description="bearer token(s), comma-separated; prefer auth_token_env")
    auth_token_env: str = Field("POSEFLEET_TOKEN", description="env var holding the bearer token")
    cors_origins: list[str] = Field(default_factory=list, description="empty: CORS off")

    def api_token(self) -> str | None:
        """The first bearer token (the one this server's own client sends); None: no auth."""
        tokens = self.api_tokens()
        return tokens[0] if tokens else None

    def api_tokens(self) -> list[str]:
        """Every bearer token accepted (config first, else the environment; comma-separated: one a client,
        each with its own caps under ``serving.limits``); empty: no auth."""
        raw = self.auth_token or os.environ.get(self.auth_token_env) or ""
        return [t.strip() for t in raw.split(",") if t.strip()]


MOVED = {  # settings whose place changed: old -> new, under serving
    "admission.max_inflight_frames": "limits.max_inflight_frames",
    "admission.batch_frames_per_client": "limits.batch_frames_per_client",
    "max_body_bytes": "limits.max_body_bytes",
    "max_batch_frames": "limits.max_batch_frames",
    "ws_max_inflight": "limits.ws_max_inflight",
    "limits.max_streams": "admission.max_streams",
    "limits.max_streams_per_client": "admission.max_streams_per_client",
    "limits.stream_idle_s": "admission.stream_idle_s",
}


class ServingConfig(_Strict):
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    detector: ModelDeploymentSettings = Field(default_factory=lambda: ModelDeploymentSettings(num_cpus=0.5))
    pose: ModelDeploymentSettings = Field(
        default_factory=lambda: ModelDeploymentSettings(num_cpus=0.5, batch=BatchSettings(max_batch_size=32))
    )
    models: Literal["local", "deployments"] = Field(
        "local",
        description=(
            "local: every stream worker runs the models itself (ONNX Runtime, its streams' frames batched), one "
            "Ray call a frame; deployments: workers call the Detector/Pose Serve deployments (GPU nodes)"
        ),
    )
    workers: int = Field(
        2, ge=0,
        description=(
            "stream workers (Ray actors); streams are spread over them by id. 0: each ingress replica holds its "
            "streams and models itself, no Ray call a frame (one ingress replica only: nothing routes a stream "
            "back to the replica that holds it)"
        ),
    )  # fmt: skip
    worker_num_cpus: float = Field(0.5, ge=0.0, description="CPUs Ray reserves for each stream worker")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="enforced by each stream's holder (a worker, or the ingress)"
    )
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    viewer: ViewerConfig = Field(default_factory=ViewerConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="enforced by each ingress replica")
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    metrics_per_stream: bool = Field(
        False, description="label posefleet_frames_total by stream id (one series per stream ever seen)"
    )
    access_log: bool = Field(False, description="Serve access logs cost 17-37% throughput on small machines")
    namespace: str = "posefleet"
    retry_after_s: int = Field(1, ge=1)
    fault_retry_s: float = Field(15.0, ge=0.0, description="retry calls to dead replicas/actors this long")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """A setting from before limits were grouped by the process enforcing them gets the way to its new place."""
        if isinstance(data, dict):
            for old, new in MOVED.items():
                section, _, key = old.rpartition(".")
                held = data.get(section) if section else data
                if isinstance(held, dict) and key in held:
                    raise ValueError(f"serving.{old} is now serving.{new}")
        return data

    @model_validator(mode="after")
    def _caps_fit_serve(self) -> ServingConfig:
        held = self.limits.held()
        if self.ingress.max_ongoing_requests < held:
            raise ValueError(
                f"ingress.max_ongoing_requests ({self.ingress.max_ongoing_requests}) must be at least the ingress's "
                f"own caps (limits.max_viewers + max_sockets + max_uploads + max_inflight_frames = {held}), "
                "else Serve queues frames behind viewers and uploads"
            )
        return self

    @model_validator(mode="after")
    def _streams_have_one_home(self) -> ServingConfig:
        if self.workers == 0 and (self.ingress.num_replicas > 1 or self.ingress.autoscaling):
            raise ValueError("workers: 0 (streams held by the ingress) needs exactly one ingress replica")
        return self


class AppConfig(_Strict):
    """Everything a Serve application needs: the ``args`` of a Serve config file."""

    preset: str | None = Field("balanced", description="configs/<preset>.yaml, the pipeline's base")
    pipeline: dict[str, Any] = Field(default_factory=dict, description="overrides merged over the preset")
    serving: ServingConfig = Field(default_factory=ServingConfig)
    _pipeline: PipelineConfig = PrivateAttr()

    @model_validator(mode="after")
    def _resolve_pipeline(self) -> AppConfig:
        """The preset read and the overrides merged and checked once, where the config is validated (at
        deploy): replicas get the typed result with the config, and read no preset file again."""
        self._pipeline = load_pipeline_config(self.preset, overrides=self.pipeline)
        return self

    def pipeline_config(self) -> PipelineConfig:
        return self._pipeline
