"""Streams, camera sources and stats over the API: a mixin of the ``Ingress`` deployment. Calls go to the
stream holders through the frame router, or to the deploy's source registry (a restarting one retried)."""

from collections.abc import Callable
from typing import Annotated, Any

import ray
from fastapi import Query, Response

from posefleet.actors.stream_worker import with_retry
from posefleet.config import StreamSettings
from posefleet.errors import Forbidden, UnknownStream, cause
from posefleet.pipeline.schema import SourceInfo, SourceList, SourceRequest, StreamInfo, StreamList
from posefleet.serve.api import SOURCE_ERRORS, StreamId, app, routes_of_ingress
from posefleet.serve.auth import AUTH


@routes_of_ingress
class Management:
    """The management routes of the ``Ingress`` deployment."""

    async def _registry(self, call: Callable[[Any], Any]) -> Any:
        """``call(registry)``: a typed call on the deploy's source registry's handle."""
        if self.sources is None:
            raise Forbidden("camera sources are off (serving.sources.enabled)")
        registry = self.sources
        try:  # a restarting registry is retried (then 503), as a restarting stream worker is
            return await with_retry(lambda: call(registry), "source registry", self.serving.fault_retry_s)
        except ray.exceptions.RayTaskError as exc:
            raise cause(exc) from None  # a PosefleetError: error_answer maps it

    @app.post("/v1/sources", status_code=201, response_model=SourceInfo, dependencies=AUTH, responses=SOURCE_ERRORS)
    async def add_source(self, request: SourceRequest) -> SourceInfo:
        """Start pulling a camera (rtsp/http(s) URL, or a file under an allowed directory) into a stream."""
        settings = request.settings.model_dump() if request.settings is not None else None
        r = request
        added = await self._registry(lambda reg: reg.add.remote(r.stream_id, r.url, r.max_fps, r.group, settings))
        return SourceInfo(**added)

    @app.get("/v1/sources", response_model=SourceList, dependencies=AUTH)
    async def list_sources(self) -> SourceList:
        return SourceList(sources=[SourceInfo(**s) for s in await self._registry(lambda r: r.list.remote())])

    @app.get("/v1/sources/{stream_id}", response_model=SourceInfo, dependencies=AUTH, responses={404: {}})
    async def get_source(self, stream_id: StreamId) -> SourceInfo:
        return SourceInfo(**await self._registry(lambda r: r.describe.remote(stream_id)))

    @app.delete("/v1/sources/{stream_id}", status_code=204, dependencies=AUTH, responses={404: {}})
    async def delete_source(self, stream_id: StreamId) -> Response:
        await self._registry(lambda r: r.remove.remote(stream_id))
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
        parts = await self.router.list_streams(after, limit + 1)
        streams = sorted(parts, key=lambda s: s["stream_id"])
        page = streams[:limit]
        more = len(streams) > limit
        return StreamList(streams=[StreamInfo(**s) for s in page], next_after=page[-1]["stream_id"] if more else None)

    @app.get("/v1/streams/{stream_id}", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH)
    async def get_stream(self, stream_id: StreamId) -> StreamInfo:
        info = await self.router.describe(stream_id)
        if info is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return StreamInfo(**info)

    @app.post("/v1/streams/{stream_id}/reset", response_model=StreamInfo, responses={404: {}}, dependencies=AUTH)
    async def reset_stream(self, stream_id: StreamId) -> StreamInfo:
        """Forget the stream's tracks and frame order; ids start again at 1."""
        if not await self.router.reset(stream_id):
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return await self.get_stream(stream_id)

    @app.get("/v1/streams/{stream_id}/settings", response_model=StreamSettings, responses={404: {}},
             dependencies=AUTH)  # fmt: skip
    async def get_stream_settings(self, stream_id: StreamId) -> StreamSettings:
        """The stream's own settings: its region of interest (the court polygon), detect_every, policy."""
        settings = await self.router.stream_settings(stream_id)
        if settings is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return StreamSettings(**settings)

    @app.put("/v1/streams/{stream_id}/settings", response_model=StreamSettings, responses={404: {}, 422: {}},
             dependencies=AUTH)  # fmt: skip
    async def put_stream_settings(self, stream_id: StreamId, settings: StreamSettings) -> StreamSettings:
        """Set the stream's region of interest from its next frame on (tracks kept; checkpointed with the
        stream). A polygon that is malformed, self-crossing or off the stream's frames is refused (422). A
        stream exists from its first frame; cameras known in advance are named under ``pipeline.streams``."""
        done = await self.router.configure(stream_id, settings.model_dump())
        if done is None:
            raise UnknownStream(f"unknown stream {stream_id!r}: send its first frame, or name it in pipeline.streams")
        return StreamSettings(**done)

    @app.delete("/v1/streams/{stream_id}", status_code=204, responses={404: {}}, dependencies=AUTH)
    async def delete_stream(self, stream_id: StreamId) -> Response:
        if not await self.router.delete(stream_id):
            raise UnknownStream(f"unknown stream {stream_id!r}")
        if self.router.feed is not None:
            self.router.feed.forget(stream_id)
        return Response(status_code=204)

    @app.get("/v1/stats", dependencies=AUTH)
    async def stats(self, reset: bool = False) -> dict:
        """Recent batches of the models (frames and items per inference) and their providers: per stream
        worker with ``serving.models: local``, per deployment (one replica each) with ``deployments``."""
        workers = await self.router.batch_stats(reset)
        held = {c.kind: c.stats() for c in (self.viewers, self.sockets, self.uploads)}
        out: dict[str, Any] = {"inflight_frames": self.slots.used, "models": self.serving.models,
                               "ray_calls": self.router.ray_calls(), "workers": workers, "held": held}  # fmt: skip
        if self.router.webhook is not None:
            out["webhook"] = self.router.webhook.snapshot()
        out["cluster"] = await self.owner.cluster.remote()
        if self.detector is not None:
            models = {"detector": self.detector, "pose": self.pose}
            for name, handle in models.items():
                out[name] = None if handle is None else await handle.batch_stats.remote(reset)
        return out
