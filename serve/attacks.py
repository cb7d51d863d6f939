"""Hostile and unlucky clients against a running posefleet server, beside a victim stream: what checks that a
deployment holds its caps and bounds (the hostile-client tests, ``tests/test_hostile.py``, and the bench's
``python -m bench.overload --hostile``, ``bench/hostile.py``).

Each attack returns what the attacker got (HTTP statuses, 0 for no answer); the :class:`Victim` records
what an honest 10 FPS camera got meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import struct
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np

from posefleet.image_io import encode_jpeg

Statuses = collections.Counter


def auth(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@dataclass
class Victim:
    """An honest camera: one frame every ``1/fps`` s by POST, its index counting up; never more than one
    unanswered (a frame due meanwhile is skipped, as a camera would)."""

    url: str
    frame: bytes
    stream: str = "victim"
    fps: float = 10.0
    token: str | None = None
    latencies_ms: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # seconds since the victim started
    statuses: Statuses = field(default_factory=Statuses)
    skipped: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        period = 1.0 / self.fps
        index = 0
        start = time.perf_counter()
        async with httpx.AsyncClient(timeout=30, headers=auth(self.token)) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    resp = await client.post(
                        f"{self.url}/v1/streams/{self.stream}/frames", content=self.frame,
                        params={"frame_index": index}, headers={"content-type": "image/jpeg"},
                    )  # fmt: skip
                    self.statuses[resp.status_code] += 1
                except httpx.HTTPError:
                    self.statuses[0] += 1
                self.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
                self.sent_at.append(t0 - start)
                index += 1
                next_at = start + index * period
                while next_at < time.perf_counter():  # late: skip the frames that were due meanwhile
                    index, next_at, self.skipped = index + 1, next_at + period, self.skipped + 1
                with_stop = asyncio.ensure_future(stop.wait())
                await asyncio.wait({with_stop}, timeout=next_at - time.perf_counter())
                with_stop.cancel()

    def _windows(self, width_s: float) -> dict[str, float]:
        by: dict[int, list[float]] = collections.defaultdict(list)
        for t, ms in zip(self.sent_at, self.latencies_ms, strict=True):
            by[int(t // width_s)].append(ms)
        return {f"{k * width_s:g}-{(k + 1) * width_s:g}s": round(float(np.percentile(v, 99)), 1)
                for k, v in sorted(by.items())}  # fmt: skip

    def summary(self) -> dict[str, float | int | dict]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "frames": len(self.latencies_ms),
            "errors": sum(n for s, n in self.statuses.items() if s != 200),
            "statuses": dict(self.statuses),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1),
            "skipped": self.skipped,
            "p99_ms_per_5s": self._windows(5.0),
        }


def victim_frame(shape: tuple[int, int] = (240, 426)) -> bytes:
    """A small real-looking frame (the test clip's first, else grey) for the victim and the stream flood."""
    from pathlib import Path

    cap = cv2.VideoCapture(
        str(Path(__file__).resolve().parent.parent / "tests" / "data" / "test_video_structuralize.mp4")
    )
    ok, frame = cap.read()
    cap.release()
    return encode_jpeg(frame if ok else np.full((*shape, 3), 128, np.uint8))


# -- attacks ----------------------------------------------------------------------------------------
async def viewers(url: str, n: int, hold_s: float, token: str | None = None) -> Statuses:
    """``n`` viewers opening ``GET /v1/events`` at once and holding them ``hold_s``."""
    got: Statuses = Statuses()

    async def one(client: httpx.AsyncClient) -> None:
        try:
            async with client.stream("GET", f"{url}/v1/events", headers=auth(token)) as resp:
                # a refusal must say when to come back: -503 counts those that do not
                retry = resp.status_code != 503 or resp.headers.get("retry-after")
                got[resp.status_code if retry else -503] += 1
                if resp.status_code == 200:
                    with_timeout = asyncio.ensure_future(resp.aread())
                    await asyncio.wait({with_timeout}, timeout=hold_s)
                    with_timeout.cancel()
        except httpx.HTTPError:
            got[0] += 1

    limits = httpx.Limits(max_connections=n + 10)
    async with httpx.AsyncClient(timeout=hold_s + 30, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(n)))
    return got


async def _raw_request(url: str, head: bytes, body_parts: list[bytes], gap_s: float, wait_s: float) -> int:
    """Send a request head, then its body in parts ``gap_s`` apart; the status of the answer (0: none
    within ``wait_s`` after the last part, or the connection was cut)."""
    parts = urlsplit(url)
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except OSError:
        return 0
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head)
        await writer.drain()
        for part in body_parts:
            done, _ = await asyncio.wait({answer}, timeout=gap_s)
            if done:
                break  # answered (refused) before the body was all sent
            writer.write(part)
            await writer.drain()
        done, _ = await asyncio.wait({answer}, timeout=wait_s)
        line = answer.result() if done else b""
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, ValueError, IndexError):
        return 0
    finally:
        answer.cancel()
        writer.close()


def _post_head(url: str, path: str, length: int, token: str | None, ctype: str = "image/jpeg") -> bytes:
    host = urlsplit(url).netloc
    extra = "".join(f"{k}: {v}\r\n" for k, v in auth(token).items())
    return (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {ctype}\r\ncontent-length: {length}\r\n"
            f"{extra}\r\n").encode()  # fmt: skip


async def slow_uploaders(url: str, n: int, seconds: float, token: str | None = None) -> Statuses:
    """``n`` uploads of a declared 100 KB frame: a JPEG's first bytes, then one byte a second for ``seconds``."""
    head = _post_head(url, "/v1/streams/slow/frames", 100_000, token)
    start = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    got = await asyncio.gather(*(
        _raw_request(url, head, [start] + [b"\x00"] * int(seconds), 1.0, 30.0) for _ in range(n)
    ))  # fmt: skip
    return Statuses(got)


async def lying_lengths(url: str, n: int, token: str | None = None) -> Statuses:
    """``n`` requests declaring a 1 MB body and sending 10 bytes, then waiting for an answer."""
    head = _post_head(url, "/v1/streams/liar/frames", 1_000_000, token)
    got = await asyncio.gather(*(_raw_request(url, head, [b"\xff\xd8\xff" + bytes(7)], 0.0, 60.0) for _ in range(n)))
    return Statuses(got)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 6300) -> bytes:
    """A small PNG that decodes to ``side`` x ``side`` (about 116 KB at 6300): legal bytes, huge pixels."""
    row = b"\x00" + bytes(side * 3)
    raw = zlib.compress(row * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")


def pathological_bodies(max_body: int = 20_000_000) -> list[tuple[str, bytes]]:
    """Bodies meant to cost the server: header scans over megabytes, bombs, truncations, an over-size body
    (each refused: a legal 4K frame is load, not an attack)."""
    big = min(max_body - 1, 19_000_000)
    camera_4k = encode_jpeg(np.full((2160, 3840, 3), 90, np.uint8), 80)
    return [
        ("ff-bytes", b"\xff" * big),
        ("jpeg-fill-run", b"\xff\xd8" + b"\xff" * big),
        ("jpeg-empty-segments", b"\xff\xd8" + b"\xff\xe0\x00\x02" * (big // 4) + b"\xff\xd9"),
        ("png-bomb", bomb_png()),
        ("truncated-jpeg", camera_4k[: len(camera_4k) // 2]),
        ("over-size", bytes(max_body + 1)),
    ]


async def pathological(url: str, senders: int, seconds: float, token: str | None = None,
                       max_body: int = 20_000_000, link_mb_s: float | None = None) -> Statuses:  # fmt: skip
    """``senders`` clients posting :func:`pathological_bodies` in turn for ``seconds``: back to back, or
    sharing a link of ``link_mb_s`` MB/s (a remote attacker's bytes arrive no faster than its link)."""
    bodies = pathological_bodies(max_body)
    got: Statuses = Statuses()
    start = time.perf_counter()
    stop_at = start + seconds

    async def sender(k: int) -> None:
        i, sent = k, 0
        async with httpx.AsyncClient(timeout=60, headers=auth(token)) as client:
            while time.perf_counter() < stop_at:
                _, body = bodies[i % len(bodies)]
                if link_mb_s:  # this sender's share of the link: wait until its bytes so far have passed
                    sent += len(body)
                    await asyncio.sleep(max(0.0, start + sent / (link_mb_s * 1e6 / senders) - time.perf_counter()))
                try:
                    resp = await client.post(f"{url}/v1/streams/patho-{k}/frames", content=body,
                                             headers={"content-type": "image/jpeg"})  # fmt: skip
                    got[resp.status_code] += 1
                except httpx.HTTPError:
                    got[0] += 1
                i += 1

    await asyncio.gather(*(sender(k) for k in range(senders)))
    return got


async def many_streams(url: str, n: int, frame: bytes, token: str | None = None, per_request: int = 32,
                       prefix: str = "flood", concurrency: int = 4) -> Statuses:  # fmt: skip
    """One frame each for ``n`` new stream ids, ``per_request`` to a ``POST /v1/frames``, ``concurrency``
    requests at a time; the statuses are per frame."""
    got: Statuses = Statuses()
    slots = asyncio.Semaphore(concurrency)

    async def batch(client: httpx.AsyncClient, first: int) -> None:
        files = [
            (f"{prefix}-{i}", (f"{i}.jpg", frame, "image/jpeg")) for i in range(first, min(n, first + per_request))
        ]
        async with slots:
            try:
                resp = await client.post(f"{url}/v1/frames", files=files)
            except httpx.HTTPError:
                got[0] += len(files)
                return
        if resp.status_code != 200:
            got[resp.status_code] += len(files)
            return
        for answer in resp.json()["frames"]:
            got[answer["status"]] += 1

    async with httpx.AsyncClient(timeout=120, headers=auth(token)) as client:
        await asyncio.gather(*(batch(client, first) for first in range(0, n, per_request)))
    return got


async def quitters(url: str, n: int, frame: bytes, token: str | None = None) -> int:
    """``n`` clients that go away with their frames in flight: POSTs given up after 5 ms, WebSockets closed
    right after sending a few frames (the server must finish or drop them quietly). Returns how many went."""
    import websockets

    async def post(client: httpx.AsyncClient, k: int) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await client.post(f"{url}/v1/streams/quit-{k}/frames", content=frame,
                              headers={"content-type": "image/jpeg"}, timeout=0.005)  # fmt: skip

    async def socket(k: int) -> None:
        ws_url = url.replace("http://", "ws://") + f"/v1/streams/quit-ws-{k}/ws"
        with contextlib.suppress(OSError, websockets.WebSocketException):
            async with websockets.connect(ws_url, additional_headers=auth(token)) as ws:
                for _ in range(4):
                    await ws.send(frame)

    async with httpx.AsyncClient(headers=auth(token)) as client:
        await asyncio.gather(*(post(client, k) for k in range(n)), *(socket(k) for k in range(n)))
    return 2 * n


# -- fuzz ----------------------------------------------------------------------------------------------
INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**53 - 1, 2**53, 2**63, -(2**63), int("1" + "0" * 40)]
FLOATS = ["0", "-0", "1e12", "-1e12", "1.0000001e12", "1e300", "-1e300", "nan", "inf", "-inf", "1e-320", "x", ""]
# the longest string keeps a request's head (a path and three query values of it) under the front proxy's
# buffer (HAProxy 16 KB, nginx 8 KB), which refuses a longer head before any handler (a test checks that)
STRINGS = ["a", "A" * 64, "A" * 65, "", ".", "-a", "a b", "%00", "ü", "../x", "a" * 1_500, "*", "{}"]


def fuzz_requests(n: int, frame: bytes, seed: int = 0) -> list[tuple[str, str, dict]]:
    """``n`` requests (method, path, httpx kwargs) over every route and transport parameter, each value
    drawn from the boundary values above (and a few bodies and content types that are wrong)."""
    rnd = random.Random(seed)
    junk = [*INTS, *FLOATS, *STRINGS]
    valid = {"frame_index": [0, 1, 2, 7, 2**53 - 1], "timestamp": ["0", "1.5", "-1e12", "1e12"],
             "policy": ["wait", "drop_oldest"]}  # fmt: skip

    def draw(name: str) -> object:  # omitted, valid or junk, a third each
        return rnd.choice([None, rnd.choice(valid[name]), rnd.choice(junk)])

    stream_ids = [*STRINGS, "fuzz-1", "fuzz-2", "fuzz-3"]
    noise = bytes(rnd.randrange(256) for _ in range(64))
    huge = bomb_png(64).replace(struct.pack(">II", 64, 64), struct.pack(">II", 20000, 20000), 1)  # by its header
    bodies = [frame, frame, frame, b"", b"\xff\xd8\xff", bomb_png(64), huge, frame[: len(frame) // 2], noise]
    ctypes = ["image/jpeg", "image/jpeg", "image/jpeg", "image/png", "application/octet-stream", "text/plain", "",
              "multipart/form-data",
              "image/jpeg; x=" + "y" * 3000]  # fmt: skip
    paths = ["/v1/stats", "/v1/streams/{}/thumbnail.jpg", "/healthz", "/openapi.json"]
    out: list[tuple[str, str, dict]] = []
    while len(out) < n:
        sid = rnd.choice(stream_ids)
        kind = rnd.randrange(8)
        if kind <= 2:  # one frame
            params = {k: v for k in ("frame_index", "timestamp", "policy") if (v := draw(k)) is not None}
            headers = {"content-type": rnd.choice(ctypes)}
            if rnd.random() < 0.3:
                headers["x-frame-index"] = str(rnd.choice(INTS))
            if rnd.random() < 0.3:
                headers["x-timestamp"] = rnd.choice(FLOATS)
            request = {"content": rnd.choice(bodies), "params": params, "headers": headers}
            out.append(("POST", f"/v1/streams/{sid}/frames", request))
        elif kind == 3:  # a batch
            files = [(rnd.choice(stream_ids), ("f.jpg", rnd.choice(bodies), "image/jpeg"))
                     for _ in range(rnd.randrange(0, 5))]  # fmt: skip
            request = {"files": files or None, "content": None if files else rnd.choice(bodies),
                       "params": {"policy": policy} if (policy := draw("policy")) is not None else {}}  # fmt: skip
            out.append(("POST", "/v1/frames", request))
        elif kind == 4:
            out.append(("GET", "/v1/streams", {"params": {"after": rnd.choice(STRINGS), "limit": rnd.choice(INTS)}}))
        elif kind == 5:
            out.append((rnd.choice(["GET", "DELETE"]), f"/v1/streams/{sid}", {}))
        elif kind == 6:
            out.append(("POST", f"/v1/streams/{sid}/reset", {}))
        else:
            reset = {"reset": rnd.choice(["true", "false", "x"])}
            out.append(("GET", rnd.choice(paths).format(sid), {"params": reset}))
    return out


async def fuzz(url: str, n: int, frame: bytes, token: str | None = None, concurrency: int = 8) -> tuple[Statuses, list]:
    """Send :func:`fuzz_requests`; returns the statuses and the first few 5xx (method, path, status, text)."""
    got: Statuses = Statuses()
    server_errors: list = []
    queue = collections.deque(fuzz_requests(n, frame))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            method, path, kwargs = queue.popleft()
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
            try:
                resp = await client.request(method, f"{url}{path}", **kwargs)
            except httpx.HTTPError:
                got[0] += 1
                continue
            got[resp.status_code] += 1
            if resp.status_code >= 500 and len(server_errors) < 10:
                server_errors.append((method, path, resp.status_code, resp.text[:200]))

    async with httpx.AsyncClient(timeout=60, headers=auth(token)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return got, server_errors
