"""Results pushed to a webhook: answered frames gathered into batches and POSTed as JSON, retried with
backoff while the receiver is down or busy, bounded in memory when it stays down.

One per ingress replica, on its event loop; nothing here blocks it (httpx's async client). Delivery is at
least once: a batch whose answer was lost is sent again under the same ``X-Posefleet-Batch`` id, and every
result carries ``stream_id`` and ``frame_index``, so a receiver can drop repeats. Results still queued when
the replica dies are lost; the JSONL sink is the durable record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass

import httpx

from posefleet.allowlist import redact
from posefleet.serving_config import WebhookConfig

log = logging.getLogger("posefleet.webhook")
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class WebhookStats:
    sent: int = 0  # results the receiver acknowledged (2xx)
    batches: int = 0
    retries: int = 0
    shed: int = 0  # results dropped: the queue was full (receiver down too long)
    rejected: int = 0  # results in batches the receiver refused for good (4xx other than 408/425/429)
    last_error: str | None = None
    last_sent_at: float | None = None


class WebhookSink:
    """``add`` a result (a JSON object) from the event loop; a task sends them in order, a batch at a time."""

    def __init__(self, cfg: WebhookConfig, source: str = "", key: str = "results"):
        """``key``: what a batch's list is called in its body (``results``, a group fuser's ``group_frames``)."""
        assert cfg.url is not None
        self.cfg, self.key = cfg, key
        self.url = cfg.url
        self.source = source or uuid.uuid4().hex[:12]  # which replica sent a batch
        self.queue: deque[str] = deque()
        self.stats = WebhookStats()
        self.seq = 0
        self.pending: list[str] = []  # the batch being sent
        self.pending_id = ""
        self._queued = asyncio.Event()  # something to send
        self._full = asyncio.Event()  # a whole batch to send
        self._task: asyncio.Task | None = None
        token = os.environ.get(cfg.token_env) if cfg.token_env else None
        self.headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}

    def add(self, result_json: str) -> None:
        """Queue one result; over ``max_queue`` the oldest is shed (latest results matter most)."""
        if len(self.queue) >= self.cfg.max_queue:
            self.queue.popleft()
            self.stats.shed += 1
        self.queue.append(result_json)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._queued.set()
        if len(self.queue) >= self.cfg.batch_max:
            self._full.set()

    def snapshot(self) -> dict:
        return {**asdict(self.stats), "queued": len(self.queue) + len(self.pending), "url": redact(self.url)}

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the task and send what is left, within ``timeout_s`` (blocking: the replica is stopping)."""
        if self._task is not None:
            self._task.cancel()
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=min(self.cfg.timeout_s, timeout_s)) as client:
            while (self.pending or self.queue) and time.monotonic() < deadline:
                batch, batch_id = self._next_batch()
                try:
                    resp = client.post(self.url, content=_body(self.key, batch), headers=self._headers(batch_id))
                except httpx.HTTPError as exc:
                    self._error(f"{type(exc).__name__}: {exc}")
                    break
                if self._outcome(resp, batch) is None:
                    break
                self.pending = []
        left = len(self.pending) + len(self.queue)
        if left:
            log.warning("webhook %s: %d results not delivered at shutdown", redact(self.url), left)

    # -- the sending task -------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                async with httpx.AsyncClient(timeout=self.cfg.timeout_s) as client:
                    await self._send_all(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fault here must not end delivery for good: the batch it hit is dropped
                log.exception("webhook %s: a batch of %d not sent, dropped", redact(self.url), len(self.pending))
                self._error(f"{type(exc).__name__}: {exc}")
                self.stats.rejected += len(self.pending)
                self.pending = []
                await asyncio.sleep(self.cfg.retry_min_s)

    async def _send_all(self, client: httpx.AsyncClient) -> None:
        while True:
            if not self.queue:
                self._queued.clear()
                await self._queued.wait()
            if len(self.queue) < self.cfg.batch_max:  # let a batch fill for up to interval_s
                self._full.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.cfg.interval_s)
            await self._deliver(client, *self._next_batch())
            self.pending = []

    def _next_batch(self) -> tuple[list[str], str]:
        """The batch in flight (kept until the receiver answers, so a stop loses none of it), else the next."""
        if not self.pending:
            n = min(len(self.queue), self.cfg.batch_max)
            self.pending = [self.queue.popleft() for _ in range(n)]
            self.seq += 1
            self.pending_id = f"{self.source}-{self.seq}"
        return self.pending, self.pending_id

    def _headers(self, batch_id: str) -> dict[str, str]:
        return {**self.headers, "x-posefleet-batch": batch_id}

    async def _deliver(self, client: httpx.AsyncClient, batch: list[str], batch_id: str) -> None:
        """Send one batch until the receiver takes it or refuses it for good; back off in between."""
        delay = self.cfg.retry_min_s
        while True:
            try:
                resp = await client.post(self.url, content=_body(self.key, batch), headers=self._headers(batch_id))
                if self._outcome(resp, batch) is not None:  # taken or refused for good
                    return
            except httpx.HTTPError as exc:
                self._error(f"{type(exc).__name__}: {exc}")
            self.stats.retries += 1
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.cfg.retry_max_s)

    def _outcome(self, resp: httpx.Response, batch: list[str]) -> bool | None:
        """True: taken; False: refused for good (dropped, logged); None: try again later."""
        if 200 <= resp.status_code < 300:
            self.stats.sent += len(batch)
            self.stats.batches += 1
            self.stats.last_sent_at = time.time()
            return True
        self._error(f"HTTP {resp.status_code} from {redact(self.url)}")
        if resp.status_code in RETRYABLE:
            return None
        self.stats.rejected += len(batch)
        log.warning("webhook refused a batch of %d results for good: %s", len(batch), self.stats.last_error)
        return False

    def _error(self, text: str) -> None:
        if text != self.stats.last_error:
            log.warning("webhook %s: %s", redact(self.url), text)
        self.stats.last_error = text


def _body(key: str, batch: list[str]) -> str:
    return '{"' + key + '":[' + ",".join(batch) + "]}"
