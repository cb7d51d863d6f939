"""HTTP ingress: FastAPI through ``serve.ingress``.

Each frame is decoded once here. Only the detector's input tensors and the pose crops travel to
the model deployments; only boxes and keypoints travel to the stream's tracker actor.

Cheap checks (auth, content type, body size, image header) come first; then the stream's tracker
actor admits the frame (in order, dropping stale frames under overload) before any decoding, so a
flooding stream costs little. Calls to a replica or actor that died are retried for a while, then
answered 503 with Retry-After: clients see retries or clear errors, never a hang.
"""

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Literal, TypeVar

import cv2
import numpy as np
import ray
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from posefleet import __version__, metrics
from posefleet.actors import detector as detector_mod
from posefleet.actors import pose as pose_mod
from posefleet.actors.tracker import FrameOrderError
from posefleet.actors.tracker_actor import FrameDropped, FrameNotInFlight, StreamBusy, shard_of, tracker_pool
from posefleet.actors.viewer_hub import viewer_hub
from posefleet.config import AppConfig
from posefleet.image_io import ImageError, check_image, decode_image, encode_jpeg
from posefleet.serve.schema import FrameResult, Health, StageTimings, StreamInfo, StreamList

log = logging.getLogger("posefleet.ingress")
T = TypeVar("T")

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}
FAULTS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)

StreamId = Annotated[
    str, Path(pattern=STREAM_ID_PATTERN, description="1-64 characters: letters, digits, '.', '_', '-'")
]

bearer = HTTPBearer(auto_error=False, description="required when the server has a token configured")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Bearer-token check; the token is set per replica in ``app.state`` (None: auth off)."""
    token: str | None = getattr(request.app.state, "auth_token", None)
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


app = FastAPI(
    title="posefleet",
    version=__version__,
    description="Multi-person 2D pose estimation with tracking, for many camera streams.",
)
AUTH = [Depends(require_token)]

ERRORS = {
    400: {"description": "the body is not a usable JPEG/PNG image"},
    401: {"description": "missing or wrong bearer token"},
    409: {"description": "duplicate or out-of-order frame index, or the frame was abandoned"},
    413: {"description": "body or image larger than the configured limits"},
    415: {"description": "content type is not image/jpeg, image/png or application/octet-stream"},
    503: {"description": "overloaded or recovering from a fault; retry after Retry-After seconds"},
}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
FRAME_BODY = {
    "required": True,
    "description": "one encoded frame",
    "content": {"image/jpeg": _BINARY, "image/png": _BINARY, "application/octet-stream": _BINARY},
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
        self.serving = s = app_cfg.serving
        self.cfg = app_cfg.pipeline_config()
        self.det_decoder = detector_mod.make_decoder(self.cfg.detector)
        self.pose_decoder = pose_mod.make_decoder(self.cfg.pose)
        self.detector = detector
        self.pose = pose
        self.trackers = tracker_pool(
            self.cfg, s.tracker_actors, s.namespace, s.tracker_num_cpus,
            frame_timeout_s=s.frame_timeout_s, policy=s.overload_policy,
            max_waiting=s.max_waiting_per_stream, checkpoint_every=s.checkpoint_every,
        )  # fmt: skip
        self.metrics = metrics.get()
        self.inflight = 0
        self.hub = viewer_hub(s.namespace) if s.viewer else None
        self.last_thumbnail: dict[str, float] = {}
        app.state.auth_token = s.auth_token or os.environ.get(s.auth_token_env) or None
        if s.cors_origins:
            app.add_middleware(
                CORSMiddleware, allow_origins=s.cors_origins, allow_methods=["*"], allow_headers=["*"]
            )

    # -- helpers ------------------------------------------------------------------------------
    def _tracker(self, stream_id: str) -> ray.actor.ActorHandle:
        return self.trackers[shard_of(stream_id, len(self.trackers))]

    def _unavailable(self, what: str) -> HTTPException:
        return HTTPException(503, what, headers={"Retry-After": str(self.serving.retry_after_s)})

    async def _retry(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a remote call; on a dead replica/actor retry until ``fault_retry_s``, then 503."""
        deadline = time.monotonic() + self.serving.fault_retry_s
        delay = 0.1
        while True:
            try:
                return await call()
            except BackPressureError as exc:
                self.metrics.frame_errors.inc(tags={"reason": "backpressure"})
                raise self._unavailable(f"{what} is overloaded") from exc
            except FAULTS as exc:
                if time.monotonic() + delay > deadline:
                    self.metrics.frame_errors.inc(tags={"reason": "fault"})
                    raise self._unavailable(f"{what} is restarting after a failure") from exc
                log.warning("%s failed (%s); retrying", what, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

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

    # -- frames -------------------------------------------------------------------------------
    @app.post(
        "/v1/streams/{stream_id}/frames",
        response_model=FrameResult,
        responses=ERRORS,
        dependencies=AUTH,
        openapi_extra={"requestBody": FRAME_BODY},
    )
    async def post_frame(
        self,
        stream_id: StreamId,
        request: Request,
        frame_index: Annotated[int | None, Query(ge=0, description="default: the stream's next")] = None,
        timestamp: Annotated[float | None, Query(description="seconds; used by smoothing")] = None,
        policy: Annotated[
            Literal["drop_oldest", "wait"] | None, Query(description="set the stream's overload policy")
        ] = None,
        x_frame_index: Annotated[int | None, Header(ge=0)] = None,
        x_timestamp: Annotated[float | None, Header()] = None,
    ) -> FrameResult:
        """Post one JPEG/PNG frame of a stream; get the stream's tracked people in it."""
        start = time.perf_counter()
        if self.inflight >= self.serving.max_inflight_frames:
            self.metrics.frame_errors.inc(tags={"reason": "overload"})
            raise self._unavailable(f"{self.inflight} frames in flight on this replica")
        self.inflight += 1
        try:
            return await self._post_frame(
                stream_id, request, frame_index if frame_index is not None else x_frame_index,
                timestamp if timestamp is not None else x_timestamp, policy, start,
            )  # fmt: skip
        finally:
            self.inflight -= 1

    async def _post_frame(
        self,
        stream_id: str,
        request: Request,
        index: int | None,
        ts: float | None,
        policy: str | None,
        start: float,
    ) -> FrameResult:
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            self.metrics.frame_errors.inc(tags={"reason": "content_type"})
            raise HTTPException(415, f"content type {ctype or '(none)'!r}: send image/jpeg or image/png")
        body = await self._read_body(request)
        try:
            _, w, h = check_image(body, self.cfg.max_image_pixels, self.cfg.max_image_side)
        except ImageError as exc:
            self.metrics.frame_errors.inc(tags={"reason": "image"})
            raise HTTPException(413 if "limit" in str(exc) else 400, str(exc)) from exc

        tracker = self._tracker(stream_id)
        timings = StageTimings()
        t = time.perf_counter()
        try:
            plan = await self._retry(lambda: tracker.plan.remote(stream_id, index, policy), "stream tracker")
        except FrameOrderError as exc:
            self.metrics.frame_errors.inc(tags={"reason": "order"})
            raise HTTPException(409, _reason(exc)) from exc
        except StreamBusy as exc:
            self.metrics.frame_errors.inc(tags={"reason": "stream_busy"})
            raise self._unavailable(_reason(exc)) from exc
        except FrameDropped as exc:
            self.metrics.frame_errors.inc(tags={"reason": "dropped"})
            dropped = FrameResult(
                stream_id=stream_id, frame_index=index if index is not None else -1, timestamp=ts, width=w,
                height=h, dropped=True, note=_reason(exc),
            )  # fmt: skip
            if self.hub is not None:
                self.hub.publish.remote(stream_id, {"dropped": True})
            return dropped
        timings.track_ms = _ms(t)

        try:
            t = time.perf_counter()
            try:
                frame = await asyncio.to_thread(
                    decode_image, body, self.cfg.max_image_pixels, self.cfg.max_image_side
                )
            except ImageError as exc:
                tracker.abort.remote(stream_id, plan.frame_index, False)
                self.metrics.frame_errors.inc(tags={"reason": "image"})
                raise HTTPException(400, str(exc)) from exc
            timings.decode_ms = _ms(t)
            outcome = await self._process(stream_id, tracker, frame, plan, ts, timings)
        except FrameNotInFlight as exc:
            self.metrics.frame_errors.inc(tags={"reason": "abandoned"})
            raise HTTPException(409, f"frame {plan.frame_index} was abandoned: {_reason(exc)}") from exc
        except HTTPException:
            raise
        except BaseException:
            tracker.abort.remote(stream_id, plan.frame_index)
            self.metrics.frame_errors.inc(tags={"reason": "internal"})
            raise
        timings.total_ms = _ms(start)
        self.metrics.frames.inc(tags={"stream": stream_id})
        for stage, value in timings.model_dump().items():
            self.metrics.stage_ms.observe(value, tags={"stage": stage.removesuffix("_ms")})
        result = FrameResult(
            stream_id=stream_id, frame_index=plan.frame_index, timestamp=ts, width=w, height=h,
            detected=plan.detect, people=outcome.people, timings=timings,
            dropped_before=outcome.dropped_before, ids_restarted=outcome.ids_restarted,
            state_recovered=outcome.state_recovered,
        )  # fmt: skip
        await self._publish(result, frame)
        return result

    async def _publish(self, result: FrameResult, frame: np.ndarray) -> None:
        """Results to the viewer hub (fire and forget), with a small JPEG now and then."""
        if self.hub is None:
            return
        now = time.monotonic()
        thumb = None
        if now - self.last_thumbnail.get(result.stream_id, 0.0) >= self.serving.thumbnail_interval_s:
            self.last_thumbnail[result.stream_id] = now
            thumb = await asyncio.to_thread(self._thumbnail, frame)
        payload = result.model_dump(
            include={"frame_index", "width", "height", "people", "timings", "dropped_before"}
        )
        self.hub.publish.remote(result.stream_id, payload, thumb)

    def _thumbnail(self, frame: np.ndarray) -> bytes:
        h, w = frame.shape[:2]
        width = min(w, self.serving.thumbnail_width)
        small = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        return encode_jpeg(small, 70)

    async def _process(self, stream_id, tracker, frame: np.ndarray, plan, ts, timings: StageTimings):
        h, w = frame.shape[:2]
        if plan.detect:
            t = time.perf_counter()
            tensors, lbs = await asyncio.to_thread(self.det_decoder.prepare, frame)
            outs = await self._retry(lambda: self.detector.remote(tensors), "detector")
            dets = self.det_decoder.merge(
                [self.det_decoder.decode(o, lb) for o, lb in zip(outs, lbs, strict=True)], w, h
            )
            timings.detect_ms = _ms(t)
            t = time.perf_counter()
            plan = await self._retry(
                lambda: tracker.associate.remote(stream_id, plan, dets.boxes, dets.scores), "stream tracker"
            )
            timings.track_ms += _ms(t)
        t = time.perf_counter()
        if len(plan.boxes):
            batch, mats = await asyncio.to_thread(self.pose_decoder.prepare, frame, plan.boxes)
            outs = await self._retry(lambda: self.pose.remote(batch), "pose model")
            keypoints, scores = self.pose_decoder.decode(outs, mats)
        else:
            keypoints, scores = np.zeros((0, 17, 3), np.float32), np.zeros(0, np.float32)
        timings.pose_ms = _ms(t)
        t = time.perf_counter()
        outcome = await self._retry(
            lambda: tracker.finish.remote(stream_id, plan, keypoints, scores, ts), "stream tracker"
        )
        timings.track_ms = round(timings.track_ms + _ms(t), 3)
        return outcome

    # -- stream management ------------------------------------------------------------------
    @app.get("/v1/streams", response_model=StreamList, dependencies=AUTH)
    async def list_streams(self) -> StreamList:
        parts = await asyncio.gather(
            *(self._retry(lambda t=t: t.list_streams.remote(), "stream tracker") for t in self.trackers)
        )
        streams = sorted((s for p in parts for s in p), key=lambda s: s["stream_id"])
        return StreamList(streams=[StreamInfo(**s) for s in streams])

    @app.get("/v1/streams/{stream_id}", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH)
    async def get_stream(self, stream_id: StreamId) -> StreamInfo:
        tracker = self._tracker(stream_id)
        info = await self._retry(lambda: tracker.describe.remote(stream_id), "stream tracker")
        if info is None:
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        return StreamInfo(**info)

    @app.post(
        "/v1/streams/{stream_id}/reset", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH
    )
    async def reset_stream(self, stream_id: StreamId) -> StreamInfo:
        """Forget the stream's tracks and frame order; ids start again at 1."""
        tracker = self._tracker(stream_id)
        if not await self._retry(lambda: tracker.reset.remote(stream_id), "stream tracker"):
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        return await self.get_stream(stream_id)

    @app.delete("/v1/streams/{stream_id}", status_code=204, responses={404: {}}, dependencies=AUTH)
    async def delete_stream(self, stream_id: StreamId) -> Response:
        tracker = self._tracker(stream_id)
        if not await self._retry(lambda: tracker.delete.remote(stream_id), "stream tracker"):
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        if self.hub is not None:
            self.hub.forget.remote(stream_id)
        return Response(status_code=204)

    @app.get("/v1/stats", dependencies=AUTH)
    async def stats(self, reset: bool = False) -> dict:
        """Recent batch sizes and execution providers of the model deployments (one replica each)."""
        det, pose = await asyncio.gather(
            self._retry(lambda: self.detector.batch_stats.remote(reset), "detector"),
            self._retry(lambda: self.pose.batch_stats.remote(reset), "pose model"),
        )
        return {"detector": det, "pose": pose, "inflight_frames": self.inflight}

    # -- live viewer --------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def root(self) -> RedirectResponse:
        return RedirectResponse("/viewer")

    @app.get("/viewer", response_class=HTMLResponse, include_in_schema=False)
    async def viewer(self) -> HTMLResponse:
        """The live page; it holds no data itself and fetches everything with the API token."""
        if self.hub is None:
            raise HTTPException(404, "the viewer is turned off (serving.viewer)")
        page = resources.files("posefleet.serve").joinpath("static/viewer.html").read_text()
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/v1/events", dependencies=AUTH, responses={200: {"content": {"text/event-stream": {}}}})
    async def events(self, request: Request) -> StreamingResponse:
        """Server-sent events: a snapshot of every active stream (results, FPS, p99, drops) on change."""
        if self.hub is None:
            raise HTTPException(404, "the viewer is turned off (serving.viewer)")
        period = 1.0 / self.serving.viewer_max_hz

        async def stream() -> AsyncIterator[str]:
            version = -1
            while not await request.is_disconnected():
                t0 = time.monotonic()
                try:
                    snap = await self.hub.wait.remote(version, 5.0)
                except FAULTS:
                    await asyncio.sleep(1.0)
                    continue
                except (asyncio.CancelledError, ray.exceptions.TaskCancelledError):
                    return  # the viewer went away
                if snap["version"] != version:
                    version = snap["version"]
                    yield f"data: {json.dumps(snap, separators=(',', ':'))}\n\n"
                else:
                    yield ": keep-alive\n\n"
                await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.get(
        "/v1/streams/{stream_id}/thumbnail.jpg",
        dependencies=AUTH,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {}},
        response_class=Response,
    )
    async def thumbnail(self, stream_id: StreamId) -> Response:
        """The stream's latest downscaled frame (for the viewer)."""
        data = await self.hub.thumbnail.remote(stream_id) if self.hub is not None else None
        if data is None:
            raise HTTPException(404, f"no picture of stream {stream_id!r} yet")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health()
