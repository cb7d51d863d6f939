"""Request/response models shared by the in-process pipeline, the HTTP API and the client."""

from __future__ import annotations

from pydantic import BaseModel, Field

Keypoint = tuple[float, float, float]


class Person(BaseModel):
    track_id: int = Field(description="stable within a stream")
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in image pixels")
    score: float = Field(description="detector score on detection frames, pose presence between them")
    keypoints: list[Keypoint] = Field(description="17 COCO keypoints, each (x, y, score), COCO order")
    outside_roi: bool = Field(False, description="stands outside the stream's region of interest (kept by setting)")


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
