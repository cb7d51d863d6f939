"""Client: read sources with OpenCV, send their frames to a posefleet server, several streams at once.

Each stream sends its frames in order, paced at the source's frame rate like a camera (or as fast
as the server answers with ``max_rate``), with a bounded number of unanswered frames. Results are
written as JSON lines. Three transports carry the frames: a WebSocket per stream (``ws``, the
default: the cheapest per frame), a POST per frame (``http``), or the frames of every stream gathered
into multipart POSTs (``batch``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

import httpx
import numpy as np
import websockets
from tqdm import tqdm

from posefleet.image_io import encode_jpeg
from posefleet.pipeline.schema import FrameResult
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
Answer = tuple[int, str]  # HTTP status (0: no answer) and the JSON text of a result or an error


class Sender(Protocol):
    async def send(self, stream: str, index: int, timestamp: float, data: bytes) -> Answer: ...
    async def close(self) -> None: ...


class HttpSender:
    """``POST /v1/streams/{id}/frames``, one request a frame."""

    def __init__(self, client: httpx.AsyncClient, url: str, headers: dict[str, str], policy: str | None = None):
        self.client, self.url, self.headers = client, url.rstrip("/"), headers
        self.policy = {"policy": policy} if policy else {}

    async def send(self, stream: str, index: int, timestamp: float, data: bytes) -> Answer:
        try:
            resp = await self.client.post(
                f"{self.url}/v1/streams/{stream}/frames",
                content=data,
                params={"frame_index": index, "timestamp": round(timestamp, 6), **self.policy},
                headers={"content-type": "image/jpeg", **self.headers},
            )
        except httpx.TransportError:
            return 0, ""
        return resp.status_code, resp.text

    async def close(self) -> None:
        pass


@dataclass
class _Socket:
    ws: websockets.ClientConnection
    waiting: collections.deque = field(default_factory=collections.deque)  # futures, in send order
    reader: asyncio.Task | None = None


class SocketSender:
    """``WS /v1/streams/{id}/ws``: one connection per stream; answers come back in send order."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, policy: str | None = None):
        self.url = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        self.headers, self.timeout_s = headers, timeout_s
        self.query = f"?policy={policy}" if policy else ""
        self.sockets: dict[str, _Socket] = {}
        self.opening: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    async def _socket(self, stream: str) -> _Socket:
        async with self.opening[stream]:
            sock = self.sockets.get(stream)
            if sock is None:
                ws = await websockets.connect(
                    f"{self.url}/v1/streams/{stream}/ws{self.query}", additional_headers=self.headers, max_size=2**24,
                    open_timeout=self.timeout_s, compression=None,  # JPEG does not deflate: zlib both ends for nothing
                )  # fmt: skip
                sock = self.sockets[stream] = _Socket(ws)
                sock.reader = asyncio.create_task(self._read(stream, sock))
            return sock

    async def _read(self, stream: str, sock: _Socket) -> None:
        try:
            async for message in sock.ws:
                if sock.waiting:
                    sock.waiting.popleft().set_result(message)
        except websockets.ConnectionClosed:
            pass
        finally:  # the connection is gone: what waits gets no answer, the next frame reconnects
            self.sockets.pop(stream, None)
            while sock.waiting:
                fut = sock.waiting.popleft()
                if not fut.done():
                    fut.set_result(None)

    async def send(self, stream: str, index: int, timestamp: float, data: bytes) -> Answer:
        try:
            sock = await self._socket(stream)
            fut = asyncio.get_running_loop().create_future()
            sock.waiting.append(fut)
            header = json.dumps({"frame_index": index, "timestamp": round(timestamp, 6)}).encode() + b"\n"
            await sock.ws.send(header + data)
            text = await asyncio.wait_for(fut, self.timeout_s)
        except websockets.InvalidStatus as exc:  # the handshake refused: a busy server (503) is sent again
            return exc.response.status_code, exc.response.body.decode(errors="replace") if exc.response.body else ""
        except (OSError, TimeoutError, websockets.WebSocketException):
            return 0, ""
        if text is None:
            return 0, ""
        if text.startswith('{"stream_id"') and '"error"' in text[:200]:
            return int(json.loads(text)["error"]["status"]), text
        return 200, text

    async def close(self) -> None:
        for sock in list(self.sockets.values()):
            await sock.ws.close()
            if sock.reader is not None:
                await sock.reader


class BatchSender:
    """``POST /v1/frames``: frames of every stream that are due together go in one multipart request
    (whatever queued while the previous request was out); ``concurrency`` requests at a time, but a
    stream's frames are never in two requests at once, so they reach the server in order."""

    def __init__(self, client: httpx.AsyncClient, url: str, headers: dict[str, str], policy: str | None = None,
                 max_frames: int = 64,
                 concurrency: int = 2):  # fmt: skip
        self.client, self.url, self.headers = client, url.rstrip("/"), headers
        self.params = {"policy": policy} if policy else {}
        self.max_frames = max_frames
        self.queue: collections.deque = collections.deque()
        self.slots = asyncio.Semaphore(concurrency)
        self.sending: set[str] = set()  # streams with frames in a request now
        self.tasks: set[asyncio.Task] = set()

    async def send(self, stream: str, index: int, timestamp: float, data: bytes) -> Answer:
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((stream, index, timestamp, data, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        task = asyncio.create_task(self._post())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _take(self) -> list[tuple]:
        """Queued frames of the streams not in a request now, in order, up to ``max_frames``."""
        batch, left = [], collections.deque()
        while self.queue:
            item = self.queue.popleft()
            (batch if item[0] not in self.sending and len(batch) < self.max_frames else left).append(item)
        self.queue = left
        return batch

    async def _post(self) -> None:
        async with self.slots:
            batch = self._take()
            if not batch:
                return
            streams = {item[0] for item in batch}
            self.sending |= streams
            files = [
                (stream, (f"{index}.jpg", data, "image/jpeg",
                          {"x-frame-index": str(index), "x-timestamp": f"{timestamp:.6f}"}))
                for stream, index, timestamp, data, _ in batch
            ]  # fmt: skip
            try:
                resp = await self.client.post(f"{self.url}/v1/frames", files=files, headers=self.headers,
                                              params=self.params)  # fmt: skip
            except httpx.TransportError:
                answers: list[Answer] = [(0, "")] * len(batch)
            else:
                if resp.status_code != 200:
                    answers = [(resp.status_code, resp.text)] * len(batch)
                else:
                    answers = [
                        (f["status"], json.dumps(f["result"]) if f["result"] is not None else json.dumps(f))
                        for f in resp.json()["frames"]
                    ]
            for (*_, fut), answer in zip(batch, answers, strict=True):
                fut.set_result(answer)
            self.sending -= streams
        if self.queue:  # frames held back while their stream was in this request
            self._kick()

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks)


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
