"""A stream's frames in arrival order through the sender's waits, each stamped (no Ray: plain asyncio)."""

from __future__ import annotations

import asyncio
import contextlib

from posefleet.pipeline.ordering import CallOrder, Lineup


async def settle() -> None:
    """Let every task that can run, run (loop turns, not time)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_streams_frames_go_on_in_arrival_order_and_a_cancelled_one_blocks_nobody() -> None:
    async def scenario() -> tuple[list[str], dict, bool]:
        lineup, order, stamps = Lineup(), [], {}
        slot, answer = asyncio.Event(), asyncio.Event()

        async def frame(name: str, stream: str = "s", wait_for_slot: bool = False) -> None:
            async with lineup.turn(stream) as ticket:
                if wait_for_slot:
                    await slot.wait()  # a wait that ends late (a frame slot, a placement lookup)
                order.append(name)
                stamps[name] = ticket.sent
                ticket.went()  # its call is sent: the next frame may go
                if name == "a":
                    await answer.wait()  # a's answer is still out when c is sent

        first = asyncio.create_task(frame("a", wait_for_slot=True))
        gone = asyncio.create_task(frame("b"))  # behind a: cancelled while it waits
        rest = [asyncio.create_task(frame("c")), asyncio.create_task(frame("other", stream="t"))]
        await settle()
        assert order == ["other"]  # another stream does not wait; c waits for a though it could go
        gone.cancel()
        await settle()
        assert order == ["other"]  # b gave up: c still waits for a
        slot.set()
        await settle()
        assert order == ["other", "a", "c"]
        answer.set()
        await asyncio.gather(first, *rest)
        return order, stamps, not lineup.last and not lineup.unanswered

    _, stamps, emptied = asyncio.run(scenario())
    assert emptied
    assert stamps["a"].after is None and stamps["other"].after is None
    assert stamps["c"].after == stamps["a"].number  # sent while a was unanswered: its holder lets a in first


def test_the_holder_lets_a_stamped_frame_in_after_the_one_sent_before_it() -> None:
    async def scenario() -> list[int]:
        lineup, order, seen, stamps = Lineup(), CallOrder(wait_s=5.0, size=8), [], []
        async with contextlib.AsyncExitStack() as out:  # three frames sent, none answered yet
            for _ in range(3):
                ticket = await out.enter_async_context(lineup.turn("s"))
                ticket.went()
                stamps.append(ticket.sent)

            async def arrive(i: int) -> None:
                await order.wait("s", stamps[i])
                seen.append(i)
                order.went("s", stamps[i])

            await asyncio.gather(*(arrive(i) for i in (2, 0, 1)))  # Ray ran the calls in another order
        return seen

    assert asyncio.run(scenario()) == [0, 1, 2]
