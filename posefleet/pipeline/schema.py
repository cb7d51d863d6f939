"""Request/response models shared by the in-process pipeline, the HTTP API and the client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from posefleet.config import StreamSettings

# a stream, group or source name: what URLs, metrics labels and file names can carry
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

Keypoint = tuple[float, float, float]


class Person(BaseModel):
    track_id: int = Field(description="stable within a stream")
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in image pixels")
    score: float = Field(description="detector score on detection frames, pose presence between them")
    keypoints: list[Keypoint] = Field(description="17 COCO keypoints, each (x, y, score), COCO order")
    outside_roi: bool = Field(False, description="stands outside the stream's region of interest (kept by setting)")
    court_xy: tuple[float, float] | None = Field(
        None, description="where the person stands in court metres, when the stream's camera is calibrated"
    )
    outside_court: bool | None = Field(None, description="stands beyond the court's lines (where a court is set)")


class StageTimings(BaseModel):
    decode_ms: float = 0.0
    detect_ms: float = 0.0
    track_ms: float = 0.0
    pose_ms: float = 0.0
    total_ms: float = 0.0


class FrameResult(BaseModel):
    stream_id: str
    frame_index: int
    timestamp: float | None = None
    width: int
    height: int
    detected: bool = Field(False, description="the detector ran on this frame (else boxes were carried)")
    people: list[Person] = Field(default_factory=list)
    timings: StageTimings = Field(default_factory=StageTimings)
    dropped: bool = Field(False, description="not processed: a newer frame of the stream superseded it")
    dropped_before: int = Field(0, description="frames of this stream dropped since its previous answer")
    ids_restarted: bool = Field(False, description="the stream's tracks were lost: ids start over here")
    state_recovered: bool = Field(False, description="tracker restarted; tracks restored from a checkpoint")
    note: str | None = None


class StreamInfo(BaseModel):
    stream_id: str
    frames: int = Field(description="frames served")
    dropped: int = Field(0, description="frames dropped under overload")
    policy: str = Field("drop_oldest", description="overload policy: drop_oldest or wait")
    last_frame_index: int
    active_tracks: list[int]
    lost_tracks: int
    next_track_id: int
    created: float
    last_seen: float
    restored: bool = Field(False, description="restored from a checkpoint after a restart; no frame since")
    worker: int = Field(0, description="the stream worker holding it (0 where the ingress holds streams itself)")


class StreamList(BaseModel):
    streams: list[StreamInfo]
    next_after: str | None = Field(
        None, description="more streams follow: ask again with ?after= this stream id (null: the last page)"
    )


class Health(BaseModel):
    status: str = "ok"


# -- the HTTP API's own ---------------------------------------------------------------------------
class SourceRequest(BaseModel):
    stream_id: str = Field(pattern=STREAM_ID_PATTERN, description="the stream the camera's frames go to")
    url: str = Field(max_length=2048, description="rtsp://, http(s):// (MJPEG/HLS) or a file under an allowed dir")
    max_fps: float | None = Field(None, gt=0, le=240, description="hand on at most this many frames a second")
    group: str | None = Field(None, pattern=STREAM_ID_PATTERN, description="e.g. the court the camera films")
    settings: StreamSettings | None = Field(None, description="the stream's own settings (its region of interest)")


class SourceInfo(BaseModel):
    """A source as asked for (its URL with any credentials redacted) and as it runs."""

    stream_id: str
    url: str
    max_fps: float | None = None
    group: str | None = None
    settings: StreamSettings | None = None
    created: float
    state: str = Field(description="connecting, running, reconnecting, stopped or failed")
    frames: int = 0
    skipped: int = Field(0, description="frames read but over max_fps")
    dropped: int = Field(0, description="frames superseded while the pipeline was behind")
    errors: int = 0
    fps: float = 0.0
    last_frame_at: float | None = None
    last_error: str | None = None
    reconnects: int = 0
    node: str | None = None
    last_result: dict[str, Any] | None = None
    latency_p50_ms: float | None = Field(None, description="capture to result, over the last 300 frames")
    latency_p99_ms: float | None = None
    webhook: dict[str, Any] | None = Field(
        None, description="the webhook of this source's results (sent, retries, queued, last error), where it has one"
    )


class SourceList(BaseModel):
    sources: list[SourceInfo]


class FrameAnswer(BaseModel):
    """One frame of a batch: its result, or the error it would have had as a request of its own."""

    stream_id: str
    status: int = Field(description="the HTTP status this frame alone would have got")
    result: FrameResult | None = None
    detail: str | None = None


class BatchAnswer(BaseModel):
    frames: list[FrameAnswer]
