"""Served throughput and latency for K concurrent streams: over HTTP on loopback, and through
deployment handles from the driver (the same frame processing without HTTP, to show its cost).

    python -m bench.served [--frames 60] [--streams 1 4 8] [--config configs/serve-cpu.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from ray import serve

from posefleet.config import AppConfig
from posefleet.image_io import encode_jpeg
from posefleet.serve.app import load_serve_config
from posefleet.serve.client import submit
from posefleet.serve.local import local_app
from posefleet.serve.processor import FrameProcessor
from posefleet.sources import open_source

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "test_video_structuralize.mp4"


class RssSampler:
    """Peak of the summed resident memory of this process and every Ray worker, sampled."""

    def __init__(self, period_s: float = 0.5):
        self.period_s, self.peak_mb, self._stop = period_s, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current_mb() -> float:
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if (
                    int(pid) != os.getpid()
                    and b"ray::" not in cmd
                    and b"raylet" not in cmd
                    and b"gcs_server" not in cmd
                ):
                    continue
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (OSError, ValueError):
                continue
        return total / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _row(kind: str, k: int, wall: float, latencies: list[float], frames: int, stats: dict, rss: float) -> dict:
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "mode": kind,
        "streams": k,
        "frames": frames,
        "fps": frames / wall,
        "p50_ms": float(np.nanpercentile(lat, 50)),
        "p99_ms": float(np.nanpercentile(lat, 99)),
        "peak_rss_mb": rss,
        "det_requests_per_batch": stats.get("detector", {}).get("mean_requests"),
        "det_max_requests": stats.get("detector", {}).get("max_requests"),
        "pose_requests_per_batch": stats.get("pose", {}).get("mean_requests"),
        "pose_crops_per_batch": stats.get("pose", {}).get("mean_items"),
        "pose_max_crops": stats.get("pose", {}).get("max_items"),
    }


WARM_UP_FRAMES = 8  # first calls (sessions, connections, handles) are not what a running server costs


def run_http(url: str, source: str, streams: list[int], frames: int, progress: bool = False) -> list[dict]:
    rows = []
    asyncio.run(submit(url, [("http-warm-up", source)], max_rate=True, max_frames=WARM_UP_FRAMES, progress=False))
    for k in streams:
        jobs = [(f"http-{k}-{i}", source) for i in range(k)]
        httpx.get(f"{url}/v1/stats", params={"reset": True})
        with RssSampler() as rss:
            t0 = time.perf_counter()
            reports = asyncio.run(submit(url, jobs, max_rate=True, max_frames=frames, progress=progress))
            wall = time.perf_counter() - t0
        stats = httpx.get(f"{url}/v1/stats", params={"reset": True}).json()
        lat = [x for r in reports for x in r.latencies_ms]
        rows.append(_row("served-http", k, wall, lat, sum(r.frames for r in reports), stats, rss.peak_mb))
    return rows


def run_handle(app_args: dict[str, Any], source: str, streams: list[int], frames: int) -> list[dict]:
    """The ingress's frame processing in this driver, calling the deployments through handles."""
    cfg = AppConfig.model_validate(app_args | {"serving": (app_args.get("serving") or {}) | {"viewer": False}})
    det = serve.get_deployment_handle("Detector", app_name="posefleet")
    pose = serve.get_deployment_handle("Pose", app_name="posefleet")
    images = [encode_jpeg(f.image) for f in open_source(source)]
    rows = []

    async def one_stream(proc: FrameProcessor, name: str, lat: list[float]) -> None:
        for i in range(frames):
            t = time.perf_counter()
            await proc.process(name, images[i % len(images)], i, None)
            lat.append((time.perf_counter() - t) * 1000)

    async def run(k: int) -> tuple[float, list[float]]:
        proc = FrameProcessor(cfg, det, pose)
        for i in range(WARM_UP_FRAMES):
            await proc.process(f"handle-{k}-warm-up", images[i % len(images)], i, None)
        await asyncio.gather(det.batch_stats.remote(True), pose.batch_stats.remote(True))  # count from here
        lat: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(one_stream(proc, f"handle-{k}-{i}", lat) for i in range(k)))
        return time.perf_counter() - t0, lat

    for k in streams:
        with RssSampler() as rss:
            wall, lat = asyncio.run(run(k))
        stats = {"detector": det.batch_stats.remote(True).result(), "pose": pose.batch_stats.remote(True).result()}
        rows.append(_row("served-handle", k, wall, lat, k * frames, stats, rss.peak_mb))
    return rows


def table(rows: list[dict]) -> str:
    head = ["mode", "streams", "FPS", "p50 ms", "p99 ms", "det req/batch (max)", "pose req/batch",
            "pose crops/batch (max)", "peak RSS MB"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["mode"], r["streams"], f"{r['fps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
            f"{r['det_requests_per_batch'] or 0:.2f} ({r['det_max_requests']})",
            f"{r['pose_requests_per_batch'] or 0:.2f}",
            f"{r['pose_crops_per_batch'] or 0:.2f} ({r['pose_max_crops']})", f"{r['peak_rss_mb']:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--config", help="Serve config (default configs/serve-cpu.yaml)")
    parser.add_argument("--source", default=str(CLIP))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    app_args = load_serve_config(args.config)["applications"][0].get("args") or {}
    with local_app(app_args) as url:
        rows = run_http(url, args.source, args.streams, args.frames, progress=True)
        rows += run_handle(app_args, args.source, args.streams, args.frames)
    print("\n" + table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
