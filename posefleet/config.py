"""Typed configuration: every tunable number of the pipeline lives here, with its default.

Presets in ``configs/*.yaml`` and Serve config files override these defaults; nothing else in the
code carries thresholds of its own.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from posefleet.court.settings import GroupsConfig

CONFIG_DIR = Path(str(resources.files("posefleet.configs")))

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrtConfig(_Strict):
    """ONNX Runtime session settings for one model."""

    providers: list[str] = Field(default_factory=lambda: [TENSORRT, CUDA, CPU])
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_num_threads: int = Field(0, ge=0, description="0 lets ONNX Runtime choose")
    inter_op_num_threads: int = Field(0, ge=0)
    allow_spinning: bool = Field(
        False,
        description=(
            "let idle ORT pool threads spin for work: on a few shared cores (this pipeline runs decode, "
            "tracking and two models in turn) the spinning steals the cores the next stage needs"
        ),
    )
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    parallel_runs: int = Field(
        1, ge=1,
        description=(
            "a model whose graph has a fixed batch of 1 (MoveNet) runs a batch of inputs as this many concurrent "
            "session.run calls; with intra_op_num_threads 1 and one run per core this beats one run on every core"
        ),
    )  # fmt: skip
    device_id: int = Field(0, ge=0)
    trt_fp16: bool = True
    trt_engine_cache_dir: str | None = None


class TilingConfig(_Strict):
    """Detect on overlapping tiles (plus, optionally, the whole frame) and merge with NMS.

    MoveNet finds at most 6 people a pass; a court holds 12 players. Frames whose tiles would be
    smaller than the detector input are not tiled (tiling them shows nobody larger).
    """

    enabled: bool = False
    cols: int = Field(2, ge=1, le=8)
    rows: int = Field(1, ge=1, le=8)
    overlap: float = Field(0.25, ge=0.0, lt=0.9, description="fraction of a tile shared with its neighbour")
    include_full_frame: bool = True
    min_aspect: float = Field(0.0, ge=0.0, description="tile only frames with width/height at least this (0: always)")
    max_contained: float = Field(
        0.8, gt=0.0, le=1.0,
        description="drop a box lying this much inside a better one (a person cut by a tile edge); 1: keep all",
    )  # fmt: skip


class ScanConfig(_Strict):
    """A full scan: tiles over the frame (or the region of interest) sized so that the smallest person is
    large enough in the model's input, and regions that return as many people as a call can hold split
    until none is full: no model's output size bounds the people of a frame."""

    adaptive: bool = Field(
        False, description="tiles sized from the smallest person (the tracks', else person_height); off: `tiling`"
    )
    min_person_px: int = Field(48, ge=8, description="the smallest person's height wanted in the model input")
    person_height: float = Field(
        0.3, gt=0.0, le=1.0, description="the smallest person expected on a stream's first scan, a fraction of the "
        "frame height; each scan that finds nobody halves it, down to min_person_height",
    )  # fmt: skip
    min_person_height: float = Field(0.05, gt=0.0, le=1.0, description="the smallest person a scan looks for")
    track_margin: float = Field(0.8, gt=0.0, le=1.0, description="scan for people this much smaller than the "
                                "smallest tracked one")  # fmt: skip
    roi_rise: float = Field(
        0.3, ge=0.0, le=1.0, description="a scan covers this much of the frame height above the region of interest "
        "before any person is tracked (then 1.2 x the tallest tracked): people stand in it, bodies rise above",
    )  # fmt: skip
    max_tiles: int = Field(12, ge=1, description="tiles a scan uses at most (the tiles grow past min_person_px)")
    overlap: float = Field(0.25, ge=0.0, lt=0.9, description="fraction of a tile shared with its neighbour")
    include_full_frame: bool = Field(True, description="also the whole area at the input size (large people)")
    split_full: bool = Field(
        True, description="a region returning the model's most people a call is split in two and looked at again"
    )
    max_splits: int = Field(3, ge=0, le=6, description="rounds of splitting at most")


class GuidedConfig(_Strict):
    """Track-guided detection: the detector runs on crops around tracked people, and a full scan is spread over
    ``scan_frames`` frames (each frame looks at every Nth of the scan's tiles beside the crops), so a frame
    costs with the people in it, not its pixels, and no frame pays a whole scan. The whole scan runs at once
    when nobody is tracked (and, with ``scan_on_loss``, after a track was lost); a crop that comes back full
    is split like any region."""

    enabled: bool = False
    scan_frames: int = Field(
        5, ge=1, description="frames a full scan is spread over (1: the whole scan on every frame)"
    )
    max_people: int = Field(4, ge=1, description="tracked people a crop holds at most (under the model's cap)")
    min_person_px: int = Field(80, ge=8, description="the smallest person of a crop, in the model input's pixels")
    max_upscale: float = Field(1.5, ge=1.0, le=4.0, description="a crop is enlarged at most this much")
    margin: float = Field(
        0.3, ge=0.0, le=2.0, description="each tracked box grown by this fraction of its height on every side"
    )
    max_input: int = Field(384, ge=32, description="a crop's model input long side at most")
    call_px: int = Field(
        96 * 96, ge=0, description="a model call's fixed cost in input pixels: crops merge while that saves pixels"
    )
    lost_frames: int = Field(5, ge=0, description="a track lost this few frames ago still gets a crop")
    warmup_frames: int = Field(
        5, ge=0, description="a stream's first frames each get the whole scan (a camera just connected)"
    )
    scan_on_loss: bool = Field(
        False, description="a tracked person the crops did not find again asks for a scan on the next frame "
        "(off: the lost track keeps a crop for lost_frames, the next scan looks everywhere)",
    )  # fmt: skip


class DetectorConfig(_Strict):
    decoder: Literal["movenet", "rtmdet", "yolox", "nanodet"] = "movenet"
    model: str = "movenet_multipose_lightning"
    sha256: str | None = None
    input_size: int = Field(256, ge=32, description="long side (movenet) or square side (rtmdet/yolox)")
    score_threshold: float = Field(0.15, ge=0.0, le=1.0, description="drop detections below this")
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    max_people: int = Field(64, ge=1)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    scan: ScanConfig = Field(default_factory=ScanConfig)
    guided: GuidedConfig = Field(default_factory=GuidedConfig)
    ort: OrtConfig = Field(default_factory=OrtConfig)

    @model_validator(mode="after")
    def _size_multiple(self) -> DetectorConfig:
        if self.decoder == "movenet" and self.input_size % 32:
            raise ValueError("movenet input_size must be a multiple of 32")
        return self


class PoseConfig(_Strict):
    decoder: Literal["blazepose", "rtmpose", "movenet-single"] = "blazepose"
    model: str = "blazepose_landmark_full"
    sha256: str | None = None
    input_width: int = Field(256, ge=16)
    input_height: int = Field(256, ge=16)
    crop_scale: float = Field(1.25, gt=1.0, le=3.0, description="crop side = box side (or body circle) x this")
    align: bool = Field(
        True,
        description=(
            "cut each crop centred on the hips and rotated upright from the person's hip and shoulder "
            "keypoints, as MediaPipe aligns BlazePose's input; an axis-aligned box crop where they are unsure"
        ),
    )
    align_min_score: float = Field(0.3, ge=0.0, le=1.0, description="hips and shoulders needed to align a crop")
    max_batch: int = Field(32, ge=1, description="crops per session.run")
    min_person_score: float = Field(
        0.5, ge=0.0, le=1.0, description="a carried track below this is lost (forces a detection)"
    )
    ort: OrtConfig = Field(default_factory=OrtConfig)


class TrackerConfig(_Strict):
    """ByteTrack parameters, in the detector's score units.

    The reference defaults (0.5 / 0.6, fused scores) suit detectors scoring people near 0.9;
    MoveNet's person scores are lower, so these defaults sit lower too.
    """

    high_thresh: float = Field(0.15, ge=0.0, le=1.0, description="first association pass")
    low_thresh: float = Field(0.1, ge=0.0, le=1.0, description="second pass takes scores in [low, high)")
    new_track_thresh: float = Field(0.15, ge=0.0, le=1.0)
    match_thresh: float = Field(0.8, gt=0.0, le=1.0, description="max 1-IoU for the first pass")
    second_match_thresh: float = Field(0.5, gt=0.0, le=1.0)
    unconfirmed_match_thresh: float = Field(0.7, gt=0.0, le=1.0)
    track_buffer: int = Field(30, ge=1, description="frames a lost track is kept (at 30 fps)")
    frame_rate: float = Field(30.0, gt=0.0)
    fuse_score: bool = Field(
        False, description="IoU x score gating; off by default: MoveNet person scores sit at 0.2-0.6"
    )


class SmoothingConfig(_Strict):
    """One-Euro filter on keypoints, per track."""

    enabled: bool = False
    min_cutoff: float = Field(1.0, gt=0.0)
    beta: float = Field(0.05, ge=0.0)
    d_cutoff: float = Field(1.0, gt=0.0)


PoseSource = Literal["single-stage", "top-down", "fused"]


class StreamSettings(_Strict):
    """One stream's (camera's) own settings over the pipeline's: the region of interest, the court polygon."""

    roi: list[tuple[float, float]] | None = Field(
        None,
        description=(
            "the region of interest as a polygon of image points [[x, y], ...] in order round it (3-64 points, not "
            "self-crossing): scans cover its bounding box, and people standing outside it are not returned"
        ),
    )
    keep_outside_roi: bool = Field(False, description="return people outside the roi too, flagged outside_roi")

    @field_validator("roi")
    @classmethod
    def _polygon(cls, roi: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if roi is not None:
            from posefleet.pipeline.roi import check_polygon  # the pipeline's own check (it imports this module)

            check_polygon(roi)
        return roi


class PipelineConfig(_Strict):
    pose_source: PoseSource = Field(
        "single-stage",
        description=(
            "where keypoints come from: the detector's own (single-stage, every frame), a top-down pose model "
            "on tracked boxes (top-down, detect every N), or both averaged by score (fused)"
        ),
    )
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    pose: PoseConfig = Field(default_factory=PoseConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)
    stream: StreamSettings = Field(
        default_factory=StreamSettings, description="every stream's settings unless its own are given"
    )
    streams: dict[str, StreamSettings] = Field(
        default_factory=dict, description="the settings of streams (cameras) known in advance, by stream id"
    )
    detect_every: int = Field(
        1, ge=1,
        description=(
            "run the detector every N frames, the tracker carrying boxes between: a top-down pose model measures "
            "them there; single-stage, each person's last keypoints move with its predicted box"
        ),
    )  # fmt: skip
    index_restart_gap: int = Field(
        900, ge=1,
        description=(
            "a frame index this far or further behind the stream's last is a camera that restarted its count "
            "(or that jumped far ahead by mistake): the stream's sequence restarts there, tracks kept"
        ),
    )  # fmt: skip
    keypoint_min_score: float = Field(0.3, ge=0.0, le=1.0, description="keypoints used to refine a box")
    keypoint_box_padding: float = Field(1.2, ge=1.0, le=2.0)
    # sized for real cameras: DCI 4K (4096x2160) at most; a legal but huge image costs seconds of CPU to decode
    max_image_pixels: int = Field(4096 * 2160, ge=1, description="larger images are refused (413)")
    max_image_side: int = Field(4096, ge=1, description="a wider or taller image is refused (413)")

    @model_validator(mode="after")
    def _source_fits(self) -> PipelineConfig:
        if self.pose_source != "top-down" and self.detector.decoder != "movenet":
            raise ValueError(f"pose_source {self.pose_source!r} needs a detector that gives keypoints (movenet)")
        return self

    def settings_for(self, stream_id: str) -> StreamSettings:
        """A stream's own settings where the config names it, else every stream's."""
        return self.streams.get(stream_id, self.stream)

    @property
    def needs_pose_model(self) -> bool:
        return self.pose_source != "single-stage"


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("serve"))
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(known)}")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_pipeline_config(
    preset: str | None = "balanced", path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Preset, then a YAML file, then explicit overrides, each merged over the one before."""
    data: dict[str, Any] = {}
    for source in ([preset_path(preset)] if preset else []) + ([Path(path)] if path else []):
        loaded = yaml.safe_load(Path(source).read_text()) or {}
        data = deep_merge(data, loaded.get("pipeline", loaded))
    return PipelineConfig.model_validate(deep_merge(data, overrides or {}))


# -- serving -------------------------------------------------------------------------------------
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
    """How frames of a stream are let in: one in flight per stream, the rest by the overload policy."""

    overload_policy: Literal["drop_oldest", "wait"] = Field(
        "drop_oldest", description="per-stream default; a request may set its stream's policy"
    )
    max_waiting_per_stream: int = Field(4, ge=1, description="frames a 'wait' stream may queue")
    frame_timeout_s: float = Field(10.0, gt=0.0, description="a frame in flight longer than this is abandoned")
    max_inflight_frames: int = Field(48, ge=1, description="per ingress replica; beyond: 503 + Retry-After")
    batch_frames_per_client: int = Field(
        8, ge=1,
        description=(
            "frames of POST /v1/frames one client has in flight at once per ingress replica; the rest of its "
            "batches wait (not refused): one client's big batch cannot queue ahead of every other stream"
        ),
    )  # fmt: skip
    order_wait_s: float = Field(
        1.0, gt=0.0, le=10.0,
        description=(
            "a frame reaching its stream's worker before the frame its ingress sent just before it waits for "
            "that one at most this long (Ray runs an async actor's calls in any order)"
        ),
    )  # fmt: skip
    max_decoding_pixels: int = Field(
        4 * 4096 * 2160, ge=1,
        description=(
            "decoded pixels in flight per stream holder (ingress replica or worker); a frame beyond waits "
            "its turn, at most frame_timeout_s, then 503: memory stays bounded whatever the mix of sizes"
        ),
    )  # fmt: skip


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
    """What a client may hold apart from frames, per client and in total on each ingress replica; beyond a
    cap: 503 + Retry-After. A client is its bearer token (or, with auth off, its address). Long-lived
    connections and uploads never take a frame slot (``admission.max_inflight_frames``)."""

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
    max_streams: int = Field(
        10_000, ge=1, description="streams held at once per stream holder (ingress replica or worker)"
    )
    max_streams_per_client: int = Field(5_000, ge=1, description="per client, per stream holder")
    stream_idle_s: float = Field(
        600.0, gt=0.0, description="a stream with no frame for this long is forgotten (state, checkpoint, view)"
    )
    page_size: int = Field(100, ge=1, le=10_000, description="GET /v1/streams: the default and largest page")

    def held(self, frames: int) -> int:
        """Requests the caps let one ingress replica hold open at once (beside management calls)."""
        return self.max_viewers + self.max_sockets + self.max_uploads + frames


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
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    viewer: ViewerConfig = Field(default_factory=ViewerConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    metrics_per_stream: bool = Field(
        False, description="label posefleet_frames_total by stream id (one series per stream ever seen)"
    )
    max_body_bytes: int = Field(20_000_000, ge=1, description="a request's body (a WebSocket message: one frame)")
    max_batch_frames: int = Field(64, ge=1, description="frames one POST /v1/frames may carry")
    ws_max_inflight: int = Field(
        4, ge=1, description="a WebSocket's frames unanswered before the server stops reading (backpressure)"
    )
    access_log: bool = Field(False, description="Serve access logs cost 17-37% throughput on small machines")
    namespace: str = "posefleet"
    retry_after_s: int = Field(1, ge=1)
    fault_retry_s: float = Field(15.0, ge=0.0, description="retry calls to dead replicas/actors this long")

    @model_validator(mode="after")
    def _caps_fit_serve(self) -> ServingConfig:
        held = self.limits.held(self.admission.max_inflight_frames)
        if self.ingress.max_ongoing_requests < held:
            raise ValueError(
                f"ingress.max_ongoing_requests ({self.ingress.max_ongoing_requests}) must be at least the ingress's "
                f"own caps (limits.max_viewers + max_sockets + max_uploads + admission.max_inflight_frames = {held}), "
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
