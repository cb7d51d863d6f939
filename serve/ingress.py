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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Literal, TypeVar

import ray
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle

from posefleet import __version__
from posefleet.actors.tracker_actor import FrameNotInFlight, StreamBusy
from posefleet.config import AppConfig
from posefleet.image_io import ImageError
from posefleet.pipeline.schema import FrameResult, Health, StreamInfo, StreamList
from posefleet.pipeline.tracker import FrameOrderError
from posefleet.serve.processor import FAULTS, FrameProcessor, Unavailable, reason

T = TypeVar("T")

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}

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


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, app_cfg: AppConfig, detector: DeploymentHandle, pose: DeploymentHandle):
        self.serving = s = app_cfg.serving
        self.frames = FrameProcessor(app_cfg, detector, pose)
        self.detector, self.pose, self.hub = detector, pose, self.frames.hub
        self.metrics = self.frames.metrics
        self.inflight = 0
        self.node = ray.get_runtime_context().get_node_id()[:12]  # answers say which node served them
        app.state.auth_token = s.api_token()
        if app.state.auth_token is None:
            logging.getLogger("posefleet.ingress").warning(
                "no API token (set %s or serving.auth_token): every client is admitted", s.auth_token_env
            )
        if s.cors_origins:
            app.add_middleware(CORSMiddleware, allow_origins=s.cors_origins, allow_methods=["*"], allow_headers=["*"])

    def _unavailable(self, what: str) -> HTTPException:
        return HTTPException(503, what, headers={"Retry-After": str(self.serving.retry_after_s)})

    async def _retry(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await self.frames.retry(call, what)
        except Unavailable as exc:
            raise self._unavailable(str(exc)) from exc

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
        response: Response,
        frame_index: Annotated[int | None, Query(ge=0, description="default: the stream's next")] = None,
        timestamp: Annotated[float | None, Query(description="seconds; used by smoothing")] = None,
        policy: Annotated[
            Literal["drop_oldest", "wait"] | None, Query(description="set the stream's overload policy")
        ] = None,
        x_frame_index: Annotated[int | None, Header(ge=0)] = None,
        x_timestamp: Annotated[float | None, Header()] = None,
    ) -> FrameResult:
        """Post one JPEG/PNG frame of a stream; get the stream's tracked people in it."""
        if self.inflight >= self.serving.max_inflight_frames:
            self.metrics.frame_errors.inc(tags={"reason": "overload"})
            raise self._unavailable(f"{self.inflight} frames in flight on this replica")
        self.inflight += 1
        response.headers["x-served-by"] = self.node
        try:
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if ctype not in IMAGE_TYPES:
                self.metrics.frame_errors.inc(tags={"reason": "content_type"})
                raise HTTPException(415, f"content type {ctype or '(none)'!r}: send image/jpeg or image/png")
            body = await self._read_body(request)
            index = frame_index if frame_index is not None else x_frame_index
            ts = timestamp if timestamp is not None else x_timestamp
            return await self.frames.process(stream_id, body, index, ts, policy)
        except ImageError as exc:
            raise HTTPException(413 if "limit" in str(exc) else 400, str(exc)) from exc
        except FrameOrderError as exc:
            self.metrics.frame_errors.inc(tags={"reason": "order"})
            raise HTTPException(409, reason(exc)) from exc
        except FrameNotInFlight as exc:
            self.metrics.frame_errors.inc(tags={"reason": "abandoned"})
            raise HTTPException(409, f"frame was abandoned: {reason(exc)}") from exc
        except StreamBusy as exc:
            self.metrics.frame_errors.inc(tags={"reason": "stream_busy"})
            raise self._unavailable(reason(exc)) from exc
        except Unavailable as exc:
            raise self._unavailable(str(exc)) from exc
        finally:
            self.inflight -= 1

    # -- stream management ------------------------------------------------------------------
    @app.get("/v1/streams", response_model=StreamList, dependencies=AUTH)
    async def list_streams(self) -> StreamList:
        parts = await asyncio.gather(
            *(self._retry(lambda t=t: t.list_streams.remote(), "stream tracker") for t in self.frames.trackers)
        )
        streams = sorted((s for p in parts for s in p), key=lambda s: s["stream_id"])
        return StreamList(streams=[StreamInfo(**s) for s in streams])

    @app.get("/v1/streams/{stream_id}", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH)
    async def get_stream(self, stream_id: StreamId) -> StreamInfo:
        tracker = self.frames.tracker(stream_id)
        info = await self._retry(lambda: tracker.describe.remote(stream_id), "stream tracker")
        if info is None:
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        return StreamInfo(**info)

    @app.post("/v1/streams/{stream_id}/reset", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH)
    async def reset_stream(self, stream_id: StreamId) -> StreamInfo:
        """Forget the stream's tracks and frame order; ids start again at 1."""
        tracker = self.frames.tracker(stream_id)
        if not await self._retry(lambda: tracker.reset.remote(stream_id), "stream tracker"):
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        return await self.get_stream(stream_id)

    @app.delete("/v1/streams/{stream_id}", status_code=204, responses={404: {}}, dependencies=AUTH)
    async def delete_stream(self, stream_id: StreamId) -> Response:
        tracker = self.frames.tracker(stream_id)
        if not await self._retry(lambda: tracker.delete.remote(stream_id), "stream tracker"):
            raise HTTPException(404, f"unknown stream {stream_id!r}")
        if self.frames.feed is not None:
            self.frames.feed.forget(stream_id)
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

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

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
