"""Client: read sources with OpenCV, post their frames to a posefleet server, several streams at once.

Each stream posts its frames in order, one in flight at a time, paced at the source's frame rate
(or as fast as the server answers with ``max_rate``). Results are written as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import numpy as np
from tqdm import tqdm

from posefleet.image_io import encode_jpeg
from posefleet.serve.schema import FrameResult
from posefleet.sources import Source, open_source


@dataclass
class StreamReport:
    stream: str
    frames: int = 0
    errors: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    people: int = 0
    results: list[FrameResult] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def line(self) -> str:
        errs = ", ".join(f"{n}x{code}" for code, n in sorted(self.errors.items())) or "none"
        return (
            f"{self.stream}: {self.frames} frames, {self.fps:.1f} FPS, "
            f"latency p50 {self.percentile(50):.0f} ms p99 {self.percentile(99):.0f} ms, errors {errs}"
        )


async def _frames(source: Source, max_frames: int | None, quality: int):
    """Encoded frames of a source, read in a worker thread so the event loop stays free."""
    it = iter(source)
    count = 0
    while max_frames is None or count < max_frames:
        item = await asyncio.to_thread(lambda: next(it, None))
        if item is None:
            return
        data = await asyncio.to_thread(encode_jpeg, item.image, quality)
        yield item, data
        count += 1


async def submit_stream(
    client: httpx.AsyncClient,
    url: str,
    stream: str,
    source_spec: str,
    *,
    max_rate: bool = False,
    max_frames: int | None = None,
    quality: int = 90,
    out: IO[str] | None = None,
    keep: bool = False,
    bar: tqdm | None = None,
    headers: dict[str, str] | None = None,
) -> StreamReport:
    source = open_source(source_spec)
    report = StreamReport(stream)
    endpoint = f"{url.rstrip('/')}/v1/streams/{stream}/frames"
    start = time.perf_counter()
    async for frame, data in _frames(source, max_frames, quality):
        if not max_rate:
            delay = start + frame.timestamp - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        t0 = time.perf_counter()
        resp = await client.post(
            endpoint,
            content=data,
            params={"frame_index": frame.index, "timestamp": round(frame.timestamp, 6)},
            headers={"content-type": "image/jpeg", **(headers or {})},
        )
        if resp.status_code == 200:
            report.latencies_ms.append((time.perf_counter() - t0) * 1000)
            report.frames += 1
            result = FrameResult.model_validate_json(resp.content)
            report.people += len(result.people)
            if out is not None:
                out.write(json.dumps(resp.json()) + "\n")
            if keep:
                report.results.append(result)
        else:
            report.errors[resp.status_code] = report.errors.get(resp.status_code, 0) + 1
        if bar is not None:
            bar.update(1)
    report.wall_s = time.perf_counter() - start
    return report


async def submit(
    url: str,
    jobs: list[tuple[str, str]],
    *,
    max_rate: bool = False,
    max_frames: int | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    keep: bool = False,
    token: str | None = None,
    timeout_s: float = 60.0,
) -> list[StreamReport]:
    """Post every ``(stream, source)`` job concurrently; returns one report per stream."""
    totals = []
    for _, spec in jobs:
        count = open_source(spec).count
        totals.append(min(count, max_frames) if count and max_frames else count or max_frames)
    total = sum(totals) if all(totals) else None
    headers = {"authorization": f"Bearer {token}"} if token else None
    files: list[IO[str]] = []
    limits = httpx.Limits(max_connections=len(jobs) + 4, max_keepalive_connections=len(jobs) + 4)
    try:
        async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
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
                            client,
                            url,
                            stream,
                            spec,
                            max_rate=max_rate,
                            max_frames=max_frames,
                            out=out,
                            keep=keep,
                            bar=bar,
                            headers=headers,
                        )
                    )
                return list(await asyncio.gather(*tasks))
    finally:
        for f in files:
            f.close()


def summary(reports: list[StreamReport], wall_s: float) -> str:
    lat = [x for r in reports for x in r.latencies_ms]
    frames = sum(r.frames for r in reports)
    total = (
        f"all: {len(reports)} streams, {frames} frames in {wall_s:.1f} s = {frames / wall_s:.1f} FPS, "
        f"latency p50 {np.percentile(lat, 50):.0f} ms p99 {np.percentile(lat, 99):.0f} ms"
        if lat
        else "all: no frame was served"
    )
    return "\n".join([*(r.line() for r in reports), total])
