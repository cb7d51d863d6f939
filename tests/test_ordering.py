"""A stream's frames in arrival order through the ingress's waits (no Ray: plain asyncio)."""

from __future__ import annotations

import asyncio

from posefleet.pipeline.ordering import Lineup


def test_a_streams_frames_go_on_in_arrival_order_and_a_cancelled_one_blocks_nobody() -> None:
    async def scenario() -> tuple[list[str], bool]:
        lineup, order, slot = Lineup(), [], asyncio.Event()

        async def frame(name: str, stream: str = "s", wait_for_slot: bool = False) -> None:
            async with lineup.turn(stream) as went:
                if wait_for_slot:
                    await slot.wait()  # a wait that ends late (a frame slot, a placement lookup)
                order.append(name)
                went()

        first = asyncio.create_task(frame("a", wait_for_slot=True))
        gone = asyncio.create_task(frame("b"))  # behind a: cancelled while it waits
        rest = [asyncio.create_task(frame("c")), asyncio.create_task(frame("other", stream="t"))]
        await asyncio.sleep(0.05)
        assert order == ["other"]  # another stream does not wait; c waits for a though it could go
        gone.cancel()
        await asyncio.sleep(0.05)
        assert order == ["other"]  # b gave up: c still waits for a
        slot.set()
        await asyncio.gather(first, *rest)
        return order, not lineup.last

    order, emptied = asyncio.run(scenario())
    assert order == ["other", "a", "c"] and emptied
