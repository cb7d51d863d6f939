"""HTTP ingress: FastAPI through ``serve.ingress``. Three ways in for frames, one path behind them:

- ``POST /v1/streams/{id}/frames``: one frame a request;
- ``WS /v1/streams/{id}/ws``: a stream's frames as binary messages, one JSON result back per frame;
- ``POST /v1/frames``: several frames of one or many streams in one multipart request.

Cheap checks (auth, content type, body size, image header) run here; then each frame's encoded bytes
go to its stream's worker in one Ray call, where it is admitted (in order, stale frames dropped under
overload), decoded and run through the pipeline. Calls to a worker that died are retried for a while,
then answered 503 with Retry-After: clients see retries or clear errors, never a hang. Errors map to
HTTP answers in one place (:func:`error_answer`).
"""

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
import ray
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.websockets import WebSocketDisconnect

from posefleet import __version__
from posefleet.actors import FAULTS
from posefleet.actors.owner import app_owner
from posefleet.actors.source import source_registry
from posefleet.actors.stream_worker import with_retry
from posefleet.config import AppConfig, StreamSettings
from posefleet.errors import (
    BodyTimeout,
    BodyTooLarge,
    Forbidden,
    ImageError,
    ImageTruncated,
    InvalidRequest,
    OverCap,
    PosefleetError,
    Unavailable,
    UnknownStream,
    WrongContentType,
    cause,
)
from posefleet.image_io import check_header, sniff
from posefleet.pipeline.admission import Budget
from posefleet.pipeline.ordering import Lineup
from posefleet.pipeline.schema import FrameResult, Health, StreamInfo, StreamList
from posefleet.serve.capacity import Caps, client_key
from posefleet.serve.multipart import frame_parts
from posefleet.serve.processor import FrameRouter

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# frame indices and timestamps are checked before anything is stored: an index a JSON number holds
# exactly, a finite timestamp within about 30,000 years of 1970
MAX_FRAME_INDEX = 2**53 - 1
MAX_ABS_TIMESTAMP = 1e12
# a frame body this long is checked by its header before the rest is read (real headers end far sooner)
EARLY_HEADER_BYTES = 1 << 20
BAD_STREAM_ID = "invalid stream id (1-64 of A-Za-z0-9._-)"
IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}
Policy = Literal["drop_oldest", "wait"]

StreamId = Annotated[
    str, Path(pattern=STREAM_ID_PATTERN, description="1-64 characters: letters, digits, '.', '_', '-'")
]

bearer = HTTPBearer(auto_error=False, description="required when the server has a token configured")


def token_ok(app_: FastAPI, given: str | None) -> bool:
    """The token check of every route and transport; the tokens are set per replica (none: auth off)."""
    tokens: list[str] = getattr(app_.state, "auth_tokens", [])
    given_b = (given or "").encode()
    # every token compared, in constant time each: no early exit tells which one nearly matched
    return not tokens or sum(hmac.compare_digest(given_b, t.encode()) for t in tokens) > 0


def client_of(app_: FastAPI, given: str | None, address: str | None) -> str:
    """The name a client's caps are counted under: its token (when auth is on), else its address."""
    return client_key(given if app_.state.auth_tokens else None, address)


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """Check the bearer token; returns the client's name (its token's digest, or its address with auth off).
    ``async`` though it never waits: FastAPI runs a plain ``def`` dependency on a thread, a hop per request."""
    given = credentials.credentials if credentials is not None else None
    if not token_ok(request.app, given):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return client_of(request.app, given, request.client and request.client.host)


Client = Annotated[str, Depends(require_token)]


app = FastAPI(
    title="posefleet",
    version=__version__,
    description=(
        "Multi-person 2D pose estimation with tracking, for many camera streams. Frames come in three ways, "
        "all served by the same pipeline: `POST /v1/streams/{stream_id}/frames` (one JPEG/PNG a request), "
        "`WS /v1/streams/{stream_id}/ws` (a WebSocket per stream: binary JPEG/PNG messages in, one JSON "
        "`FrameResult` out per frame, in order; a message may start with a JSON line "
        '`{"frame_index": n, "timestamp": t}` and a newline before the image bytes; errors come back as '
        '`{"error": {"status", "detail"}}`; the token goes in the `Authorization` header or `?token=`), '
        "and `POST /v1/frames` (multipart: several frames of one or many streams, each part "
        "named by its stream id)."
    ),
)
AUTH = [Depends(require_token)]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not a usable JPEG/PNG image"},
    401: {"description": "missing or wrong bearer token"},
    408: {"description": "the body did not arrive in full within limits.body_timeout_s"},
    409: {"description": "duplicate or out-of-order frame index, or the frame was abandoned"},
    413: {"description": "body or image larger than the configured limits"},
    415: {"description": "content type is not image/jpeg, image/png or application/octet-stream"},
    503: {"description": "overloaded, over a cap (serving.limits) or recovering from a fault; retry after Retry-After"},
}

EVENT_STREAM: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}, 503: ERRORS[503]}
SOURCE_ERRORS = {403: {"description": "sources off, or the URL is not on the allowlist"}, 503: ERRORS[503]}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
FRAME_BODY = {
    "required": True,
    "description": "one encoded frame",
    "content": {"image/jpeg": _BINARY, "image/png": _BINARY, "application/octet-stream": _BINARY},
}
FRAMES_BODY = {
    "required": True,
    "description": (
        "multipart/form-data: one file part per frame, its field name the stream id; optional part headers "
        "`x-frame-index` and `x-timestamp`. A stream's frames apply in the order they appear."
    ),
    "content": {"multipart/form-data": {"schema": {"type": "object", "additionalProperties": _BINARY}}},
}


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


def _check_index(index: Any) -> None:
    if index is not None and (
        not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_FRAME_INDEX
    ):
        raise ValueError(f"frame_index must be an integer from 0 to {MAX_FRAME_INDEX}")


def _check_timestamp(ts: Any) -> None:
    if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts)
                           or abs(ts) > MAX_ABS_TIMESTAMP):  # fmt: skip
        raise ValueError(f"timestamp must be a finite number of seconds within +-{MAX_ABS_TIMESTAMP:g}")


def _header_number(value: str | None, kind: type) -> Any:
    if value is None:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None
    (_check_index if kind is int else _check_timestamp)(number)
    return number


def _socket_frame_message(message: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """A WebSocket frame message: JPEG/PNG bytes, optionally after a one-line JSON header
    ``{"frame_index": n, "timestamp": t}\n`` (an image never starts with ``{``, so no ambiguity)."""
    data = message.get("bytes")
    if data is None:
        raise ValueError("send frames as binary messages")
    if not data.startswith(b"{"):
        return {}, data
    end = data.find(b"\n", 0, 512)
    if end < 0:
        raise ValueError("a frame header is one JSON line of at most 512 bytes, then a newline")
    try:
        meta = json.loads(data[:end])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"frame header is not JSON: {exc}") from None
    if not isinstance(meta, dict) or set(meta) - {"frame_index", "timestamp"}:
        raise ValueError('a frame header takes {"frame_index": int, "timestamp": float}')
    _check_index(meta.get("frame_index"))
    _check_timestamp(meta.get("timestamp"))
    return meta, data[end + 1 :]


def _answer_json(stream_id: str, status: int, detail: str) -> str:
    return json.dumps({"stream_id": stream_id, "error": {"status": status, "detail": detail}})


def _done(value: str) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


@app.exception_handler(PosefleetError)
async def error_answer(request: Request, exc: PosefleetError) -> JSONResponse:
    """Every posefleet error as its HTTP status with the reason in ``detail`` (503s say when to retry)."""
    headers = {"Retry-After": str(request.app.state.retry_after)} if exc.status == 503 else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


class HeldStream(StreamingResponse):
    """A streaming answer that gives back what it holds (a viewer slot) however it ends, even unstarted."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ray.exceptions.TaskCancelledError:
            pass  # the viewer went away: Serve cancels its receive channel (unhandled, asyncio logs it)
        finally:
            self.release()


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
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
        self.frames = FrameRouter(app_cfg, deploy_id, (detector, pose) if detector is not None else None)
        self.detector, self.pose, self.hub = detector, pose, self.frames.hub
        self.metrics = self.frames.metrics
        self.slots = Budget(s.admission.max_inflight_frames, s.admission.frame_timeout_s, "frames")
        self.lineup = Lineup()
        self.node = ray.get_runtime_context().get_node_id()[:12]  # answers say which node served them
        app.state.auth_tokens = s.security.api_tokens()
        app.state.retry_after = s.retry_after_s
        caps = s.limits
        self.sources = None
        if s.sources.enabled:  # the cameras this deploy pulls itself
            app_name = serve.get_replica_context().app_name
            self.sources = source_registry(deploy_id, s.namespace, s.sources, app_name)
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
            self.frames.close()
        with contextlib.suppress(Exception):
            ray.get(self.owner.leave.remote(self.member), timeout=10)

    @contextlib.asynccontextmanager
    async def _frame_slot(self, policy: str | None) -> AsyncIterator[None]:
        """Each ingress replica takes at most ``admission.max_inflight_frames`` frames at once, whatever the
        transport: beyond, a frame is refused (503), but one sent under the ``wait`` policy waits its turn
        (in arrival order, at most ``frame_timeout_s``): refused while a later frame of its stream, sent
        behind it on a socket or in a batch, got in, it could never be applied in order."""
        admitted = False
        try:
            async with self.slots.hold(1, wait=policy == "wait"):
                admitted = True
                yield
        except Unavailable:
            if not admitted:
                self.metrics.frame_errors.inc(tags={"reason": "overload"})
            raise

    async def _frame(self, stream_id: str, body: bytes | np.ndarray, index: int | None, ts: float | None,
                     policy: str | None, client: str, group: str | None = None,
                     settings: dict[str, Any] | None = None) -> FrameResult:  # fmt: skip
        async with self.lineup.turn(stream_id) as went, self._frame_slot(policy):  # a stream's frames in order
            return await self.frames.process(stream_id, body, index, ts, policy, client, group, went, settings)

    async def _read_body(self, request: Request, client: str, image: bool = False) -> bytes:
        """The whole body, within ``max_body_bytes`` and ``limits.body_timeout_s``, holding an upload slot
        (not a frame slot) meanwhile: a slow or lying upload costs its sender, not the other streams.
        An ``image`` body that is no image by its first bytes, or by its header once ``EARLY_HEADER_BYTES``
        are in (checked in a thread, bounded), is refused there, not gathered and parsed in full. (Serve's proxy
        still carries every byte it was sent to the replica: about 0.5 CPU-ms a MB, bench.overload --hostile.)"""
        limit = self.serving.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BodyTooLarge(f"body of {length} bytes is over the {limit}-byte limit")
        checked = sniffed = not image

        async def read() -> bytes:
            nonlocal checked, sniffed
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body is over the {limit}-byte limit")
                chunks.append(chunk)
                if not sniffed and size >= 8:
                    sniffed = True
                    if sniff(b"".join(chunks)[:8]) is None:
                        raise ImageError("not a JPEG or PNG image")  # by its first bytes
                if not checked and size >= EARLY_HEADER_BYTES:
                    checked = True
                    await asyncio.to_thread(self._early_header, b"".join(chunks))
            return b"".join(chunks)

        timeout = self.serving.limits.body_timeout_s
        with self.uploads.hold(client):
            try:
                return await asyncio.wait_for(read(), timeout)
            except asyncio.TimeoutError:
                self.metrics.frame_errors.inc(tags={"reason": BodyTimeout.reason})
                raise BodyTimeout(f"the body did not arrive in full within {timeout:g} s") from None
            except PosefleetError as refused:
                self.metrics.frame_errors.inc(tags={"reason": refused.reason})
                raise

    def _early_header(self, prefix: bytes) -> None:
        with contextlib.suppress(ImageTruncated):  # the header may go on past the prefix: decided later
            check_header(prefix, self.frames.cfg.max_image_pixels, self.frames.cfg.max_image_side)

    # -- frames: one per request ----------------------------------------------------------------
    @app.post(
        "/v1/streams/{stream_id}/frames",
        response_model=FrameResult,
        responses=ERRORS,
        openapi_extra={"requestBody": FRAME_BODY},
    )
    async def post_frame(
        self,
        stream_id: StreamId,
        request: Request,
        response: Response,
        client: Client,
        frame_index: Annotated[
            int | None, Query(ge=0, le=MAX_FRAME_INDEX, description="default: the stream's next")
        ] = None,
        timestamp: Annotated[
            float | None,
            Query(
                ge=-MAX_ABS_TIMESTAMP,
                le=MAX_ABS_TIMESTAMP,
                allow_inf_nan=False,
                description="seconds; used by smoothing",
            ),
        ] = None,
        policy: Annotated[Policy | None, Query(description="set the stream's overload policy")] = None,
        group: Annotated[str | None, Query(pattern=STREAM_ID_PATTERN, description="e.g. the court")] = None,
        x_frame_index: Annotated[int | None, Header(ge=0, le=MAX_FRAME_INDEX)] = None,
        x_timestamp: Annotated[
            float | None, Header(ge=-MAX_ABS_TIMESTAMP, le=MAX_ABS_TIMESTAMP, allow_inf_nan=False)
        ] = None,
    ) -> FrameResult:
        """Post one JPEG/PNG frame of a stream; get the stream's tracked people in it."""
        response.headers["x-served-by"] = self.node
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in IMAGE_TYPES:
            self.metrics.frame_errors.inc(tags={"reason": WrongContentType.reason})
            raise WrongContentType(f"content type {ctype or '(none)'!r}: send image/jpeg or image/png")
        body = await self._read_body(request, client, image=True)
        index = frame_index if frame_index is not None else x_frame_index
        ts = timestamp if timestamp is not None else x_timestamp
        return await self._frame(stream_id, body, index, ts, policy, client, group)

    # -- frames: many per request -----------------------------------------------------------------
    @app.post(
        "/v1/frames",
        response_model=BatchAnswer,
        responses={k: v for k, v in ERRORS.items() if k in (401, 408, 413, 415, 422, 503)},
        openapi_extra={"requestBody": FRAMES_BODY},
    )
    async def post_frames(
        self,
        request: Request,
        response: Response,
        client: Client,
        policy: Annotated[Policy | None, Query(description="set the overload policy of every stream sent")] = None,
    ) -> BatchAnswer:
        """Several frames of one or many streams in one request; an answer per frame, in the request's
        order. Streams run concurrently, a stream's frames one after another."""
        response.headers["x-served-by"] = self.node
        ctype = request.headers.get("content-type") or ""
        if ctype.split(";")[0].strip().lower() != "multipart/form-data":
            raise WrongContentType(f"content type {ctype.split(';')[0] or '(none)'!r}: send multipart/form-data")
        body = await self._read_body(request, client)
        try:  # parsing touches every byte: off the event loop
            parts = await asyncio.to_thread(frame_parts, body, ctype, self.serving.max_batch_frames)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        answers: list[FrameAnswer | None] = [None] * len(parts)
        by_stream: dict[str, list[int]] = {}
        for i, part in enumerate(parts):
            if re.fullmatch(STREAM_ID_PATTERN, part.name):
                by_stream.setdefault(part.name, []).append(i)
            else:
                answers[i] = FrameAnswer(stream_id=part.name[:64], status=422, detail=BAD_STREAM_ID)

        async def one_stream(stream_id: str, idx: list[int]) -> None:
            for i in idx:
                part = parts[i]
                try:
                    index = _header_number(part.headers.get("x-frame-index"), int)
                    ts = _header_number(part.headers.get("x-timestamp"), float)
                    result = await self._frame(stream_id, part.data, index, ts, policy, client)
                    answers[i] = FrameAnswer(stream_id=stream_id, status=200, result=result)
                except PosefleetError as exc:
                    answers[i] = FrameAnswer(stream_id=stream_id, status=exc.status, detail=str(exc))
                except ValueError as exc:
                    answers[i] = FrameAnswer(stream_id=stream_id, status=422, detail=str(exc))

        await asyncio.gather(*(one_stream(sid, idx) for sid, idx in by_stream.items()))
        return BatchAnswer(frames=[a for a in answers if a is not None])

    # -- frames: a WebSocket per stream ---------------------------------------------------------
    @app.websocket("/v1/streams/{stream_id}/ws")
    async def stream_socket(self, websocket: WebSocket, stream_id: str) -> None:
        """Binary JPEG/PNG messages in, one JSON answer out per frame, in order (see the API description)."""
        given = websocket.query_params.get("token")
        auth = websocket.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        if not token_ok(websocket.app, given):
            await websocket.close(code=1008, reason="missing or wrong bearer token")
            return
        if not re.fullmatch(STREAM_ID_PATTERN, stream_id):
            await websocket.close(code=1008, reason=BAD_STREAM_ID)
            return
        policy = websocket.query_params.get("policy")
        if policy not in (None, "drop_oldest", "wait"):
            await websocket.close(code=1008, reason="policy must be drop_oldest or wait")
            return
        group = websocket.query_params.get("group")
        if group is not None and not re.fullmatch(STREAM_ID_PATTERN, group):
            await websocket.close(code=1008, reason="invalid group (1-64 of A-Za-z0-9._-)")
            return
        client = client_of(websocket.app, given, websocket.client and websocket.client.host)
        try:
            self.sockets.enter(client)
        except OverCap as exc:  # accepted to say why: a refused handshake reaches the client as a bare 403
            await websocket.accept()
            await websocket.close(code=1013, reason=str(exc)[:120])  # 1013: try again later
            return
        try:
            await websocket.accept()
            await self._socket_frames(websocket, stream_id, policy, client, group)
        finally:
            self.sockets.leave(client)

    async def _socket_frames(self, websocket: WebSocket, stream_id: str, policy: str | None, client: str,
                             group: str | None) -> None:  # fmt: skip
        answers: asyncio.Queue = asyncio.Queue(maxsize=self.serving.ws_max_inflight)

        async def send_in_order() -> None:
            while (task := await answers.get()) is not None:
                await websocket.send_text(await task)

        sender = asyncio.create_task(send_in_order())

        async def queue(answer: Awaitable[str]) -> bool:
            """Line an answer up behind the earlier ones (waiting while ws_max_inflight are unanswered);
            False once the sender has stopped (the client went away), so nothing waits forever."""
            if not answers.full():  # the usual case: no task, no wait
                answers.put_nowait(answer)
                return True
            put = asyncio.ensure_future(answers.put(answer))
            done, _ = await asyncio.wait({put, sender}, return_when=asyncio.FIRST_COMPLETED)
            if put not in done:
                put.cancel()
                return False
            return True

        idle_s = self.serving.limits.socket_idle_s
        try:
            while not sender.done():
                try:
                    async with asyncio.timeout(idle_s):  # no task a message, unlike wait_for
                        message = await websocket.receive()
                except TimeoutError:
                    await websocket.close(code=1001, reason=f"no frame for {idle_s:g} s (limits.socket_idle_s)")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    meta, data = _socket_frame_message(message)
                except ValueError as exc:
                    answer: Awaitable[str] = _done(_answer_json(stream_id, 422, str(exc)))
                else:
                    answer = asyncio.create_task(self._socket_frame(
                        stream_id, data, meta.get("frame_index"), meta.get("timestamp"), policy, client, group
                    ))  # fmt: skip
                if not await queue(answer):
                    break
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away; what is still in flight finishes where its stream lives
        finally:
            sender.cancel()  # nobody left to answer

    async def _socket_frame(self, stream_id: str, data: bytes, index: int | None, ts: float | None,
                            policy: str | None, client: str, group: str | None) -> str:  # fmt: skip
        try:
            if len(data) > self.serving.max_body_bytes:
                raise BodyTooLarge(f"frame of {len(data)} bytes is over the {self.serving.max_body_bytes}-byte limit")
            result = await self._frame(stream_id, data, index, ts, policy, client, group)
            return result.model_dump_json()
        except PosefleetError as exc:
            return _answer_json(stream_id, exc.status, str(exc))

    # -- camera sources ------------------------------------------------------------------------
    async def source_frame(self, stream_id: str, image: np.ndarray, index: int | None, ts: float | None,
                           group: str | None = None, settings: dict[str, Any] | None = None) -> dict:  # fmt: skip
        """A frame a source actor read and decoded (a Serve handle call, not a route): the frame path of a
        POSTed frame from its decoded image on, under the ``drop_oldest`` policy, with the source's settings."""
        result = await self._frame(stream_id, image, index, ts, "drop_oldest", "source", group, settings)
        return result.model_dump(include={"frame_index", "people", "dropped"})

    async def _registry(self, method: str, *args: Any) -> Any:
        if self.sources is None:
            raise Forbidden("camera sources are off (serving.sources.enabled)")
        call = getattr(self.sources, method)
        try:  # a restarting registry is retried (then 503), as a restarting stream worker is
            return await with_retry(lambda: call.remote(*args), "source registry", self.serving.fault_retry_s)
        except ray.exceptions.RayTaskError as exc:
            raise cause(exc) from None  # a PosefleetError: error_answer maps it

    @app.post("/v1/sources", status_code=201, response_model=SourceInfo, dependencies=AUTH, responses=SOURCE_ERRORS)
    async def add_source(self, request: SourceRequest) -> SourceInfo:
        """Start pulling a camera (rtsp/http(s) URL, or a file under an allowed directory) into a stream."""
        settings = request.settings.model_dump() if request.settings is not None else None
        return SourceInfo(
            **await self._registry("add", request.stream_id, request.url, request.max_fps, request.group, settings)
        )

    @app.get("/v1/sources", response_model=SourceList, dependencies=AUTH)
    async def list_sources(self) -> SourceList:
        return SourceList(sources=[SourceInfo(**s) for s in await self._registry("list")])

    @app.get("/v1/sources/{stream_id}", response_model=SourceInfo, dependencies=AUTH, responses={404: {}})
    async def get_source(self, stream_id: StreamId) -> SourceInfo:
        return SourceInfo(**await self._registry("describe", stream_id))

    @app.delete("/v1/sources/{stream_id}", status_code=204, dependencies=AUTH, responses={404: {}})
    async def delete_source(self, stream_id: StreamId) -> Response:
        await self._registry("remove", stream_id)
        return Response(status_code=204)

    # -- stream management ------------------------------------------------------------------
    @app.get("/v1/streams", response_model=StreamList, dependencies=AUTH)
    async def list_streams(
        self,
        after: Annotated[str | None, Query(max_length=64, description="the next_after of the page before")] = None,
        limit: Annotated[int | None, Query(ge=1, description="page size (at most limits.page_size)")] = None,
    ) -> StreamList:
        """The streams held, by id, a page at a time."""
        limit = min(limit or self.serving.limits.page_size, self.serving.limits.page_size)
        parts = await self.frames.call(None, "list_streams", after, limit + 1)
        streams = sorted((s for p in parts for s in p), key=lambda s: s["stream_id"])
        page = streams[:limit]
        more = len(streams) > limit
        return StreamList(streams=[StreamInfo(**s) for s in page], next_after=page[-1]["stream_id"] if more else None)

    @app.get("/v1/streams/{stream_id}", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH)
    async def get_stream(self, stream_id: StreamId) -> StreamInfo:
        info = await self.frames.call(stream_id, "describe", stream_id)
        if info is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return StreamInfo(**info)

    @app.post("/v1/streams/{stream_id}/reset", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH)
    async def reset_stream(self, stream_id: StreamId) -> StreamInfo:
        """Forget the stream's tracks and frame order; ids start again at 1."""
        if not await self.frames.call(stream_id, "reset", stream_id):
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return await self.get_stream(stream_id)

    @app.get("/v1/streams/{stream_id}/settings", response_model=StreamSettings, responses={404: {}},
             dependencies=AUTH)  # fmt: skip
    async def get_stream_settings(self, stream_id: StreamId) -> StreamSettings:
        """The stream's own settings: its region of interest (the court polygon)."""
        settings = await self.frames.call(stream_id, "settings", stream_id)
        if settings is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return StreamSettings(**settings)

    @app.put("/v1/streams/{stream_id}/settings", response_model=StreamSettings, responses={404: {}, 422: {}},
             dependencies=AUTH)  # fmt: skip
    async def put_stream_settings(self, stream_id: StreamId, settings: StreamSettings) -> StreamSettings:
        """Set the stream's region of interest from its next frame on (tracks kept; checkpointed with the
        stream). A polygon that is malformed, self-crossing or off the stream's frames is refused (422). A
        stream exists from its first frame; cameras known in advance are named under ``pipeline.streams``."""
        done = await self.frames.call(stream_id, "configure", stream_id, settings.model_dump())
        if done is None:
            raise UnknownStream(f"unknown stream {stream_id!r}: send its first frame, or name it in pipeline.streams")
        return StreamSettings(**done)

    @app.delete("/v1/streams/{stream_id}", status_code=204, responses={404: {}}, dependencies=AUTH)
    async def delete_stream(self, stream_id: StreamId) -> Response:
        if not await self.frames.call(stream_id, "delete", stream_id):
            raise UnknownStream(f"unknown stream {stream_id!r}")
        if self.frames.feed is not None:
            self.frames.feed.forget(stream_id)
        return Response(status_code=204)

    @app.get("/v1/stats", dependencies=AUTH)
    async def stats(self, reset: bool = False) -> dict:
        """Recent batches of the models (frames and items per inference) and their providers: per stream
        worker with ``serving.models: local``, per deployment (one replica each) with ``deployments``."""
        workers = await self.frames.call(None, "batch_stats", reset)
        held = {c.kind: c.stats() for c in (self.viewers, self.sockets, self.uploads)}
        out: dict[str, Any] = {"inflight_frames": self.slots.used, "models": self.serving.models,
                               "ray_calls": self.frames.ray_calls(), "workers": workers, "held": held}  # fmt: skip
        if self.frames.webhook is not None:
            out["webhook"] = self.frames.webhook.snapshot()
        out["cluster"] = await self.owner.cluster.remote()
        if self.detector is not None:
            models = {"detector": self.detector, "pose": self.pose}
            for name, handle in models.items():
                out[name] = None if handle is None else await handle.batch_stats.remote(reset)
        return out

    # -- live viewer --------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def root(self) -> RedirectResponse:
        return RedirectResponse("/viewer")

    @app.get("/viewer", response_class=HTMLResponse, include_in_schema=False)
    async def viewer(self) -> HTMLResponse:
        """The live page; it holds no data itself and fetches everything with the API token."""
        if self.hub is None:
            raise HTTPException(404, "the viewer is turned off (serving.viewer.enabled)")
        page = resources.files("posefleet.serve").joinpath("static/viewer.html").read_text()
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def _hub_snapshots(self, request: Request) -> AsyncIterator[dict | None]:
        """The viewer hub's snapshots as they change, at most ``viewer.max_hz`` (None: no change within 5 s,
        time for a keep-alive), until the client goes away."""
        assert self.hub is not None
        period, version = 1.0 / self.serving.viewer.max_hz, -1
        while not await request.is_disconnected():
            t0 = time.monotonic()
            try:
                snap = await self.hub.wait.remote(version, 5.0)
            except FAULTS:
                await asyncio.sleep(1.0)
                continue
            except (asyncio.CancelledError, ray.exceptions.TaskCancelledError):
                return  # the client went away
            changed = snap["version"] != version
            version = snap["version"]
            yield snap if changed else None
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    @app.get("/v1/events", responses=EVENT_STREAM)
    async def events(self, request: Request, client: Client) -> StreamingResponse:
        """Server-sent events: a snapshot of every active stream (results, FPS, p99, drops) on change.
        Viewers are capped (``limits.max_viewers``, per client and in all) and never take a frame slot."""
        if self.hub is None:
            raise HTTPException(404, "the viewer is turned off (serving.viewer.enabled)")
        self.viewers.enter(client)

        async def stream() -> AsyncIterator[str]:
            async for snap in self._hub_snapshots(request):
                yield ": keep-alive\n\n" if snap is None else f"data: {json.dumps(snap, separators=(',', ':'))}\n\n"

        return HeldStream(stream(), lambda: self.viewers.leave(client), media_type="text/event-stream",
                          headers={"Cache-Control": "no-store"})  # fmt: skip

    @app.get("/v1/groups/{group}", dependencies=AUTH, responses={404: {}})
    async def get_group(self, group: StreamId) -> dict:
        """The latest results of every camera of a group (``?group=`` on its frames, or its source's group),
        aligned by time: each camera's result nearest to the oldest of their newest, with its skew."""
        found = await self.hub.group.remote(group) if self.hub is not None else None
        if found is None:
            raise HTTPException(404, f"no camera of group {group!r} answered lately")
        return found

    @app.get("/v1/streams/{stream_id}/results", responses=EVENT_STREAM)
    async def stream_results(self, stream_id: StreamId, request: Request, client: Client) -> StreamingResponse:
        """Server-sent events: the stream's results as the viewer gets them (its newest at up to
        ``viewer.max_hz``), for live consumers; capped like viewers."""
        if self.hub is None:
            raise HTTPException(404, "the viewer feed is turned off (serving.viewer.enabled)")
        self.viewers.enter(client)

        async def stream() -> AsyncIterator[str]:
            last = None
            async for snap in self._hub_snapshots(request):
                mine = None if snap is None else next((v for v in snap["streams"] if v["stream_id"] == stream_id), None)
                if mine is not None and mine["frame_index"] != last:
                    last = mine["frame_index"]
                    latest = await self.hub.latest.remote(stream_id)
                    yield f"data: {json.dumps(latest, separators=(',', ':'))}\n\n"
                else:
                    yield ": keep-alive\n\n"

        return HeldStream(stream(), lambda: self.viewers.leave(client), media_type="text/event-stream",
                          headers={"Cache-Control": "no-store"})  # fmt: skip

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
