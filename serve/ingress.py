"""HTTP ingress: FastAPI through ``serve.ingress``.

Each frame is decoded once here. Only the detector's input tensors and the pose crops travel to
the model deployments; only boxes and keypoints travel to the stream's tracker actor.
"""

import asyncio
import time
from typing import Annotated

import numpy as np
import ray
from fastapi import FastAPI, Header, HTTPException, Path, Query, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from posefleet import __version__, metrics
from posefleet.actors import detector as detector_mod
from posefleet.actors import pose as pose_mod
from posefleet.actors.tracker import FrameOrderError
from posefleet.actors.tracker_actor import FrameNotInFlight, shard_of, tracker_pool
from posefleet.config import AppConfig
from posefleet.image_io import ImageError, decode_image
from posefleet.serve.schema import FrameResult, Health, StageTimings, StreamInfo, StreamList

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}

StreamId = Annotated[
    str, Path(pattern=STREAM_ID_PATTERN, description="1-64 characters: letters, digits, '.', '_', '-'")
]

app = FastAPI(
    title="posefleet",
    version=__version__,
    description="Multi-person 2D pose estimation with tracking, for many camera streams.",
)

ERRORS = {
    400: {"description": "the body is not a usable JPEG/PNG image"},
    409: {"description": "duplicate or out-of-order frame index, or the frame was abandoned"},
    413: {"description": "body or image larger than the configured limits"},
    415: {"description": "content type is not image/jpeg, image/png or application/octet-stream"},
}


def _reason(exc: BaseException) -> str:
    """The message of an exception raised inside an actor (Ray wraps it; ``cause`` is the original)."""
    return str(getattr(exc, "cause", None) or exc)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, app_cfg: AppConfig, detector: DeploymentHandle, pose: DeploymentHandle):
        self.serving = app_cfg.serving
        self.cfg = app_cfg.pipeline_config()
        self.det_decoder = detector_mod.make_decoder(self.cfg.detector)
        self.pose_decoder = pose_mod.make_decoder(self.cfg.pose)
        self.detector = detector
        self.pose = pose
        s = self.serving
        self.trackers = tracker_pool(
            self.cfg, s.tracker_actors, s.namespace, s.tracker_num_cpus, s.frame_timeout_s
        )
        self.metrics = metrics.get()

    def _tracker(self, stream_id: str) -> ray.actor.ActorHandle:
        return self.trackers[shard_of(stream_id, len(self.trackers))]

    async def _read_body(self, request: Request) -> bytes:
        limit = self.serving.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPException(413, f"body of {length} bytes is over the {limit}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"body is over the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/streams/{stream_id}/frames", response_model=FrameResult, responses=ERRORS)
    async def post_frame(
        self,
        stream_id: StreamId,
        request: Request,
        frame_index: Annotated[int | None, Query(ge=0, description="default: the stream's next")] = None,
        timestamp: Annotated[float | None, Query(description="seconds; used by smoothing")] = None,
        x_frame_index: Annotated[int | None, Header(ge=0)] = None,
        x_timestamp: Annotated[float | None, Header()] = None,
    ) -> FrameResult:
        """Post one JPEG/PNG frame of a stream; get the stream's tracked people in it."""
        start = time.perf_counter()
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            self.metrics.frame_errors.inc(tags={"reason": "content_type"})
            raise HTTPException(415, f"content type {ctype or '(none)'!r}: send image/jpeg or image/png")
        body = await self._read_body(request)
        index = frame_index if frame_index is not None else x_frame_index
        ts = timestamp if timestamp is not None else x_timestamp
        try:
            frame = await asyncio.to_thread(
                decode_image, body, self.cfg.max_image_pixels, self.cfg.max_image_side
            )
        except ImageError as exc:
            self.metrics.frame_errors.inc(tags={"reason": "image"})
            status = 413 if "limit" in str(exc) else 400
            raise HTTPException(status, str(exc)) from exc
        timings = StageTimings(decode_ms=_ms(start))
        result = await self._process(stream_id, frame, index, ts, timings)
        timings.total_ms = _ms(start)
        self.metrics.frames.inc(tags={"stream": stream_id})
        for stage, value in timings.model_dump().items():
            self.metrics.stage_ms.observe(value, tags={"stage": stage.removesuffix("_ms")})
        return result

    async def _process(
        self, stream_id: str, frame: np.ndarray, index: int | None, ts: float | None, timings: StageTimings
    ) -> FrameResult:
        tracker = self._tracker(stream_id)
        t = time.perf_counter()
        try:
            plan = await tracker.plan.remote(stream_id, index)
        except FrameOrderError as exc:
            self.metrics.frame_errors.inc(tags={"reason": "order"})
            raise HTTPException(409, _reason(exc)) from exc
        timings.track_ms = _ms(t)
        h, w = frame.shape[:2]
        try:
            if plan.detect:
                t = time.perf_counter()
                tensors, lbs = await asyncio.to_thread(self.det_decoder.prepare, frame)
                outs = await self.detector.remote(tensors)
                dets = self.det_decoder.merge(
                    [self.det_decoder.decode(o, lb) for o, lb in zip(outs, lbs, strict=True)], w, h
                )
                timings.detect_ms = _ms(t)
                t = time.perf_counter()
                plan = await tracker.associate.remote(stream_id, plan, dets.boxes, dets.scores)
                timings.track_ms += _ms(t)
            t = time.perf_counter()
            if len(plan.boxes):
                batch, mats = await asyncio.to_thread(self.pose_decoder.prepare, frame, plan.boxes)
                outs = await self.pose.remote(batch)
                keypoints, scores = self.pose_decoder.decode(outs, mats)
            else:
                keypoints, scores = np.zeros((0, 17, 3), np.float32), np.zeros(0, np.float32)
            timings.pose_ms = _ms(t)
            t = time.perf_counter()
            people = await tracker.finish.remote(stream_id, plan, keypoints, scores, ts)
            timings.track_ms = round(timings.track_ms + _ms(t), 3)
        except FrameNotInFlight as exc:
            self.metrics.frame_errors.inc(tags={"reason": "abandoned"})
            raise HTTPException(
                409, f"frame {plan.frame_index} was abandoned: processing took too long"
            ) from exc
        except BaseException:
            tracker.abort.remote(stream_id, plan.frame_index)
            self.metrics.frame_errors.inc(tags={"reason": "internal"})
            raise
        return FrameResult(
            stream_id=stream_id, frame_index=plan.frame_index, timestamp=ts, width=w, height=h,
            detected=plan.detect, people=people, timings=timings,
        )  # fmt: skip

    # -- stream management ------------------------------------------------------------------
    @app.get("/v1/streams", response_model=StreamList)
    async def list_streams(self) -> StreamList:
        parts = await asyncio.gather(*(t.list_streams.remote() for t in self.trackers))
        streams = sorted((s for p in parts for s in p), key=lambda s: s["stream_id"])
        return StreamList(streams=[StreamInfo(**s) for s in streams])

    @app.get(
        "/v1/streams/{stream_id}", response_model=StreamInfo, responses={404: {"description": "unknown"}}
    )
    async def get_stream(self, stream_id: StreamId) -> StreamInfo:
        info = await self._tracker(stream_id).describe.remote(stream_id)
        if info is None:
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        return StreamInfo(**info)

    @app.post(
        "/v1/streams/{stream_id}/reset",
        response_model=StreamInfo,
        responses={404: {"description": "unknown"}},
    )
    async def reset_stream(self, stream_id: StreamId) -> StreamInfo:
        """Forget the stream's tracks and frame order; ids start again at 1."""
        if not await self._tracker(stream_id).reset.remote(stream_id):
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        return await self.get_stream(stream_id)

    @app.delete("/v1/streams/{stream_id}", status_code=204, responses={404: {"description": "unknown"}})
    async def delete_stream(self, stream_id: StreamId) -> Response:
        if not await self._tracker(stream_id).delete.remote(stream_id):
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        return Response(status_code=204)

    @app.get("/v1/stats")
    async def stats(self, reset: bool = False) -> dict:
        """Recent batch sizes and execution providers of the model deployments (one replica each)."""
        det, pose = await asyncio.gather(
            self.detector.batch_stats.remote(reset), self.pose.batch_stats.remote(reset)
        )
        return {"detector": det, "pose": pose}

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health()
