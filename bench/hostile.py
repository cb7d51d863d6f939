"""The hostile-client figure (``python -m bench.overload --hostile``): the attacks of
:mod:`posefleet.serve.attacks` from processes of their own while a victim camera streams, and stream-id churn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import cv2
import httpx
import numpy as np

from posefleet.image_io import encode_jpeg
from posefleet.serve.attacks import (
    Statuses,
    Victim,
    auth,
    many_streams,
    pathological,
    pathological_bodies,
    slow_uploaders,
    victim_frame,
    viewers,
)

# -- the figure: python -m bench.overload --hostile ------------------------------------------------------
VICTIM_TOKEN, ATTACKER_TOKEN = "bench-victim", "bench-attacker"


async def _repeat(attack: Callable[[], Awaitable[Statuses]], until: float) -> Statuses:
    """An attack over and over until ``until`` (a refused attacker comes straight back)."""
    got: Statuses = Statuses()
    while time.perf_counter() < until:
        got += await attack()
    return got


def _attack(name: str, url: str, seconds: float, n: int, token: str, link_mb_s: float | None = None) -> dict:
    """One attack, run in a process of its own (the victim's latency is the server's, not the attackers'
    event loop pushing megabytes)."""
    until = time.perf_counter() + seconds

    def left() -> float:
        return max(1.0, until - time.perf_counter())

    attacks: dict[str, Callable[[], Awaitable[Statuses]]] = {
        "viewers": lambda: _repeat(lambda: viewers(url, n, left(), token), until),
        "slow_uploaders": lambda: _repeat(lambda: slow_uploaders(url, n, min(30.0, left()), token), until),
        "pathological": lambda: pathological(url, n, seconds, token, link_mb_s=link_mb_s),
    }
    return dict(asyncio.run(attacks[name]()))


async def hostile_mix(url: str, seconds: float, viewers_n: int = 200, uploaders_n: int = 100,
                      senders_n: int = 4, link_mb_s: float | None = None) -> dict:  # fmt: skip
    """The victim at 10 FPS while ``viewers_n`` viewers, ``uploaders_n`` slow uploaders and ``senders_n``
    senders of pathological bodies (over a ``link_mb_s`` link, or loopback) keep at it for ``seconds``, each
    attack from a process of its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    frame = victim_frame()
    loop = asyncio.get_running_loop()
    plan = {"viewers": viewers_n, "slow_uploaders": uploaders_n, "pathological": senders_n}
    with ProcessPoolExecutor(len(plan), mp_context=multiprocessing.get_context("spawn")) as pool:
        # the attackers' processes start (imports, bodies built) before the victim's clock runs
        await asyncio.gather(*(loop.run_in_executor(pool, pathological_bodies) for _ in plan))
        stop = asyncio.Event()
        victim = Victim(url, frame, token=VICTIM_TOKEN)
        task = asyncio.create_task(victim.run(stop))
        await asyncio.sleep(2.0)
        got = await asyncio.gather(*(
            loop.run_in_executor(pool, _attack, name, url, seconds, n, ATTACKER_TOKEN, link_mb_s)
            for name, n in plan.items()
        ))  # fmt: skip
        stop.set()
        await task
    return {"link_mb_s": link_mb_s, "victim": victim.summary(), **dict(zip(plan, got, strict=True))}


async def churn(url: str, ids: int, idle_s: float, rss: Callable[[], float]) -> dict:
    """``ids`` new stream ids, one small frame each, then wait for their eviction: RSS before, at the peak
    and after (all processes of the server)."""
    from tqdm import tqdm

    small = encode_jpeg(cv2.resize(cv2.imdecode(np.frombuffer(victim_frame(), np.uint8), cv2.IMREAD_COLOR), (96, 64)))
    await many_streams(url, 64, small, VICTIM_TOKEN, prefix="warm")  # sessions and pools warmed first
    await asyncio.sleep(idle_s * 2 + 1)
    start_mb, peak_mb = rss(), 0.0
    got: Statuses = Statuses()
    step = 2048
    t0 = time.perf_counter()
    with tqdm(total=ids, desc="stream ids", unit="id") as bar:
        for first in range(0, ids, step):
            n = min(step, ids - first)
            # 2 x 24 frames at a time: within the ingress's frames in flight (48), so none is refused for that
            got += await many_streams(url, n, small, VICTIM_TOKEN, 24, f"churn{first}", concurrency=2)
            bar.update(n)
            peak_mb = max(peak_mb, rss())
    sent_s = time.perf_counter() - t0
    await asyncio.sleep(idle_s * 2 + 1)  # every id idle: evicted by the sweeper
    async with httpx.AsyncClient(headers=auth(VICTIM_TOKEN), timeout=30) as client:
        left = len((await client.get(f"{url}/v1/streams", params={"limit": 100})).json()["streams"])
    end_mb = rss()
    return {"ids": ids, "statuses": dict(got), "ids_per_s": round(ids / sent_s, 1), "streams_left": left,
            "rss_start_mb": round(start_mb), "rss_peak_mb": round(peak_mb), "rss_end_mb": round(end_mb),
            "rss_end_minus_start_mb": round(end_mb - start_mb)}  # fmt: skip
