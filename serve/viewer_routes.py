"""The live viewer's routes: the page, its server-sent events, a group's time-aligned results, a stream's
results feed and thumbnails, all read from the deploy's viewer hub; a mixin of the ``Ingress``
deployment. Viewers are capped and never take a frame slot."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import ray
from fastapi import HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from posefleet.actors import FAULTS
from posefleet.serve.api import EVENT_STREAM, StreamId, app, routes_of_ingress
from posefleet.serve.auth import AUTH, Client


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



@routes_of_ingress
class ViewerRoutes:
    """The viewer routes of the ``Ingress`` deployment."""

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
