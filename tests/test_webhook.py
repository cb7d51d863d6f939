"""The webhook sink against a real HTTP receiver on loopback: batches, order, retry with backoff while the
receiver fails or is down, refusals for good, the memory bound, the flush at shutdown."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posefleet.serve.launcher import free_port
from posefleet.serving_config import WebhookConfig
from posefleet.webhook import WebhookSink


class Receiver:
    """Records every batch it is sent; answers ``fail_with`` to the first ``failures`` requests."""

    def __init__(self, port: int, failures: int = 0, fail_with: int = 503):
        self.port, self.failures, self.fail_with = port, failures, fail_with
        self.requests: list[tuple[str, list[dict], dict]] = []  # (batch id, results, headers) answered 2xx
        self.group_frames: list[dict] = []  # what group fusers sent (under "group_frames")
        self.seen = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.seen += 1
                if receiver.seen <= receiver.failures:
                    self.send_response(receiver.fail_with)
                else:
                    got = json.loads(body)
                    if "group_frames" in got:
                        receiver.group_frames += got["group_frames"]
                    else:
                        batch = self.headers["x-posefleet-batch"]
                        receiver.requests.append((batch, got["results"], dict(self.headers)))
                    self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # many senders at once (replicas, sources, fusers): none refused at connect

        self.server = Server(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def results(self) -> list[dict]:
        """Every result received, a batch sent twice counted once."""
        batches = {batch_id: results for batch_id, results, _ in self.requests}
        return [r for results in batches.values() for r in results]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def receiver(port: int) -> Iterator[Receiver]:
    r = Receiver(port, failures=3)
    yield r
    r.stop()


def result(stream: str, i: int) -> str:
    return json.dumps({"stream_id": stream, "frame_index": i, "people": []})


def config(port: int, **kw: object) -> WebhookConfig:
    fast = {"interval_s": 0.05, "retry_min_s": 0.02, "retry_max_s": 0.1, "timeout_s": 2.0}
    return WebhookConfig(url=f"http://127.0.0.1:{port}/hook", **{**fast, **kw})


async def until(check, timeout_s: float = 10.0) -> bool:
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


def test_results_arrive_batched_in_order_once_through_failures(receiver: Receiver, port: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    sink = WebhookSink(config(port, batch_max=100, token_env="HOOK_TOKEN"))

    async def go() -> None:
        for i in range(450):
            sink.add(result(f"cam-{i % 3}", i // 3))
            if i % 50 == 0:
                await asyncio.sleep(0)
        assert await until(lambda: sink.stats.sent == 450), sink.snapshot()

    asyncio.run(go())
    got = receiver.results()
    assert len(got) == 450 and receiver.seen >= 3 + 5  # three refusals retried, five batches of <= 100
    assert all(len(results) <= 100 for _, results, _ in receiver.requests)
    assert len(receiver.requests) < 450 / 10  # batched, not one request a result
    for cam in ("cam-0", "cam-1", "cam-2"):
        assert [r["frame_index"] for r in got if r["stream_id"] == cam] == list(range(150))  # in order, once
    assert sink.stats.retries == 3 and sink.stats.last_error == "HTTP 503 from " + sink.url
    assert {h["authorization"] for _, _, h in receiver.requests} == {"Bearer s3cret"}


def test_a_batch_that_cannot_be_sent_is_dropped_and_the_rest_still_go(port: int) -> None:
    """A fault other than the receiver's (here a result that is no JSON text, a caller's bug) costs its own batch,
    not the sending task: what comes after it is delivered."""
    receiver = Receiver(port)
    sink = WebhookSink(config(port, batch_max=1))

    async def go() -> None:
        sink.add(b"not text")  # type: ignore[arg-type]
        assert await until(lambda: sink.stats.rejected == 1), sink.snapshot()
        sink.add(result("cam", 1))
        assert await until(lambda: sink.stats.sent == 1), sink.snapshot()

    try:
        asyncio.run(go())
        assert [r["frame_index"] for r in receiver.results()] == [1]
        assert sink.stats.last_error is not None and "TypeError" in sink.stats.last_error
    finally:
        receiver.stop()


def test_a_receiver_down_then_up_gets_everything(port: int) -> None:
    sink = WebhookSink(config(port))
    holder: list[Receiver] = []

    async def go() -> None:
        for i in range(20):
            sink.add(result("cam", i))
        assert await until(lambda: sink.stats.retries >= 2)  # nothing listens: connection refused, retried
        assert "ConnectError" in (sink.stats.last_error or "")
        holder.append(Receiver(port))
        assert await until(lambda: sink.stats.sent == 20), sink.snapshot()

    try:
        asyncio.run(go())
        assert [r["frame_index"] for r in holder[0].results()] == list(range(20))
    finally:
        for r in holder:
            r.stop()


def test_a_batch_refused_for_good_is_dropped_and_the_next_goes(port: int) -> None:
    r = Receiver(port, failures=1, fail_with=400)
    sink = WebhookSink(config(port, batch_max=5))

    async def go() -> None:
        for i in range(5):
            sink.add(result("cam", i))
        assert await until(lambda: sink.stats.rejected == 5)
        for i in range(5, 8):
            sink.add(result("cam", i))
        assert await until(lambda: sink.stats.sent == 3)

    try:
        asyncio.run(go())
        assert [x["frame_index"] for x in r.results()] == [5, 6, 7] and sink.stats.retries == 0
    finally:
        r.stop()


def test_memory_is_bounded_while_the_receiver_is_down_and_shutdown_flushes(port: int) -> None:
    sink = WebhookSink(config(port, batch_max=4, max_queue=10))

    async def go() -> None:
        for i in range(30):
            sink.add(result("cam", i))
            await asyncio.sleep(0)
        assert await until(lambda: sink.stats.retries >= 1)

    asyncio.run(go())
    assert sink.stats.shed >= 30 - 10 - 4 and sink.snapshot()["queued"] <= 10 + 4
    r = Receiver(port)
    try:
        sink.close(timeout_s=5)  # the replica stops: the batch in flight, then the rest, newest kept
        got = [x["frame_index"] for x in r.results()]
        assert got == sorted(got) and got[-1] == 29 and len(got) == 30 - sink.stats.shed
        assert sink.snapshot()["queued"] == 0
    finally:
        r.stop()


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookConfig(url="file:///etc/passwd")
