"""The live viewer's hub: the latest result, rates and a small thumbnail of every active stream.

Ingress replicas publish to one named hub actor (fire and forget, results only; a downscaled
JPEG at most every ``thumbnail_interval_s`` per stream); viewers long-poll it for a new version.
Streams not heard from for ``stale_after_s`` leave the snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray


@dataclass
class _View:
    latest: dict[str, Any] = field(default_factory=dict)
    served_at: collections.deque = field(default_factory=lambda: collections.deque(maxlen=600))
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    dropped: int = 0
    last_seen: float = 0.0
    thumbnail: bytes | None = None
    thumb_version: int = 0


class ViewerHub:
    def __init__(self, stale_after_s: float = 10.0, rate_window_s: float = 5.0):
        self.stale_after_s = stale_after_s
        self.rate_window_s = rate_window_s
        self.views: dict[str, _View] = {}
        self.version = 0
        self.changed = asyncio.Event()

    def _bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def publish(self, stream_id: str, result: dict[str, Any], thumbnail: bytes | None = None) -> None:
        """One answered frame of a stream (``dropped`` ones count, nothing else changes)."""
        now = time.time()
        v = self.views.setdefault(stream_id, _View())
        v.last_seen = now
        if result.get("dropped"):
            v.dropped += 1
        else:
            v.dropped += int(result.get("dropped_before", 0))
            v.latest = result
            v.served_at.append(now)
            v.latencies.append(float(result.get("timings", {}).get("total_ms", 0.0)))
        if thumbnail is not None:
            v.thumbnail = thumbnail
            v.thumb_version += 1
        self._bump()

    def forget(self, stream_id: str) -> None:
        if self.views.pop(stream_id, None) is not None:
            self._bump()

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        for sid in [s for s, v in self.views.items() if now - v.last_seen > self.stale_after_s]:
            del self.views[sid]
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
            })  # fmt: skip
        return {"version": self.version, "time": now, "streams": streams}

    async def wait(self, since: int, timeout_s: float = 5.0) -> dict[str, Any]:
        """The snapshot once the version passes ``since`` (or after ``timeout_s``, unchanged)."""
        if self.version <= since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
        return self.snapshot()

    def thumbnail(self, stream_id: str) -> bytes | None:
        v = self.views.get(stream_id)
        return None if v is None else v.thumbnail


HubActor = ray.remote(ViewerHub)


def viewer_hub(namespace: str) -> ray.actor.ActorHandle:
    return HubActor.options(  # type: ignore[attr-defined]
        name="posefleet-viewer-hub", namespace=namespace, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_restarts=-1, max_concurrency=1000,
    ).remote()  # fmt: skip
