"""The live viewer's hub: the latest result, rates and a small thumbnail of every active stream.

Ingress replicas collect their results in a ``HubFeed`` and send them to one named hub actor in
one call every ``viewer.flush_s`` (results only; a downscaled JPEG at most every
``viewer.thumbnail_interval_s`` per stream, and only while a viewer watched in the last 15 s: a picture
costs ~1.4 CPU-ms, more than a frame's Ray hop), not one call per frame; viewers long-poll the hub for a
new version. A stream not heard from for ``viewer.ended_after_s`` is marked ended and keeps its last
result and picture for ``viewer.keep_ended_s`` (the newest ``viewer.max_ended`` of them), so a clip that has
ended still shows what it showed last.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from posefleet.actors import FAULTS
from posefleet.actors.owner import ON_HEAD, actor_name
from posefleet.serving_config import ViewerConfig
from posefleet.time_match import match_by_time


@dataclass
class _View:
    latest: dict[str, Any] = field(default_factory=dict)
    served_at: collections.deque = field(default_factory=lambda: collections.deque(maxlen=600))
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    dropped: int = 0
    last_seen: float = 0.0
    ended: bool = False
    thumbnail: bytes | None = None
    thumb_version: int = 0
    group: str | None = None
    # (time, result) of recent flushes: a group's cameras are matched by time from these
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=30))


def _when(entry: tuple[float, dict[str, Any]]) -> float:
    """A result's capture time (its timestamp), else when it was served."""
    served, result = entry
    ts = result.get("timestamp")
    return float(ts) if ts is not None else served


class ViewerHub:
    def __init__(self, ended_after_s: float = 10.0, keep_ended_s: float = 600.0, max_ended: int = 32,
                 rate_window_s: float = 5.0, clock: Callable[[], float] = time.time):  # fmt: skip
        self.ended_after_s = ended_after_s
        self.keep_ended_s = keep_ended_s
        self.max_ended = max_ended
        self.rate_window_s = rate_window_s
        self.clock = clock
        self.views: dict[str, _View] = {}
        self.version = 0
        self.changed = asyncio.Event()
        self.last_viewer = float("-inf")  # monotonic time a viewer last asked for a snapshot
        self.last_prune = 0.0

    def _bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def watched(self, within_s: float = 15.0) -> bool:
        return time.monotonic() - self.last_viewer < within_s

    def publish(self, updates: dict[str, StreamUpdate]) -> bool:
        """What an ingress replica answered since its last flush, per stream; returns whether anyone watches."""
        now = self.clock()
        for stream_id, u in updates.items():
            v = self.views.setdefault(stream_id, _View())
            v.last_seen, v.ended = now, False
            v.dropped += u.dropped
            if u.group is not None:
                v.group = u.group
            if u.latest is not None:
                v.latest = u.latest
                if v.group is not None:  # only a group's cameras are matched by time: the others keep no history
                    v.history.append((now, u.latest))
            v.served_at.extend(t for t, _ in u.served)
            v.latencies.extend(ms for _, ms in u.served)
            if u.thumbnail is not None:
                v.thumbnail = u.thumbnail
                v.thumb_version += 1
        if updates:
            self._bump()
        if now - self.last_prune > self.ended_after_s:  # also when nobody watches: views stay bounded
            self._prune(now)
        return self.watched()

    def _prune(self, now: float) -> None:
        """Mark the streams that went quiet ended (a change viewers are sent), and drop the ended ones past
        ``keep_ended_s`` or beyond the newest ``max_ended``."""
        self.last_prune = now
        quiet = [v for v in self.views.values() if not v.ended and now - v.last_seen > self.ended_after_s]
        for v in quiet:
            v.ended = True
        ended = sorted((v.last_seen, sid) for sid, v in self.views.items() if v.ended)
        gone = [sid for n, (seen, sid) in enumerate(reversed(ended))
                if n >= self.max_ended or now - seen > self.keep_ended_s]  # fmt: skip
        for sid in gone:
            del self.views[sid]
        if quiet or gone:
            self._bump()

    def forget(self, stream_id: str) -> None:
        if self.views.pop(stream_id, None) is not None:
            self._bump()

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        self._prune(now)
        streams = []
        for sid in sorted(self.views):
            v = self.views[sid]
            recent = [t for t in v.served_at if now - t <= self.rate_window_s]
            span = max(now - recent[0], 1e-3) if len(recent) > 1 else self.rate_window_s
            streams.append({
                "stream_id": sid,
                "frame_index": v.latest.get("frame_index"),
                "width": v.latest.get("width"),
                "height": v.latest.get("height"),
                "people": [{"track_id": p["track_id"], "box": p["box"], "keypoints": p["keypoints"]}
                           for p in v.latest.get("people", [])],
                "fps": round(len(recent) / span, 2) if len(recent) > 1 else 0.0,
                "p99_ms": round(float(np.percentile(v.latencies, 99)), 1) if v.latencies else None,
                "dropped": v.dropped,
                "thumb_version": v.thumb_version,
                "group": v.group,
                "ended": v.ended,
                "last_seen": v.last_seen,
            })  # fmt: skip
        return {"version": self.version, "time": now, "streams": streams}

    async def wait(self, since: int, timeout_s: float = 5.0) -> dict[str, Any]:
        """The snapshot once the version passes ``since`` (or after ``timeout_s``, unchanged)."""
        self.last_viewer = time.monotonic()
        if self.version <= since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
        return self.snapshot()

    def latest(self, stream_id: str) -> dict[str, Any] | None:
        v = self.views.get(stream_id)
        return None if v is None or not v.latest else v.latest | {"stream_id": stream_id}

    def group(self, group: str) -> dict[str, Any] | None:
        """The latest results of every camera of ``group``, aligned by time (:func:`match_by_time`)."""
        views = {sid: v.history for sid, v in sorted(self.views.items()) if v.group == group and v.history}
        if not views:
            return None
        reference, nearest = match_by_time(views, _when)
        cameras = [{"stream_id": sid, "skew_ms": round((_when(entry) - reference) * 1000.0, 1), "result": entry[1]}
                   for sid, entry in nearest.items()]  # fmt: skip
        return {"group": group, "time": reference, "cameras": cameras}

    def thumbnail(self, stream_id: str) -> bytes | None:
        """The stream's picture; asking counts as watching (pictures are made only while someone watches)."""
        self.last_viewer = time.monotonic()
        v = self.views.get(stream_id)
        return None if v is None else v.thumbnail


@dataclass
class StreamUpdate:
    """A stream's results since the last flush: the newest, when each was served and how long it took."""

    latest: dict[str, Any] | None = None
    served: list[tuple[float, float]] = field(default_factory=list)  # (unix time, total ms)
    dropped: int = 0
    thumbnail: bytes | None = None
    group: str | None = None


class HubFeed:
    """An ingress replica's side of the hub: results gathered here, sent in one call per flush."""

    def __init__(self, hub: Any, flush_s: float, render: Callable[[Any], dict[str, Any]] = dict,
                 idle_flush_s: float = 2.0):  # fmt: skip
        self.hub = hub
        self.flush_s = flush_s
        self.idle_flush_s = idle_flush_s  # while no viewer watches: the stream list stays fresh, cheaply
        self.watched = True
        self.render = render  # a result -> what the hub keeps; run only for the newest of each flush
        self.pending: dict[str, StreamUpdate] = {}
        self._flush: asyncio.Task | None = None
        self.calls = 0  # Ray calls made (for the bench's calls-per-frame)

    def add(
        self, stream_id: str, latest: Any = None, total_ms: float = 0.0, dropped: int = 0,
        thumbnail: bytes | None = None, group: str | None = None,
    ) -> None:  # fmt: skip
        """Record an answered frame (``latest``) and/or dropped frames; call from the event loop."""
        u = self.pending.setdefault(stream_id, StreamUpdate())
        if group is not None:
            u.group = group
        if latest is not None:
            u.latest = latest
            u.served.append((time.time(), total_ms))
        u.dropped += dropped
        if thumbnail is not None:
            u.thumbnail = thumbnail
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_s if self.watched else self.idle_flush_s)
        updates, self.pending = self.pending, {}
        for u in updates.values():
            if u.latest is not None:
                u.latest = self.render(u.latest)
        if updates:
            self.calls += 1
            with contextlib.suppress(*FAULTS):
                self.watched = await self.hub.publish.remote(updates)

    def forget(self, stream_id: str) -> None:
        self.pending.pop(stream_id, None)
        self.hub.forget.remote(stream_id)


HubActor = ray.remote(ViewerHub)


def viewer_hub(deploy_id: str, namespace: str, viewer: ViewerConfig) -> ray.actor.ActorHandle:
    """The deploy's hub (get or create), shared by its ingress replicas."""
    return HubActor.options(  # type: ignore[attr-defined]
        name=actor_name(deploy_id, "viewer-hub"), namespace=namespace, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_restarts=-1, max_concurrency=1000, **ON_HEAD,
    ).remote(viewer.ended_after_s, viewer.keep_ended_s, viewer.max_ended)  # fmt: skip
