"""Several sources through the in-process pipeline at once (``posefleet run a.mp4 b.mp4``, the bench):
each round takes the next frame of every source still going and applies them in one batched pass.

Frames are read (decoded) on a thread ahead of the pipeline, so decoding overlaps inference.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from posefleet.config import PipelineConfig
from posefleet.image_io import Picture
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.schema import FrameResult
from posefleet.sources import Frame, SourceError


def tuned_for_streams(cfg: PipelineConfig, streams: int) -> PipelineConfig:
    """Several streams in one process: each model runs one ONNX Runtime thread per call and as many calls
    at once as there are cores (measured here: MoveNet 6.7 ms a frame that way on 2 cores, 10.1 ms with one
    call on both), unless the config already sets its threads. One stream keeps the config as it is."""
    if streams < 2:
        return cfg
    cores = len(os.sched_getaffinity(0))
    tuned = cfg.model_copy(deep=True)
    for ort in (tuned.detector.ort, tuned.pose.ort):
        if ort.intra_op_num_threads == 0 and ort.parallel_runs == 1:
            ort.intra_op_num_threads, ort.parallel_runs = 1, cores
    return tuned


@dataclass
class Round:
    """One frame of each source still going, with how long reading it took (its decode stage)."""

    frames: list[tuple[str, Frame, float]]  # (stream, frame, decode ms)


def _read_rounds(sources: dict[str, Iterable[Frame]], max_frames: int | None) -> Iterator[Round | SourceError]:
    iters = {stream: iter(src) for stream, src in sources.items()}
    count = 0
    while iters and not (max_frames and count >= max_frames):
        frames = []
        for stream, it in list(iters.items()):
            t0 = time.perf_counter()
            try:
                frame = next(it, None)
            except SourceError as exc:
                yield exc
                return
            if frame is None:
                del iters[stream]
                continue
            frames.append((stream, frame, (time.perf_counter() - t0) * 1000.0))
        if frames:
            yield Round(frames)
        count += 1


def prefetched(rounds: Iterator[Round | SourceError], depth: int = 2) -> Iterator[Round]:
    """``rounds`` read on a daemon thread, at most ``depth`` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def reader() -> None:
        try:
            for item in rounds:
                q.put(item)
        finally:
            q.put(done)

    threading.Thread(target=reader, daemon=True, name="posefleet-reader").start()
    while (item := q.get()) is not done:
        if isinstance(item, SourceError):
            raise item
        yield item


def run_sources(
    pipeline: Pipeline,
    sources: dict[str, Iterable[Frame]],
    on_result: Callable[[Frame, FrameResult], None],
    max_frames: int | None = None,
    on_round: Callable[[list[FrameResult]], None] | None = None,
) -> int:
    """Every source's frames through ``pipeline``, one batched pass a round; returns frames processed.
    ``on_round`` sees each round's results together (a group's fusion) before ``on_result`` sees each.
    Raises SourceError when a source fails mid-way."""
    frames = 0
    for batch in prefetched(_read_rounds(sources, max_frames)):
        items = [(s, Picture.decoded(f.image, round(ms, 3)), f.index, f.timestamp) for s, f, ms in batch.frames]
        results = pipeline.process_many(items)
        if on_round is not None:
            on_round(results)
        for (_, frame, _), result in zip(batch.frames, results, strict=True):
            on_result(frame, result)
        frames += len(batch.frames)
    return frames
