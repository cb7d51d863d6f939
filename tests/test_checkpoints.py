"""The checkpoint store without Ray: where new streams go (the worker holding the fewest active ones), placements
that lapse, and each worker's share of the states after a restart."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from posefleet.pipeline.checkpoints import CheckpointStore


def test_new_streams_go_to_the_worker_holding_the_fewest() -> None:
    async def scenario() -> CheckpointStore:
        store = CheckpointStore()
        # 16 cameras, each claimed by the worker its frame reached first (here, always worker 1): a hash
        # of the names split them 3/5/3/5 over 4 workers
        for i in range(16):
            await store.claim(f"cam-{i}", 1, 4)
        assert await store.claim("cam-0", 3, 4) == store.holder("cam-0", 4)  # a held stream stays put
        return store

    store = asyncio.run(scenario())
    assert sorted(Counter(store.holders.values()).values()) == [4, 4, 4, 4]
    store.put_many({"cam-0": None}, shard=3 if store.holders["cam-0"] != 3 else 2)  # not its worker: no effect
    assert "cam-0" in store.holders
    store.put_many({"cam-0": None}, shard=store.holders["cam-0"])  # forgotten by its worker: free again
    assert "cam-0" not in store.holders


def test_idle_streams_leave_their_workers_count() -> None:
    store = CheckpointStore(active_s=0.3)
    store.put_many({"idle-1": {"last_index": 9}, "idle-2": {"last_index": 9}}, shard=0)
    assert store.holder("new", 2) == 1  # worker 0 holds two active streams
    time.sleep(0.4)  # no checkpoint from them since: idle
    store.put_many({"live": {"last_index": 9}}, shard=1)
    assert store.holder("new", 2) == 0
    assert store.holder("idle-1", 2) == 0  # still held there until forgotten


def test_a_new_stream_stays_where_it_was_placed_while_the_load_moves() -> None:
    """The ingress looks a new stream up for each of its first frames (two are in flight over a socket);
    they must all reach the worker the first lookup chose, or they arrive out of order."""
    store = CheckpointStore()
    placed = [store.holder("new", 2, place=True), store.holder("other", 2, place=True)]
    assert placed == [0, 1]  # a placed stream counts before its first frame arrives
    store.put_many({f"busy-{i}": {"last_index": 0} for i in range(3)}, shard=0)  # worker 0 is busiest now
    assert store.holder("new", 2, place=True) == 0  # the second frame's lookup
    assert asyncio.run(store.claim("new", 0, 2)) == 0  # and the worker's claim find it where it was placed
    assert "new" not in store.placed and store.holders["new"] == 0


def test_a_placement_no_frame_claims_lapses() -> None:
    store = CheckpointStore(active_s=0.3)
    assert store.holder("refused-on-the-way", 2, place=True) == 0
    assert store.holder("next", 2) == 1
    time.sleep(0.4)
    assert store.holder("next", 2) == 0 and not store.placed


def test_checkpoint_share_follows_the_holders() -> None:
    store = CheckpointStore()
    for k in range(3):
        store.put_many({f"cam-{k}-{i}": {"last_index": i} for i in range(5)}, shard=k)
    shares = [store.share(k, 3) for k in range(3)]
    assert [sorted(share) for share in shares] == [[f"cam-{k}-{i}" for i in range(5)] for k in range(3)]
    assert len(store.share(0, 1)) == 15  # a single holder takes every stream
    store.put_many({"cam-0-0": None}, shard=0)  # evicted
    assert "cam-0-0" not in store.share(0, 1)
