"""The checkpoint store's body (plain Python; an actor in :mod:`posefleet.actors.stream_worker`): every stream's
latest state, and the worker holding each, kept apart from the workers so both outlive them; and each group
fuser's state.

Placement: a new stream goes to the worker holding the fewest active streams (a hash of its id split 16
streams 3/5/3/5 over 4 workers), claimed by that worker before its first frame touches any state, and stays
there until it is forgotten.
"""

from __future__ import annotations

import time
from typing import Any


class CheckpointStore:
    """Latest state of every stream, and the worker holding it, kept apart from the workers so both
    outlive them. A new stream goes to the worker holding the fewest active streams: those claimed or
    checkpointed within ``active_s`` (a stream checkpoints every few frames; an idle one no longer counts),
    and those placed there whose first frame is on its way."""

    def __init__(self, active_s: float = 60.0) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}  # group -> its fuser's state
        self.holders: dict[str, int] = {}  # stream -> the worker holding it (with several workers)
        self.touched: dict[str, float] = {}  # stream -> when it was last claimed or checkpointed
        # new streams placed for a frame, not yet claimed by their worker: (worker, when); a frame that
        # never gets there (refused on the way) leaves an entry that lapses after active_s
        self.placed: dict[str, tuple[int, float]] = {}
        self.active_s = active_s

    async def put(self, stream_id: str, state: dict[str, Any]) -> None:
        self.put_many({stream_id: state})

    def put_group(self, group: str, state: dict[str, Any]) -> None:
        """A group fuser's state (its group ids, the calibrations set over the API): kept apart from the streams'."""
        self.groups[group] = state

    def group_state(self, group: str) -> dict[str, Any] | None:
        return self.groups.get(group)

    def put_many(self, states: dict[str, dict[str, Any] | None], shard: int = 0) -> None:
        """Several streams' states in one call (workers send theirs together, once a flush period); None
        deletes a stream's, and frees its place at ``shard``, the worker sending them."""
        now = time.monotonic()
        for stream_id, state in states.items():
            if state is None:
                self.states.pop(stream_id, None)
                if self.holders.get(stream_id) == shard:
                    del self.holders[stream_id]
                    self.touched.pop(stream_id, None)
            else:
                self.states[stream_id] = state
                self.holders.setdefault(stream_id, shard)  # held, though the store lost its place (restarted)
                self.touched[stream_id] = now

    def holder(self, stream_id: str, shards: int, place: bool = False, prefer: int | None = None) -> int:
        """The worker holding the stream (or where it was placed); for a new stream the worker holding the
        fewest active streams (``prefer`` among equals, else the first). ``place``: the stream goes there,
        so the frames of a new stream, looked up one after another while the load moves, meet at one worker
        (the first frame there may be waiting for its claim when the next arrives, in order)."""
        now = time.monotonic()
        since = now - self.active_s  # before this, a placement has lapsed and a stream counts as idle
        self.placed = {sid: p for sid, p in self.placed.items() if p[1] > since}
        held = self.holders.get(stream_id, self.placed.get(stream_id, (None, now))[0])
        if held is not None and held < shards:
            return held
        load = [0] * shards
        for sid, worker in self.holders.items():
            if worker < shards and self.touched.get(sid, since) > since:
                load[worker] += 1
        for worker, _ in self.placed.values():
            if worker < shards:
                load[worker] += 1
        least = min(load)
        held = prefer if prefer is not None and prefer < shards and load[prefer] == least else load.index(least)
        if place:
            self.placed[stream_id] = (held, now)
        return held

    async def claim(self, stream_id: str, shard: int = 0, shards: int = 1) -> int:
        """Worker ``shard`` is about to create the stream: its holder from now on (where it was placed, else
        this worker unless another holds fewer streams)."""
        holder = self.holders[stream_id] = self.holder(stream_id, shards, prefer=shard)
        self.touched[stream_id] = time.monotonic()
        self.placed.pop(stream_id, None)
        return holder

    def share(self, shard: int, shards: int) -> dict[str, dict[str, Any]]:
        """The states of the streams a worker holds: a restarted worker takes them all at once."""
        return {sid: st for sid, st in self.states.items() if shards == 1 or self.holders.get(sid) == shard}

    async def delete(self, stream_id: str) -> None:
        self.states.pop(stream_id, None)
        self.holders.pop(stream_id, None)
        self.touched.pop(stream_id, None)
        self.placed.pop(stream_id, None)
