"""Ray metrics (exported in Prometheus format by every Ray node's metrics agent).

Frames per second is ``rate(posefleet_frames_total[1m])``; by ``stream`` only with
``serving.metrics_per_stream`` (else its label is ``all``: one series per stream id ever seen grows without bound).
"""

from __future__ import annotations

import logging
from functools import cache

from ray.util import metrics

MS_BOUNDARIES = [1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500]
BATCH_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


class Metrics:
    """One set of metric objects per process (Ray aggregates across processes and nodes)."""

    def __init__(self) -> None:
        self.frames = metrics.Counter("posefleet_frames", "frames served", tag_keys=("stream",))
        self.frame_errors = metrics.Counter("posefleet_frame_errors", "frames refused or failed", tag_keys=("reason",))
        self.stage_ms = metrics.Histogram(
            "posefleet_stage_ms",
            "per-frame stage latency (ms)",
            boundaries=MS_BOUNDARIES,
            tag_keys=("stage",),
        )
        self.batch_size = metrics.Histogram(
            "posefleet_batch_size",
            "items per model inference",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("model",),
        )
        self.queue = metrics.Gauge("posefleet_queue_length", "requests waiting or running", tag_keys=("model",))
        self.async_errors = metrics.Counter(
            "posefleet_async_errors",
            "errors asyncio logged in a posefleet process: an exception no task or future retrieved, a failed "
            "callback (none is expected: each is a bug)",
        )
        logging.getLogger("asyncio").addHandler(_Counted(self.async_errors))


class _Counted(logging.Handler):
    """Counts the error records of a logger (asyncio's: what its loops could not hand to anyone)."""

    def __init__(self, counter: metrics.Counter):
        super().__init__(logging.ERROR)
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        self.counter.inc()


@cache
def get() -> Metrics:
    return Metrics()
