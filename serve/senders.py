"""How the client's frames travel (:mod:`posefleet.serve.client`): a POST a frame (``HttpSender``), a WebSocket a
stream (``SocketSender``, answers in send order), or every stream's frames gathered into multipart POSTs
(``BatchSender``). Each answers a frame with its HTTP status and the JSON text of its result or error."""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import websockets

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
