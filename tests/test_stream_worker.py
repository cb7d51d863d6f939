"""A stream worker's body without Ray, on real models and real frames: one frame in flight per
stream, order kept, overload policies, stalls recovered, checkpoints restored, streams batched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import BLAZEPOSE, video_frames
from posefleet.actors.viewer_hub import StreamUpdate, ViewerHub
from posefleet.config import PipelineConfig, load_pipeline_config
from posefleet.errors import FrameAbandoned, FrameOrderError, HeldElsewhere, ImageError, StreamBusy
from posefleet.image_io import encode_jpeg
from posefleet.pipeline.checkpoints import CheckpointStore
from posefleet.pipeline.frames import LocalModels, ModelCall
from posefleet.pipeline.model_queue import QueuedModels
from posefleet.pipeline.ordering import Sent
from posefleet.pipeline.worker import StreamWorker
from posefleet.serving_config import AdmissionConfig, CheckpointConfig, ViewerConfig


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [encode_jpeg(f) for f in video_frames("test_video_structuralize.mp4", 12)]


class SlowModels:
    """The real models behind a worker's queue, with a delay standing for a busy accelerator, a count of
    calls in flight, a call that hangs until released (a stalled frame), and ``held``: while it is not
    set, every call waits for it (the test then orders what arrives meanwhile by events, not time)."""

    def __init__(self, engine: LocalModels, delay_s: float = 0.0, held: bool = False):
        self.queue = QueuedModels(engine, {"detector": 8, "pose": 32})
        self.delay_s, self.active, self.most = delay_s, 0, 0
        self.hang: asyncio.Event | None = None  # the next call waits for it (a stalled frame)
        self.held = asyncio.Event() if held else None

    async def __call__(self, call: ModelCall) -> list:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            if self.hang is not None and not self.hang.is_set():
                hang, self.hang = self.hang, None
                await hang.wait()
            if self.held is not None:
                await self.held.wait()
            await asyncio.sleep(self.delay_s)
            return await self.queue(call)
        finally:
            self.active -= 1


async def until(condition: Callable[[], bool], turns: int = 10_000) -> None:
    """Let the other tasks run until ``condition`` holds (event-loop turns, not time)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def worker(
    engine: LocalModels, cfg: PipelineConfig | None = None, models: Any = None, **admission: Any
) -> StreamWorker:
    return StreamWorker(
        cfg or load_pipeline_config("balanced"), AdmissionConfig(**admission), models or SlowModels(engine)
    )


def test_concurrent_frames_of_a_stream_are_applied_one_after_another(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> tuple[list, int]:
        models = SlowModels(engine, delay_s=0.01)
        w = worker(engine, models=models, overload_policy="wait", max_waiting_per_stream=8)
        served = await asyncio.gather(*(w.process("s", jpegs[i], i) for i in range(5)))
        return served, models.most

    served, most = asyncio.run(scenario())
    assert [s.result.frame_index for s in served] == [0, 1, 2, 3, 4]
    assert most == 1  # never two frames of the stream in the models at once
    ids = [{p.track_id for p in s.result.people} for s in served]
    assert ids[0] and all(i == ids[0] for i in ids)


def test_frames_reaching_the_worker_out_of_order_are_let_in_as_sent(engine: LocalModels, jpegs: list) -> None:
    """Ray runs an async actor's calls in any order: five pipelined frames of a new stream, sent 0..4,
    arrive 4..0; numbered as sent, each waits for the one sent before it."""

    async def scenario() -> tuple[list, float]:
        w = worker(engine, overload_policy="wait", max_waiting_per_stream=8)
        sent = [Sent("ingress-a", 10 + i, 10 + i - 1 if i else None) for i in range(5)]
        arrivals = [w.process("s", jpegs[i], i, sent=sent[i]) for i in reversed(range(5))]
        served = await asyncio.gather(*arrivals)
        t0 = time.monotonic()  # a frame whose predecessor never comes goes on after order_wait_s
        lone = await w.process("s", jpegs[5], 5, sent=Sent("ingress-a", 20, 19))
        assert lone.result.frame_index == 5
        return sorted(s.result.frame_index for s in served), time.monotonic() - t0

    indices, waited = asyncio.run(scenario())
    assert indices == [0, 1, 2, 3, 4]  # none refused as out of order
    assert AdmissionConfig().order_wait_s <= waited < AdmissionConfig().order_wait_s + 2


def test_streams_in_flight_together_share_one_inference(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> dict:
        models = SlowModels(engine)
        w = worker(engine, models=models)
        for i in range(3):
            await asyncio.gather(*(w.process(f"cam-{k}", jpegs[i], i) for k in range(4)))
        return models.queue.stats["detector"].summary()

    stats = asyncio.run(scenario())
    # frames of several streams in one detector call (each stream has one frame in flight); how many
    # depends on when their decodes end: the first frame finds the model idle and runs alone (no timer)
    assert stats["max_requests"] >= 2


@pytest.mark.parametrize(("policy", "late_error"), [("drop_oldest", None), ("wait", FrameOrderError)])
def test_late_frame_after_a_newer_one_is_answered_by_policy(engine: LocalModels, jpegs: list, policy: str,
                                                            late_error: type | None) -> None:  # fmt: skip
    async def scenario() -> StreamWorker:
        w = worker(engine, overload_policy=policy)
        await w.process("s", jpegs[0], 5)
        if late_error is None:
            late = (await w.process("s", jpegs[1], 4)).result
            assert late.dropped and "frame 4 dropped: frame 5 came before it" in late.note
        else:
            with pytest.raises(late_error, match="out-of-order"):
                await w.process("s", jpegs[1], 4)
        with pytest.raises(FrameOrderError, match="duplicate"):  # a repeat is refused under every policy
            await w.process("s", jpegs[1], 5)
        await w.process("s", jpegs[2], 6)  # the stream goes on
        return w

    info = asyncio.run(scenario()).describe("s")
    assert info["frames"] == 2 and info["last_frame_index"] == 6
    assert info["dropped"] == (1 if policy == "drop_oldest" else 0)


def test_a_bad_image_changes_nothing(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> dict:
        w = worker(engine)
        await w.process("s", jpegs[0], 0)
        with pytest.raises(ImageError):
            await w.process("s", jpegs[1][: len(jpegs[1]) // 3], 1)
        assert (await w.process("s", jpegs[1], 1)).result.frame_index == 1  # index 1 still free
        return w.describe("s")

    assert asyncio.run(scenario())["frames"] == 2


def test_stalled_frame_is_abandoned_and_the_next_one_detects(engine: LocalModels, jpegs: list) -> None:
    top_down = load_pipeline_config("top-down", overrides=BLAZEPOSE | {"detect_every": 10})  # engine's models

    async def run() -> None:
        models = SlowModels(engine)
        w = worker(engine, top_down, models=models, frame_timeout_s=0.2)
        assert (await w.process("s", jpegs[0], 0)).result.detected
        gate = asyncio.Event()
        models.hang = gate
        stalled = asyncio.create_task(w.process("s", jpegs[1], 1))
        await until(lambda: models.active == 1)  # the stalled frame is in its model call
        nxt = await asyncio.wait_for(w.process("s", jpegs[2], 2), 10)
        assert nxt.result.detected and not stalled.done()
        gate.set()  # the stalled call returns at last: it must not touch the stream any more
        with pytest.raises(FrameAbandoned):
            await stalled
        assert w.describe("s")["last_frame_index"] == 2 and w.describe("s")["frames"] == 2

    asyncio.run(run())


def test_drop_oldest_keeps_the_newest_waiting_frame_and_reports_drops(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> list:
        models = SlowModels(engine, held=True)
        w = worker(engine, models=models)
        first = asyncio.create_task(w.process("cam", jpegs[0], 0))
        await until(lambda: models.active == 1)  # the first frame is in flight
        waiting = [asyncio.create_task(w.process("cam", jpegs[i], i)) for i in (1, 2, 3)]
        await until(lambda: w.streams["cam"].gate.dropped == 2)  # 3 arrived: 1 and 2 dropped
        models.held.set()
        return [s.result for s in await asyncio.gather(first, *waiting)]

    results = asyncio.run(scenario())
    assert [r.dropped for r in results] == [False, True, True, False]
    assert results[0].dropped_before == 2 and results[3].dropped_before == 0  # the next answer tells the client


def test_a_late_arrival_older_than_a_waiting_frame_is_the_one_dropped(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> list:
        models = SlowModels(engine, held=True)
        w = worker(engine, models=models)
        first = asyncio.create_task(w.process("cam", jpegs[0], 0))
        await until(lambda: models.active == 1)  # the first frame is in flight
        newer = asyncio.create_task(w.process("cam", jpegs[5], 5))
        await until(lambda: len(w.streams["cam"].gate.waiting) == 1)  # frame 5 waits its turn
        late = (await w.process("cam", jpegs[4], 4)).result
        models.held.set()
        assert late.dropped and "frame 5 is already waiting" in late.note
        return [s.result.frame_index for s in await asyncio.gather(first, newer)]

    assert asyncio.run(scenario()) == [0, 5]


def test_wait_policy_queues_up_to_its_bound_then_refuses(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> list:
        models = SlowModels(engine, held=True)
        w = worker(engine, models=models, overload_policy="wait", max_waiting_per_stream=2)
        first = asyncio.create_task(w.process("cam", jpegs[0], 0))
        await until(lambda: models.active == 1)  # the first frame is in flight
        queued = [asyncio.create_task(w.process("cam", jpegs[i], i)) for i in (1, 2)]
        await until(lambda: len(w.streams["cam"].gate.waiting) == 2)
        with pytest.raises(StreamBusy):
            await w.process("cam", jpegs[3], 3)
        models.held.set()
        return [s.result.frame_index for s in await asyncio.gather(first, *queued)]

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_list_reset_and_delete(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> None:
        w = worker(engine)
        for i in range(3):
            await w.process("a", jpegs[i], i)
        [info] = w.list_streams()
        assert info["stream_id"] == "a" and info["frames"] == 3 and len(info["active_tracks"]) == 2
        assert await w.reset("a") and w.describe("a")["last_frame_index"] == -1
        assert (await w.process("a", jpegs[0], 0)).result.people[0].track_id == 1  # ids start over
        assert await w.delete("a") and w.describe("a") is None and not await w.delete("a")

    asyncio.run(scenario())


def test_pictures_for_the_viewer_often_only_while_watched(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> list[bool]:
        pictures = ViewerConfig(thumbnail_interval_s=1e-6, idle_thumbnail_interval_s=3600)
        w = StreamWorker(load_pipeline_config("balanced"), AdmissionConfig(), SlowModels(engine), thumbnails=pictures)
        made = []
        for i, watched in enumerate([False, False, True, False, True]):
            served = await w.process("v", jpegs[i], i, thumbnail=watched)
            made.append(served.thumbnail is not None and served.thumbnail.startswith(b"\xff\xd8"))
        return made

    # nobody watching: one ~1.4 CPU-ms picture an idle interval (what the stream shows once it ended), no more
    assert asyncio.run(scenario()) == [True, False, True, False, True]


def test_an_ended_stream_keeps_its_last_result_and_picture_a_while() -> None:
    now = [1000.0]
    hub = ViewerHub(ended_after_s=10, keep_ended_s=60, max_ended=2, clock=lambda: now[0])
    result = {"frame_index": 7, "width": 4, "height": 4, "people": []}
    for sid in ("a", "b", "c"):
        hub.publish({sid: StreamUpdate(latest=result, served=[(now[0], 5.0)], thumbnail=b"jpeg-" + sid.encode())})
        now[0] += 1
    live = hub.snapshot()
    assert [s["ended"] for s in live["streams"]] == [False, False, False]
    now[0] += 11  # all three went quiet: ended, a change viewers are sent
    ended = hub.snapshot()
    assert ended["version"] > live["version"]
    kept = [(s["stream_id"], s["ended"], s["frame_index"]) for s in ended["streams"]]
    assert kept == [("b", True, 7), ("c", True, 7)]
    assert hub.thumbnail("c") == b"jpeg-c" and hub.latest("c")["frame_index"] == 7  # the newest max_ended stay
    hub.publish({"c": StreamUpdate(latest=result, served=[(now[0], 5.0)])})  # it came back: live again
    assert [s["ended"] for s in hub.snapshot()["streams"]] == [True, False]
    now[0] += 61
    assert hub.snapshot()["streams"] == []  # kept keep_ended_s, then gone


def test_asking_for_a_picture_counts_as_watching() -> None:
    async def scenario() -> tuple[bool, bool]:
        hub = ViewerHub()
        before = hub.watched()
        hub.thumbnail("cam")
        return before, hub.watched()

    assert asyncio.run(scenario()) == (False, True)


class Placed:
    """Worker ``shard``'s view of a shared :class:`CheckpointStore` (what the actor's checkpoints give over Ray)."""

    def __init__(self, store: CheckpointStore, shard: int, shards: int):
        self.store, self.shard, self.shards = store, shard, shards

    async def put(self, stream_id: str, state: dict) -> None:
        self.store.put_many({stream_id: state}, self.shard)

    async def delete(self, stream_id: str) -> None:
        self.store.put_many({stream_id: None}, self.shard)

    async def claim(self, stream_id: str) -> int:
        return await self.store.claim(stream_id, self.shard, self.shards)


def test_a_worker_takes_only_the_streams_placed_on_it(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> tuple:
        store, cfg, admission = CheckpointStore(), load_pipeline_config("balanced"), AdmissionConfig()
        workers = [StreamWorker(cfg, admission, SlowModels(engine), Placed(store, k, 2), shard=k) for k in range(2)]
        await workers[0].process("a", jpegs[0], 0)
        with pytest.raises(HeldElsewhere) as moved:  # worker 0 holds one stream, worker 1 none
            await workers[0].process("b", jpegs[0], 0)
        b = await workers[moved.value.holder].process("b", jpegs[0], 0)
        with pytest.raises(HeldElsewhere):  # and it stays there
            await workers[0].process("b", jpegs[1], 1)
        return moved.value.holder, b, workers

    holder, b, workers = asyncio.run(scenario())
    assert holder == 1 and b.result.frame_index == 0
    assert [[s["stream_id"] for s in w.list_streams()] for w in workers] == [["a"], ["b"]]
    assert workers[1].describe("b")["worker"] == 1


class SlowFirstClaim(Placed):
    """The first claim's answer comes back late (Ray calls' answers come back in any order)."""

    claims = 0

    async def claim(self, stream_id: str) -> int:
        self.claims += 1
        await asyncio.sleep(0.05 if self.claims == 1 else 0.0)
        return await super().claim(stream_id)


def test_a_new_streams_frames_wait_for_its_first_frames_claim(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> tuple[list, int]:
        checkpoints = SlowFirstClaim(CheckpointStore(), 0, 2)
        w = StreamWorker(load_pipeline_config("balanced"), AdmissionConfig(overload_policy="wait"), SlowModels(engine),
                         checkpoints, shard=0)  # fmt: skip
        served = await asyncio.gather(*(w.process("s", jpegs[i], i, sent=Sent("a", i, i - 1 if i else None))
                                        for i in range(3)))  # fmt: skip
        return [x.result.frame_index for x in served], checkpoints.claims

    indices, claims = asyncio.run(scenario())
    assert indices == [0, 1, 2] and claims == 1  # one claim, made by the first frame; the others after it


class ClaimAfterSecondFrame(Placed):
    """A claim whose answer comes back right after the stream's second frame arrived (a Ray answer
    arriving just then)."""

    worker: StreamWorker

    async def claim(self, stream_id: str) -> int:
        order = self.worker.order
        while order.passed.get((stream_id, "a"), -1) < 1 and (stream_id, "a", 0) not in order.waiting:
            await asyncio.sleep(0)
        return await super().claim(stream_id)


def test_a_new_streams_frames_reach_its_turnstile_as_sent_whatever_order_they_arrive(
    engine: LocalModels, jpegs: list
) -> None:
    async def scenario() -> list:
        checkpoints = ClaimAfterSecondFrame(CheckpointStore(), 0, 2)
        w = checkpoints.worker = StreamWorker(load_pipeline_config("balanced"), AdmissionConfig(overload_policy="wait"),
                                              SlowModels(engine), checkpoints, shard=0)  # fmt: skip
        sent = [Sent("a", i, i - 1 if i else None) for i in range(3)]
        tasks = {}
        arrived = {2: lambda: (("s", "a", 1) in w.order.waiting), 0: lambda: "s" in w.creating}
        for i in (2, 0, 1):  # frame 2 arrives first (waits for 1), then 0 (its claim pends), then 1
            tasks[i] = asyncio.create_task(w.process("s", jpegs[i], i, sent=sent[i]))
            if i in arrived:
                await until(arrived[i])
        return [(await tasks[i]).result.frame_index for i in range(3)]

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_restarted_worker_restores_checkpointed_streams(engine: LocalModels, jpegs: list) -> None:
    async def scenario() -> tuple:
        store = CheckpointStore()
        admission, every5 = AdmissionConfig(), CheckpointConfig(every=5)
        cfg = load_pipeline_config("balanced")
        before = StreamWorker(cfg, admission, SlowModels(engine), store, checkpointing=every5)
        for i in range(3):  # fewer frames than a checkpoint interval: the first frame's checkpoint holds
            kept = await before.process("kept", jpegs[i], i)
            await before.process("lost", jpegs[i], i)
        await store.delete("lost")  # as if its checkpoint never arrived
        after = StreamWorker(
            cfg, admission, SlowModels(engine), store, restored=store.share(0, 1), checkpointing=every5
        )
        listed = [s["stream_id"] for s in after.list_streams()]  # before any frame comes back
        back = await after.process("kept", jpegs[3], 3)
        lost = await after.process("lost", jpegs[3], 3)
        fresh = await after.process("new-stream", jpegs[0], 0)
        again = await after.process("kept", jpegs[4], 4)
        return listed, kept.result, back.result, lost.result, fresh.result, again.result

    listed, kept, back, lost, fresh, again = asyncio.run(scenario())
    assert listed == ["kept"]  # restored streams are listed at once, not when they next send
    assert back.state_recovered and not back.ids_restarted
    assert {p.track_id for p in back.people} == {p.track_id for p in kept.people}  # ids kept
    assert lost.ids_restarted and not lost.state_recovered
    assert not fresh.ids_restarted and not fresh.state_recovered
    assert not again.state_recovered  # said once
