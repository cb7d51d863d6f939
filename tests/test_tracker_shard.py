"""The tracker actor's body without Ray: one frame in flight per stream, order kept, stalls recovered."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from posefleet.actors.tracker_actor import (
    CheckpointStore,
    FrameDropped,
    FrameNotInFlight,
    FrameOutcome,
    StreamBusy,
    TrackerShard,
    shard_of,
)
from posefleet.config import PipelineConfig
from posefleet.pipeline.tracker import FrameOrderError

BOX = np.array([[100, 100, 160, 260]], np.float32)


def kps() -> np.ndarray:
    xs, ys = np.linspace(105, 155, 17), np.linspace(105, 255, 17)
    return np.column_stack([xs, ys, np.full(17, 0.9)])[None].astype(np.float32)


async def one_frame(shard: TrackerShard, stream: str, index: int, log: list, work_s: float = 0.0) -> FrameOutcome:
    plan = await shard.plan(stream, index)
    log.append(("plan", index))
    if plan.detect:
        plan = shard.associate(stream, plan, BOX, np.array([0.8], np.float32))
    await asyncio.sleep(work_s)  # detector/pose round trips
    out = await shard.finish(stream, plan, kps()[: len(plan.boxes)], np.full(len(plan.boxes), 0.9, np.float32), None)
    log.append(("finish", index))
    return out


def test_concurrent_frames_of_a_stream_are_applied_one_after_another() -> None:
    async def scenario() -> list:
        shard, log = TrackerShard(PipelineConfig(), policy="wait", max_waiting=8), []
        await asyncio.gather(*(one_frame(shard, "s", i, log, work_s=0.01) for i in range(5)))
        return log

    log = asyncio.run(scenario())
    assert log == [(step, i) for i in range(5) for step in ("plan", "finish")]


def test_other_streams_do_not_wait() -> None:
    async def scenario() -> list:
        shard, log = TrackerShard(PipelineConfig()), []
        slow = asyncio.create_task(one_frame(shard, "slow", 0, log, work_s=0.2))
        await asyncio.sleep(0.01)
        await one_frame(shard, "fast", 0, log)
        await slow
        return log

    assert asyncio.run(scenario()) == [("plan", 0), ("plan", 0), ("finish", 0), ("finish", 0)]


@pytest.mark.parametrize(
    ("policy", "late_error", "late_match"),
    [
        ("drop_oldest", FrameDropped, "frame 4 dropped: frame 5 came before it"),
        ("wait", FrameOrderError, "out-of-order"),
    ],
)
def test_late_frame_after_a_newer_one_is_answered_by_policy(policy: str, late_error: type, late_match: str) -> None:
    async def scenario() -> TrackerShard:
        shard = TrackerShard(PipelineConfig(), policy=policy)
        await one_frame(shard, "s", 5, [])
        with pytest.raises(late_error, match=late_match):
            await shard.plan("s", 4)
        with pytest.raises(FrameOrderError, match="duplicate"):  # a repeat is refused under every policy
            await shard.plan("s", 5)
        await one_frame(shard, "s", 6, [])  # the stream goes on
        return shard

    info = asyncio.run(scenario()).describe("s")
    assert info["frames"] == 2 and info["last_frame_index"] == 6
    assert info["dropped"] == (1 if policy == "drop_oldest" else 0)


def test_stalled_frame_is_abandoned_and_forces_a_detection() -> None:
    async def scenario() -> None:
        shard = TrackerShard(PipelineConfig(pose_source="top-down", detect_every=10), frame_timeout_s=0.1)
        await one_frame(shard, "s", 0, [])
        stalled = await shard.plan("s", 1)  # its request dies: never finishes
        assert not stalled.detect
        plan = await shard.plan("s", 2)  # waits frame_timeout_s, then takes over
        assert plan.detect
        with pytest.raises(FrameNotInFlight):
            await shard.finish("s", stalled, kps(), np.array([0.9], np.float32), None)

    asyncio.run(scenario())


def test_abort_frees_the_stream_at_once() -> None:
    async def scenario() -> None:
        shard = TrackerShard(PipelineConfig(pose_source="top-down", detect_every=10), frame_timeout_s=30)
        await one_frame(shard, "s", 0, [])
        plan = await shard.plan("s", 1)
        shard.abort("s", plan.frame_index)
        assert (await asyncio.wait_for(shard.plan("s", 2), 1.0)).detect

    asyncio.run(scenario())


def test_list_reset_delete_and_state_transfer() -> None:
    async def scenario() -> None:
        shard = TrackerShard(PipelineConfig())
        for i in range(3):
            await one_frame(shard, "a", i, [])
        [info] = shard.list_streams()
        assert info["stream_id"] == "a" and info["frames"] == 3 and info["active_tracks"] == [1]
        other = TrackerShard(PipelineConfig())
        other.import_state("a", shard.export_state("a"))
        assert other.describe("a")["last_frame_index"] == 2
        assert await shard.reset("a") and shard.describe("a")["last_frame_index"] == -1
        assert await shard.delete("a") and shard.describe("a") is None and not await shard.delete("a")

    asyncio.run(scenario())


def test_shard_of_is_stable_and_spreads() -> None:
    assert shard_of("court-1-cam-3", 8) == shard_of("court-1-cam-3", 8)
    assert len({shard_of(f"cam-{i}", 4) for i in range(40)}) == 4


def test_drop_oldest_keeps_the_newest_waiting_frame_and_reports_drops() -> None:
    async def scenario() -> tuple[list, list]:
        shard, log = TrackerShard(PipelineConfig(), policy="drop_oldest"), []
        first = asyncio.create_task(one_frame(shard, "cam", 0, log, work_s=0.1))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(one_frame(shard, "cam", i, log)) for i in (1, 2, 3)]
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        return log, results

    log, results = asyncio.run(scenario())
    assert [type(r).__name__ for r in results[1:3]] == ["FrameDropped", "FrameDropped"]
    assert log == [("plan", 0), ("finish", 0), ("plan", 3), ("finish", 3)]
    assert results[0].dropped_before == 2  # the next answer of the stream tells the client
    assert results[3].dropped_before == 0


def test_a_late_arrival_older_than_a_waiting_frame_is_the_one_dropped() -> None:
    async def scenario() -> list:
        shard, log = TrackerShard(PipelineConfig()), []
        first = asyncio.create_task(one_frame(shard, "cam", 0, log, work_s=0.1))
        await asyncio.sleep(0.01)
        newer = asyncio.create_task(one_frame(shard, "cam", 5, log))
        await asyncio.sleep(0.01)
        with pytest.raises(FrameDropped, match="frame 5 is already waiting"):
            await one_frame(shard, "cam", 4, log)
        await asyncio.gather(first, newer)
        return log

    assert asyncio.run(scenario())[-1] == ("finish", 5)


def test_wait_policy_queues_up_to_its_bound_then_refuses() -> None:
    async def scenario() -> list:
        shard, log = TrackerShard(PipelineConfig(), policy="wait", max_waiting=2), []
        first = asyncio.create_task(one_frame(shard, "cam", 0, log, work_s=0.1))
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(one_frame(shard, "cam", i, log)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(StreamBusy):
            await one_frame(shard, "cam", 3, log)
        await asyncio.gather(first, *queued)
        return log

    log = asyncio.run(scenario())
    assert [e for e in log if e[0] == "finish"] == [("finish", 0), ("finish", 1), ("finish", 2)]


def test_restarted_shard_restores_checkpointed_streams() -> None:
    async def scenario() -> tuple:
        store = CheckpointStore()
        before = TrackerShard(PipelineConfig(), checkpoints=store, checkpoint_every=5)
        for i in range(10):
            await one_frame(before, "kept", i, [])
        for i in range(3):  # fewer frames than a checkpoint interval
            await one_frame(before, "unsaved", i, [])
        after = TrackerShard(PipelineConfig(), checkpoints=store, checkpoint_every=5, restarted=True)
        kept = await one_frame(after, "kept", 10, [])
        lost = await one_frame(after, "unsaved", 3, [])
        fresh = await one_frame(after, "new-stream", 0, [])
        again = await one_frame(after, "kept", 11, [])
        return kept, lost, fresh, again

    kept, lost, fresh, again = asyncio.run(scenario())
    assert kept.state_recovered and not kept.ids_restarted and [p.track_id for p in kept.people] == [1]
    assert lost.ids_restarted and not lost.state_recovered
    assert not fresh.ids_restarted and not fresh.state_recovered
    assert not again.state_recovered  # said once
