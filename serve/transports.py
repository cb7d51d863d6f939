"""Frames in: the three transports (a POST a frame, a multipart POST of many, a WebSocket a stream) and
camera sources' frames, each parsed into its frame's bytes and :class:`FrameMeta`, then one path behind
them (``_frame``): the stream's turn (its frames in the order they came), a frame slot of this replica,
then the stream's holder. Bodies are read within their limits holding an upload slot, not a frame slot.
A mixin of the ``Ingress`` deployment (its state is set up there)."""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any

import numpy as np
from fastapi import Header, Query, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect

from posefleet.errors import (
    BodyTimeout,
    BodyTooLarge,
    ImageError,
    ImageTruncated,
    InvalidRequest,
    OverCap,
    PosefleetError,
    Unavailable,
    WrongContentType,
)
from posefleet.image_io import check_header, sniff
from posefleet.pipeline.admission import Policy
from posefleet.pipeline.schema import STREAM_ID_PATTERN, BatchAnswer, FrameAnswer, FrameResult
from posefleet.serve.api import BAD_STREAM_ID, ERRORS, FRAME_BODY, FRAMES_BODY, StreamId, app, routes_of_ingress
from posefleet.serve.auth import Client, client_of, token_ok
from posefleet.serve.frame_request import (
    EARLY_HEADER_BYTES,
    IMAGE_TYPES,
    MAX_ABS_TIMESTAMP,
    MAX_FRAME_INDEX,
    FrameMeta,
    error_json,
    from_part_headers,
    from_socket_query,
    socket_message,
)
from posefleet.serve.multipart import frame_parts


def _done(value: str) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


@routes_of_ingress
class FrameTransports:
    """The frame routes of the ``Ingress`` deployment."""

    @contextlib.asynccontextmanager
    async def _frame_slot(self, policy: str | None) -> AsyncIterator[None]:
        """Each ingress replica takes at most ``limits.max_inflight_frames`` frames at once, whatever the
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
        return await self.router.frame(stream_id, body, index, ts, policy, client, group, settings,
                                       slot=self._frame_slot(policy))  # fmt: skip

    async def _read_body(self, request: Request, client: str, image: bool = False) -> bytes:
        """The whole body, within ``max_body_bytes`` and ``limits.body_timeout_s``, holding an upload slot
        (not a frame slot) meanwhile: a slow or lying upload costs its sender, not the other streams.
        An ``image`` body that is no image by its first bytes, or by its header once ``EARLY_HEADER_BYTES``
        are in (checked in a thread, bounded), is refused there, not gathered and parsed in full. (Serve's proxy
        still carries every byte it was sent to the replica: about 0.5 CPU-ms a MB, bench.overload --hostile.)"""
        limit = self.serving.limits.max_body_bytes
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
            check_header(prefix, self.router.cfg.max_image_pixels, self.router.cfg.max_image_side)

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
        order. Streams run concurrently (a client at most ``limits.batch_frames_per_client`` frames at once),
        a stream's frames one after another."""
        response.headers["x-served-by"] = self.node
        ctype = request.headers.get("content-type") or ""
        if ctype.split(";")[0].strip().lower() != "multipart/form-data":
            raise WrongContentType(f"content type {ctype.split(';')[0] or '(none)'!r}: send multipart/form-data")
        body = await self._read_body(request, client)
        try:  # parsing touches every byte: off the event loop
            parts = await asyncio.to_thread(frame_parts, body, ctype, self.serving.limits.max_batch_frames)
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
                    meta = from_part_headers(part.headers)
                    async with self.shares.hold(client):
                        result = await self._frame(
                            stream_id, part.data, meta.frame_index, meta.timestamp, policy, client
                        )
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
        try:
            stream = from_socket_query(websocket.query_params)
        except ValueError as exc:
            await websocket.close(code=1008, reason=str(exc)[:120])
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
            await self._socket_frames(websocket, stream_id, stream, client)
        finally:
            self.sockets.leave(client)

    async def _socket_frames(self, websocket: WebSocket, stream_id: str, stream: FrameMeta, client: str) -> None:
        answers: asyncio.Queue = asyncio.Queue(maxsize=self.serving.limits.ws_max_inflight)

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
                    meta, data = socket_message(message, stream)
                except ValueError as exc:
                    answer: Awaitable[str] = _done(error_json(stream_id, 422, str(exc)))
                else:
                    answer = asyncio.create_task(self._socket_frame(stream_id, data, meta, client))
                if not await queue(answer):
                    break
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away; what is still in flight finishes where its stream lives
        finally:
            sender.cancel()  # nobody left to answer

    async def _socket_frame(self, stream_id: str, data: bytes, meta: FrameMeta, client: str) -> str:
        try:
            limit = self.serving.limits.max_body_bytes
            if len(data) > limit:
                raise BodyTooLarge(f"frame of {len(data)} bytes is over the {limit}-byte limit")
            result = await self._frame(stream_id, data, meta.frame_index, meta.timestamp, meta.policy, client,
                                       meta.group)  # fmt: skip
            return result.model_dump_json()
        except PosefleetError as exc:
            return error_json(stream_id, exc.status, str(exc))

    # -- camera sources ------------------------------------------------------------------------
    async def source_frame(self, stream_id: str, image: np.ndarray, index: int | None, ts: float | None,
                           group: str | None = None, settings: dict[str, Any] | None = None) -> dict:  # fmt: skip
        """A frame a source actor read and decoded (a Serve handle call, not a route): the frame path of a
        POSTed frame from its decoded image on, under the ``drop_oldest`` policy, with the source's settings."""
        result = await self._frame(stream_id, image, index, ts, "drop_oldest", "source", group, settings)
        return result.model_dump(include={"frame_index", "people", "dropped"})
