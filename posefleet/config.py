"""Typed configuration of the frame pipeline (models, regions, tracker): every tunable number of it lives here, with
its default; the serving side's (deployments, caps, sources, sinks) is in :mod:`posefleet.serving_config`.

Presets in ``configs/*.yaml`` and Serve config files override these defaults; nothing else in the
code carries thresholds of its own.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class DecodeConfig(_Strict):
    """How a JPEG frame is decoded: once, at the smallest scale its model inputs need."""

    scaled: bool = Field(
        True,
        description=(
            "decode a JPEG straight to 1/2, 1/4 or 1/8 of its size (libjpeg-turbo's DCT scaling) when every "
            "detector region and pose crop of the frame is scaled down at least that much on its way to the model"
        ),
    )
    max_upscale: float = Field(
        1.0, ge=1.0, le=2.0,
        description=(
            "how much a region or crop may be scaled up from the decoded pixels (1: never; at 1.1 the default "
            "preset returned 4-6% fewer people on 1080p court and street frames than a full decode)"
        ),
    )  # fmt: skip


class FlowConfig(_Strict):
    """Between detections (``detect_every`` > 1), each tracked person is followed in the picture by sparse
    optical flow (pyramidal Lucas-Kanade on points of the body) rather than only extrapolated from the last
    velocity: boxes keep up with a panning camera and a jumping player. On every frame (``camera``), the
    camera's own motion is measured the same way and taken out of the tracks before they are matched."""

    enabled: bool = True
    person_px: int = Field(
        32, ge=8, le=512, description="the flow runs in grey at the scale that makes the smallest tracked person "
        "this tall (frames are decoded at least that large)",
    )  # fmt: skip
    window: int = Field(7, ge=5, le=63, description="Lucas-Kanade window side, px at the flow's scale")
    levels: int = Field(3, ge=0, le=6, description="pyramid levels above the flow's scale")
    iterations: int = Field(10, ge=1, le=100, description="Lucas-Kanade iterations a level at most")
    max_error_px: float = Field(
        1.0, gt=0.0, description="a point whose flow back lands further than this from where it started is dropped"
    )
    min_points: int = Field(4, ge=1, description="a person followed by fewer points keeps its prediction")
    camera: bool = Field(
        True, description="measure the camera's own motion on every frame (corners outside the people) and move "
        "every track by it before the frame's association: ids hold through a pan",
    )  # fmt: skip
    camera_points: int = Field(120, ge=8, le=5000, description="corners looked for to measure the camera's motion")
    min_camera_points: int = Field(
        20, ge=3, description="fewer corners agreeing than this: the camera's motion is not measured (a cut, a wall)"
    )


PoseSource = Literal["single-stage", "top-down", "fused"]
Policy = Literal["drop_oldest", "wait"]  # a stream's overload policy (admission.py says what each does)


class StreamSettings(_Strict):
    """One stream's (camera's) own settings over the pipeline's and serving's: the region of interest, how
    often it detects, its overload policy. None: the deploy's own."""

    roi: list[tuple[float, float]] | None = Field(
        None,
        description=(
            "the region of interest as a polygon of image points [[x, y], ...] in order round it (3-64 points, not "
            "self-crossing): scans cover its bounding box, and people standing outside it are not returned"
        ),
    )
    keep_outside_roi: bool = Field(False, description="return people outside the roi too, flagged outside_roi")
    detect_every: int | None = Field(
        None, ge=1, le=1000, description="this stream's own detect_every (a slow camera may detect every frame)"
    )
    policy: Policy | None = Field(
        None, description="this stream's overload policy, over admission.overload_policy (a frame's own still wins)"
    )

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
    decode: DecodeConfig = Field(default_factory=DecodeConfig, description="how JPEG frames are decoded")
    flow: FlowConfig = Field(
        default_factory=FlowConfig, description="optical flow: carried frames follow each person; the camera's motion"
    )
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
