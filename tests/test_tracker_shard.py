"""The tracker actor's body without Ray: one frame in flight per stream, order kept, stalls recovered."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from posefleet.actors.tracker import FrameOrderError
from posefleet.actors.tracker_actor import FrameNotInFlight, TrackerShard, shard_of
from posefleet.config import PipelineConfig

BOX = np.array([[100, 100, 160, 260]], np.float32)


def kps() -> np.ndarray:
    xs, ys = np.linspace(105, 155, 17), np.linspace(105, 255, 17)
    return np.column_stack([xs, ys, np.full(17, 0.9)])[None].astype(np.float32)


async def one_frame(shard: TrackerShard, stream: str, index: int, log: list, work_s: float = 0.0) -> None:
    plan = await shard.plan(stream, index)
    log.append(("plan", index))
    if plan.detect:
        plan = shard.associate(stream, plan, BOX, np.array([0.8], np.float32))
    await asyncio.sleep(work_s)  # detector/pose round trips
    shard.finish(stream, plan, kps()[: len(plan.boxes)], np.full(len(plan.boxes), 0.9, np.float32), None)
    log.append(("finish", index))


def test_concurrent_frames_of_a_stream_are_applied_one_after_another() -> None:
    async def scenario() -> list:
        shard, log = TrackerShard(PipelineConfig()), []
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


def test_late_frame_is_refused_after_a_newer_one() -> None:
    async def scenario() -> None:
        shard = TrackerShard(PipelineConfig())
        await one_frame(shard, "s", 5, [])
        with pytest.raises(FrameOrderError, match="out-of-order"):
            await shard.plan("s", 4)
        await one_frame(shard, "s", 6, [])  # the stream goes on

    asyncio.run(scenario())


def test_stalled_frame_is_abandoned_and_forces_a_detection() -> None:
    async def scenario() -> None:
        shard = TrackerShard(PipelineConfig(detect_every=10), frame_timeout_s=0.1)
        await one_frame(shard, "s", 0, [])
        stalled = await shard.plan("s", 1)  # its request dies: never finishes
        assert not stalled.detect
        plan = await shard.plan("s", 2)  # waits frame_timeout_s, then takes over
        assert plan.detect
        with pytest.raises(FrameNotInFlight):
            shard.finish("s", stalled, kps(), np.array([0.9], np.float32), None)

    asyncio.run(scenario())


def test_abort_frees_the_stream_at_once() -> None:
    async def scenario() -> None:
        shard = TrackerShard(PipelineConfig(detect_every=10), frame_timeout_s=30)
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
        assert shard.reset("a") and shard.describe("a")["last_frame_index"] == -1
        assert shard.delete("a") and shard.describe("a") is None and not shard.delete("a")

    asyncio.run(scenario())


def test_shard_of_is_stable_and_spreads() -> None:
    assert shard_of("court-1-cam-3", 8) == shard_of("court-1-cam-3", 8)
    assert len({shard_of(f"cam-{i}", 4) for i in range(40)}) == 4
