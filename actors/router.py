"""A frame to its stream's holder in one Ray call, and what follows its answer (metrics, the viewer feed,
the sinks, the group feed). One per ingress replica, and one per camera source actor (so a camera's
decoded frames reach their holder in one Ray call, not through an ingress). The ingress maps the errors
to HTTP answers; the bench drives this directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
import ray

from posefleet import metrics
from posefleet.actors.group_fuser import GroupFeed
from posefleet.actors.stream_worker import WorkerHost, checkpoint_store, with_retry, worker_pool
from posefleet.actors.viewer_hub import HubFeed, viewer_hub
from posefleet.errors import HeldElsewhere, PosefleetError, Unavailable, cause
from posefleet.pipeline.ordering import Lineup, Ticket
from posefleet.pipeline.schema import FrameResult
from posefleet.pipeline.worker import Served
from posefleet.serving_config import AppConfig
from posefleet.sink import JsonlSink
from posefleet.webhook import WebhookSink


def _for_viewer(result: FrameResult) -> dict[str, Any]:
    return result.model_dump(
        include={"frame_index", "timestamp", "width", "height", "people", "timings", "dropped_before"}
    )


class FrameRouter:
    """Frames to the stream workers, one Ray call each; one per ingress replica."""

    def __init__(self, app_cfg: AppConfig, deploy_id: str, models: tuple[Any, Any] | None = None):
        self.serving = s = app_cfg.serving
        self.cfg = app_cfg.pipeline_config()
        self.local: WorkerHost | None = None
        self.workers: list[Any] = []
        self.store = checkpoint_store(deploy_id, s)
        if s.workers == 0:  # this replica holds the streams itself: no Ray call per frame
            restored = ray.get(self.store.share.remote(0, 1))  # the streams of a replica before this one
            self.local = WorkerHost(self.cfg, s, self.store, models, restored=restored or None)
        else:
            self.workers = worker_pool(self.cfg, s, deploy_id, models)
        # where streams are held, as the checkpoint store said (a stale entry costs one hop: the worker
        # that no longer holds the stream names the one that does); as many as the workers may hold
        self.holders: OrderedDict[str, int] = OrderedDict()
        self.max_holders = s.admission.max_streams * max(s.workers, 1)
        self.placement_calls = 0
        self.metrics = metrics.get()
        self.hub = viewer_hub(deploy_id, s.namespace, s.viewer) if s.viewer.enabled else None
        self.feed = HubFeed(self.hub, s.viewer.flush_s, _for_viewer) if self.hub is not None else None
        self.frame_calls = 0  # Ray calls that carried a frame (one each)
        self.lineup = Lineup()  # a stream's frames in arrival order to its holder
        self.sink = JsonlSink(s.sink) if s.sink.directory else None
        self.webhook = WebhookSink(s.sink.webhook) if s.sink.webhook.url else None
        self.groups = GroupFeed(deploy_id, s, self.store) if s.groups.enabled else None

    def ray_calls(self) -> dict[str, int]:
        """Ray calls this replica made for frames: to the workers, and to the viewer hub."""
        return {"worker": self.frame_calls, "placement": self.placement_calls,
                "viewer_hub": self.feed.calls if self.feed is not None else 0}  # fmt: skip

    def close(self) -> None:
        """The replica stops: what the webhook still holds is sent (bounded), the sink's files closed."""
        if self.webhook is not None:
            self.webhook.close()
        if self.sink is not None:
            self.sink.close()

    async def worker(self, stream_id: str, fresh: bool = False) -> ray.actor.ActorHandle:
        """The stream's worker for a frame: as remembered, else as the checkpoint store places it (a new
        stream on the worker holding the fewest). ``fresh``: ask the store, place nothing, remember nothing
        (a management call: an unknown id stays unknown)."""
        if fresh:
            return self.workers[await self._ask(stream_id, place=False)]
        held = self.holders.get(stream_id)  # (the ingress's Lineup lets a stream's frames here one at a time)
        return self.workers[held if held is not None else await self._ask(stream_id, place=True)]

    async def _ask(self, stream_id: str, place: bool) -> int:
        self.placement_calls += 1
        held = await with_retry(lambda: self.store.holder.remote(stream_id, len(self.workers), place),
                                "checkpoint store", self.serving.fault_retry_s)  # fmt: skip
        if place:
            self._remember(stream_id, held)
        return held

    def _remember(self, stream_id: str, worker: int) -> None:
        self.holders[stream_id] = worker
        self.holders.move_to_end(stream_id)
        if len(self.holders) > self.max_holders:
            self.holders.popitem(last=False)

    # -- management: typed calls on a stream's holder, or on every holder ----------------------------------------
    async def _on_holder(self, stream_id: str, here: Callable[[WorkerHost], Any], there: Callable[[Any], Any]) -> Any:
        """``here(holder)`` where the ingress holds its streams, else ``there(worker)`` on the stream's worker
        (asked of the store: a remembered place may be stale), retried while it restarts."""
        if self.local is not None:
            result = here(self.local)
            return await result if asyncio.iscoroutine(result) else result
        worker = await self.worker(stream_id, fresh=True)
        return await with_retry(lambda: there(worker), "stream worker", self.serving.fault_retry_s)

    async def _on_every_holder(self, here: Callable[[WorkerHost], Any], there: Callable[[Any], Any]) -> list[Any]:
        if self.local is not None:
            result = here(self.local)
            return [await result if asyncio.iscoroutine(result) else result]
        retry_s = self.serving.fault_retry_s
        return list(await asyncio.gather(
            *(with_retry(lambda w=w: there(w), "stream worker", retry_s) for w in self.workers)
        ))  # fmt: skip

    async def list_streams(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Every holder's streams after ``after``, at most ``limit`` of each, together."""
        parts = await self._on_every_holder(lambda h: h.list_streams(after, limit),
                                            lambda w: w.list_streams.remote(after, limit))  # fmt: skip
        return [s for part in parts for s in part]

    async def batch_stats(self, reset: bool) -> list[dict[str, Any]]:
        return await self._on_every_holder(lambda h: h.batch_stats(reset), lambda w: w.batch_stats.remote(reset))

    async def describe(self, stream_id: str) -> dict[str, Any] | None:
        return await self._on_holder(stream_id, lambda h: h.describe(stream_id),
                                     lambda w: w.describe.remote(stream_id))  # fmt: skip

    async def stream_settings(self, stream_id: str) -> dict[str, Any] | None:
        return await self._on_holder(stream_id, lambda h: h.settings(stream_id),
                                     lambda w: w.settings.remote(stream_id))  # fmt: skip

    async def configure(self, stream_id: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        return await self._on_holder(stream_id, lambda h: h.configure(stream_id, settings),
                                     lambda w: w.configure.remote(stream_id, settings))  # fmt: skip

    async def reset(self, stream_id: str) -> bool:
        return await self._on_holder(stream_id, lambda h: h.reset(stream_id), lambda w: w.reset.remote(stream_id))

    async def delete(self, stream_id: str) -> bool:
        return await self._on_holder(stream_id, lambda h: h.delete(stream_id), lambda w: w.delete.remote(stream_id))

    async def frame(
        self, stream_id: str, body: bytes | np.ndarray, index: int | None, ts: float | None, policy: str | None = None,
        client: str = "", group: str | None = None, settings: dict[str, Any] | None = None,
        slot: AbstractAsyncContextManager | None = None,
    ) -> FrameResult:  # fmt: skip
        """One frame of a stream (encoded, or decoded where a camera was read) -> its result (or a ``dropped``
        result), in the stream's turn. Raises PosefleetError. ``slot``: a wait of the caller's (the ingress's
        frame slot), taken in that turn. The bytes are not looked at here: the stream's holder checks them
        before they touch its state."""
        async with self.lineup.turn(stream_id) as ticket, (slot or contextlib.nullcontext()):
            return await self._process(stream_id, body, index, ts, policy, client, group, ticket, settings)

    async def _process(
        self, stream_id: str, body: bytes | np.ndarray, index: int | None, ts: float | None, policy: str | None,
        client: str, group: str | None, ticket: Ticket, settings: dict[str, Any] | None,
    ) -> FrameResult:  # fmt: skip
        went = ticket.went
        start = time.perf_counter()
        thumbnail = self.feed is not None and self.feed.watched  # pictures often only while a viewer may look
        try:
            if self.local is not None:  # the turnstile is reached without awaiting anything: the next frame after
                went()
                served = await self.local.process(stream_id, body, index, ts, policy, client, thumbnail, None, settings)
            else:
                served = await self._remote_process(
                    stream_id, body, index, ts, policy, client, thumbnail, ticket, settings
                )
        except PosefleetError as exc:
            self.metrics.frame_errors.inc(tags={"reason": exc.reason})
            raise
        result: FrameResult = served.result
        if result.dropped:
            self.metrics.frame_errors.inc(tags={"reason": "dropped"})
            if self.feed is not None:
                self.feed.add(stream_id, dropped=1)
            return result
        if group is not None and self.groups is not None:  # court positions in the answer, as the fused frames have
            await self.groups.place(group, result)
        result.timings.total_ms = round((time.perf_counter() - start) * 1000.0, 3)
        self.metrics.frames.inc(tags={"stream": stream_id if self.serving.metrics_per_stream else "all"})
        for stage, value in result.timings.model_dump().items():
            self.metrics.stage_ms.observe(value, tags={"stage": stage.removesuffix("_ms")})
        if self.feed is not None:
            self.feed.add(stream_id, result, result.timings.total_ms, thumbnail=served.thumbnail, group=group)
        if group is not None and self.groups is not None:
            self.groups.add(group, result)
        if self.sink is not None or self.webhook is not None:
            line = result.model_dump_json()
            if self.sink is not None:
                self.sink.write(stream_id, line)
            if self.webhook is not None:
                self.webhook.add(line)
        return result

    async def _remote_process(self, stream_id: str, body: bytes | np.ndarray, index: int | None, ts: float | None,
                              policy: str | None, client: str, thumbnail: bool,
                              ticket: Ticket, settings: dict[str, Any] | None = None) -> Served:  # fmt: skip
        # stamped as sent (Ray may run the calls in any order): the holder lets the frames in in that order
        args = (stream_id, body, index, ts, policy, client, thumbnail, ticket.sent, settings)
        for _ in range(2):  # the second time at the worker that holds the stream, if the first did not
            worker = await self.worker(stream_id)

            def call(w: ray.actor.ActorHandle = worker) -> Any:
                self.frame_calls += 1
                ref = w.process.remote(*args)
                ticket.went()
                return ref

            try:
                return await with_retry(call, "stream worker", self.serving.fault_retry_s)
            except ray.exceptions.RayTaskError as exc:
                error = cause(exc)
                if not isinstance(error, HeldElsewhere):
                    raise error from None
                self._remember(stream_id, error.holder)
        raise Unavailable("the stream moved between workers while this frame looked for it; send it again")
