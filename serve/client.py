"""Client: read sources with OpenCV, send their frames to a posefleet server, several streams at once.

Each stream sends its frames in order, paced at the source's frame rate like a camera (or as fast
as the server answers with ``max_rate``), with a bounded number of unanswered frames. Results are
written as JSON lines. Three transports carry the frames: a WebSocket per stream (``ws``, the
default: the cheapest per frame), a POST per frame (``http``), or the frames of every stream gathered
into multipart POSTs (``batch``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import httpx
import numpy as np
from tqdm import tqdm

from posefleet.image_io import encode_jpeg
from posefleet.pipeline.schema import FrameResult
from posefleet.serve.senders import BatchSender, HttpSender, Sender, SocketSender
from posefleet.sources import open_source


@dataclass
class StreamReport:
    stream: str
    frames: int = 0  # answered with results
    dropped: int = 0  # answered "dropped" by the server (a newer frame superseded it)
    skipped: int = 0  # never sent: the stream's in-flight limit was full when the frame was due
    errors: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    latencies_ms: list[float] = field(default_factory=list)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (sent at s since start, latency ms)
    wall_s: float = 0.0
    people: int = 0
    ids_restarted: int = 0
    state_recovered: int = 0
    results: list[FrameResult] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def complete(self, max_rate: bool) -> bool:
        """Whether the stream got what was asked: some results, and with ``max_rate`` (every frame wanted)
        an answer with results for every frame it sent."""
        return self.frames > 0 and not (max_rate and (self.errors or self.dropped))

    def line(self) -> str:
        errs = ", ".join(f"{n}x{code or 'no answer'}" for code, n in sorted(self.errors.items())) or "none"
        return (
            f"{self.stream}: {self.frames} frames, {self.fps:.1f} FPS, "
            f"latency p50 {self.percentile(50):.0f} ms p99 {self.percentile(99):.0f} ms, "
            f"dropped {self.dropped}, skipped {self.skipped}, errors {errs}"
        )


async def _frames(spec: str, max_frames: int | None, quality: int, cycle: bool):
    """Encoded frames of a source, read in a worker thread so the event loop stays free.

    With ``cycle`` a finite source starts over (indices and timestamps keep increasing), which
    makes long streams out of short real clips.
    """
    source = open_source(spec)
    it, count, offset_i, offset_t = iter(source), 0, 0, 0.0
    last = None
    while max_frames is None or count < max_frames:
        item = await asyncio.to_thread(next, it, None)
        if item is None:
            if not cycle or last is None:
                return
            offset_i, offset_t = last.index + 1, last.timestamp + 1.0 / source.fps
            it = iter(open_source(spec))
            continue
        item.index += offset_i
        item.timestamp += offset_t
        last = item
        data = await asyncio.to_thread(encode_jpeg, item.image, quality)
        yield item, data
        count += 1


Transport = Literal["ws", "http", "batch"]
BUSY_RETRIES, BUSY_BACKOFF_S = 5, 0.5  # --max-rate: a frame refused 503 (server busy) is sent again, waiting longer
async def submit_stream(
    sender: Sender,
    stream: str,
    source_spec: str,
    *,
    max_rate: bool = False,
    fps: float | None = None,
    max_inflight: int = 1,
    max_frames: int | None = None,
    cycle: bool = False,
    quality: int = 90,
    out: IO[str] | None = None,
    keep: bool = False,
    bar: tqdm | None = None,
) -> StreamReport:
    """Post a source's frames in order. Paced (source FPS, or ``fps``) frames are sent on time like
    a camera would, with at most ``max_inflight`` unanswered; a frame due while that many are out is
    skipped. With ``max_rate`` each frame waits for a free slot instead.
    """
    report = StreamReport(stream)
    slots = asyncio.Semaphore(max_inflight)
    period = 1.0 / fps if fps else None

    async def send(index: int, timestamp: float, data: bytes) -> None:
        try:
            t0 = time.perf_counter()
            status, text = await sender.send(stream, index, timestamp, data)
            for attempt in range(BUSY_RETRIES if max_rate else 0):  # every frame wanted: a busy server is waited for
                if status != 503:
                    break
                await asyncio.sleep(BUSY_BACKOFF_S * (attempt + 1))
                status, text = await sender.send(stream, index, timestamp, data)
            if status != 200:  # 0: no answer
                report.errors[status] = report.errors.get(status, 0) + 1
                return
            result = FrameResult.model_validate_json(text)
            if result.dropped:
                report.dropped += 1
                return
            report.latencies_ms.append((time.perf_counter() - t0) * 1000)
            report.timeline.append((t0 - start, report.latencies_ms[-1]))
            report.frames += 1
            report.people += len(result.people)
            report.ids_restarted += result.ids_restarted
            report.state_recovered += result.state_recovered
            if out is not None:
                out.write(text + "\n")
            if keep:
                report.results.append(result)
        finally:
            slots.release()
            if bar is not None:
                bar.update(1)

    tasks: set[asyncio.Task] = set()
    start = time.perf_counter()
    async for frame, data in _frames(source_spec, max_frames, quality, cycle):
        due = frame.index * period if period else frame.timestamp
        if not max_rate and (delay := start + due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        if max_rate:
            await slots.acquire()
        elif slots.locked():
            report.skipped += 1
            if bar is not None:
                bar.update(1)
            continue
        else:
            await slots.acquire()
        task = asyncio.create_task(send(frame.index, due, data))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    report.wall_s = time.perf_counter() - start
    report.results.sort(key=lambda r: r.frame_index)
    return report


async def submit(
    url: str,
    jobs: list[tuple[str, str]],
    *,
    max_rate: bool = False,
    fps: float | None = None,
    max_inflight: int = 1,
    max_frames: int | None = None,
    cycle: bool = False,
    out_dir: Path | None = None,
    progress: bool = True,
    keep: bool = False,
    token: str | None = None,
    timeout_s: float = 60.0,
    transport: Transport = "ws",
) -> list[StreamReport]:
    """Send every ``(stream, source)`` job concurrently; returns one report per stream."""
    totals = []
    for _, spec in jobs:
        count = None if cycle else open_source(spec).count
        totals.append(min(count, max_frames) if count and max_frames else count or max_frames)
    total = sum(totals) if all(totals) else None
    headers = {"authorization": f"Bearer {token}"} if token else {}
    files: list[IO[str]] = []
    limits = httpx.Limits(max_connections=len(jobs) + 4, max_keepalive_connections=len(jobs) + 4)
    try:
        async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
            # every frame wanted, never more unanswered than max_inflight: frames queue, none is superseded
            policy = "wait" if max_rate else None
            if max_rate and transport == "http":
                # separate POSTs have no order on the way (the proxy may pass a later one first, and the
                # server cannot tell a late frame from a gap): one at a time keeps a stream's order
                max_inflight = 1
            sender: Sender = (
                SocketSender(url, headers, timeout_s, policy) if transport == "ws"
                else BatchSender(client, url, headers, policy) if transport == "batch"
                else HttpSender(client, url, headers, policy)
            )  # fmt: skip
            with tqdm(total=total, unit="frame", desc="submit", disable=not progress) as bar:
                tasks = []
                for stream, spec in jobs:
                    out = None
                    if out_dir is not None:
                        out_dir.mkdir(parents=True, exist_ok=True)
                        out = (out_dir / f"{stream}.jsonl").open("w")
                        files.append(out)
                    tasks.append(
                        submit_stream(
                            sender,
                            stream,
                            spec,
                            max_rate=max_rate,
                            fps=fps,
                            max_inflight=max_inflight,
                            max_frames=max_frames,
                            cycle=cycle,
                            out=out,
                            keep=keep,
                            bar=bar,
                        )
                    )
                try:
                    return list(await asyncio.gather(*tasks))
                finally:
                    await sender.close()
    finally:
        for f in files:
            f.close()


def summary(reports: list[StreamReport], wall_s: float) -> str:
    lat = [x for r in reports for x in r.latencies_ms]
    frames = sum(r.frames for r in reports)
    shed = f"dropped {sum(r.dropped for r in reports)}, skipped {sum(r.skipped for r in reports)}"
    total = (
        f"all: {len(reports)} streams, {frames} frames in {wall_s:.1f} s = {frames / wall_s:.1f} FPS, "
        f"latency p50 {np.percentile(lat, 50):.0f} ms p99 {np.percentile(lat, 99):.0f} ms, {shed}"
        if lat
        else "all: no frame was served"
    )
    return "\n".join([*(r.line() for r in reports), total])
