"""Served throughput, latency and cost for K concurrent streams over each transport: a WebSocket per
stream (``ws``), a POST per frame (``http``), multipart POSTs of many frames (``batch``).

    python -m bench.served [--frames 60] [--streams 1 4 8] [--config configs/serve-cpu.yaml]

Frames are encoded once up front (as the in-process bench decodes pre-encoded frames), each stream keeps
one frame unanswered (it sends the next when the last is answered), and every row gives the machine's
CPU time per frame (/proc/stat: client, proxy, ingress, workers), the Ray calls per frame the server
made (``/v1/stats``) and the frames per model inference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.inprocess import machine_cpu_ms
from posefleet.config import deep_merge
from posefleet.image_io import encode_jpeg
from posefleet.serve.app import load_serve_config
from posefleet.serve.launcher import local_app
from posefleet.serve.senders import BatchSender, HttpSender, Sender, SocketSender
from posefleet.sources import open_source

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "test_video_structuralize.mp4"
WARM_UP_FRAMES = 8  # first calls (sessions, connections) are not what a running server costs
TRANSPORTS = ("ws", "batch", "http")


def processes() -> Iterator[tuple[int, str]]:
    """This machine's processes, each as (pid, command line); those gone meanwhile left out."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        yield int(pid), cmd.replace(b"\0", b" ").decode(errors="replace")


class RssSampler:
    """Peak of the summed resident memory of this process and every Ray worker, sampled."""

    def __init__(self, period_s: float = 0.5):
        self.period_s, self.peak_mb, self._stop = period_s, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current_mb() -> float:
        total = 0
        for pid, cmd in processes():
            if pid != os.getpid() and not any(k in cmd for k in ("ray::", "raylet", "gcs_server")):
                continue
            try:
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


def process_cpu_ms() -> dict[str, float]:
    """CPU time used so far by this machine's processes, summed by what they are: a Ray actor by its class
    (``ray::StreamWorkerActor``), Ray's own daemons by name, this process as the client; the rest as other."""
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid, cmd in processes():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == os.getpid():
            name = "client"
        elif cmd.startswith("ray::"):
            name = cmd.split()[0].split(".")[0]  # ray::ServeController.listen_for_change: the class
        else:
            name = next((d for d in ("raylet", "gcs_server", "haproxy", "dashboard", "log_monitor") if d in cmd),
                        "other")  # fmt: skip
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * tick_ms
    return out


def encoded_frames(source: str, count: int) -> list[bytes]:
    frames = [encode_jpeg(f.image) for f in open_source(source)]
    return [frames[i % len(frames)] for i in range(count)]


async def _drive(url: str, transport: str, frames: list[bytes], names: list[str], period_s: float | None) -> dict:
    """Every stream sends ``frames`` in order, one unanswered at a time (or, paced, one every ``period_s``:
    a frame due while the last is unanswered is skipped, like a camera's)."""
    limits = httpx.Limits(max_connections=len(names) + 4, max_keepalive_connections=len(names) + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        sender: Sender = (
            SocketSender(url, {}, 120) if transport == "ws" else BatchSender(client, url, {})
            if transport == "batch" else HttpSender(client, url, {})
        )  # fmt: skip
        lat: list[float] = []
        errors: dict[int, int] = {}
        counts = {"served": 0, "dropped": 0, "skipped": 0, "people": 0}
        ends: dict[str, float] = {}  # when each stream's last answer came, from the start
        done: list[float] = []  # when each served frame's answer came, from the start
        start = time.perf_counter()

        async def one(name: str) -> None:
            busy: asyncio.Task | None = None
            for i, data in enumerate(frames):
                if period_s is not None:
                    await asyncio.sleep(max(0.0, start + i * period_s - time.perf_counter()))
                    if busy is not None and not busy.done():
                        counts["skipped"] += 1
                        continue
                busy = asyncio.create_task(send(name, i, data))
                if period_s is None:
                    await busy
            if busy is not None:
                await busy
            ends[name] = time.perf_counter() - start

        async def send(name: str, i: int, data: bytes) -> None:
            t0 = time.perf_counter()
            status, text = await sender.send(name, i, i / 30.0, data)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
            elif '"dropped":true' in text:
                counts["dropped"] += 1
            else:
                counts["served"] += 1
                counts["people"] += text.count('"track_id"')  # one a person answered
                lat.append((time.perf_counter() - t0) * 1000.0)
                done.append(time.perf_counter() - start)

        try:
            await asyncio.gather(*(one(n) for n in names))
        finally:
            await sender.close()
        return {"wall": time.perf_counter() - start, "latencies": lat, "errors": errors, "ends": ends,
                "done": done} | counts  # fmt: skip


def _stats_row(stats: dict, frames: int) -> dict[str, Any]:
    """Ray calls per frame and frames per model inference from ``/v1/stats``."""
    workers = stats.get("workers") or []
    calls = sum(stats.get("ray_calls", {}).values()) + sum(sum(w["ray_calls"].values()) for w in workers)
    det = stats.get("detector") or {}
    if not det:  # local models: per worker, weighted by batches
        batches = [w["detector"] for w in workers if w.get("detector", {}).get("batches")]
        n = sum(b["batches"] for b in batches)
        det = {"mean_requests": sum(b["mean_requests"] * b["batches"] for b in batches) / n if n else 0.0,
               "max_requests": max((b["max_requests"] for b in batches), default=0)}  # fmt: skip
    return {
        "ray_calls_per_frame": calls / frames if frames else None,
        "frames_per_model_call": det.get("mean_requests"),
        "max_frames_per_model_call": det.get("max_requests"),
        "frames_per_worker": [w.get("frames") for w in workers],  # how evenly the streams were placed
    }


def forget(url: str, names: list[str]) -> None:
    """Delete streams that are done, as a camera taken down would be: a new stream goes to the stream
    worker holding the fewest active streams, and one left idle counts for ``checkpoints.active_s``."""
    for name in names:
        httpx.delete(f"{url}/v1/streams/{name}", timeout=60)


def run_transport(url: str, transport: str, source: str, streams: list[int], frames: int) -> list[dict]:
    encoded = encoded_frames(source, frames)
    # as many streams as the widest row: they spread over every stream worker, each of whose models
    # (sessions, arenas) and connections make their first calls here, not in the measured rows
    warm_up = [f"{transport}-warm-up-{i}" for i in range(max(streams))]
    asyncio.run(_drive(url, transport, encoded[:WARM_UP_FRAMES], warm_up, None))
    forget(url, warm_up)
    rows = []
    for k in streams:
        names = [f"{transport}-{k}-{i}" for i in range(k)]
        httpx.get(f"{url}/v1/stats", params={"reset": True})
        before = httpx.get(f"{url}/v1/stats").json()
        with RssSampler() as rss:
            cpu0, by_process = machine_cpu_ms(), process_cpu_ms()
            run = asyncio.run(_drive(url, transport, encoded, names, None))
            cpu, by_process = machine_cpu_ms() - cpu0, _per_frame(by_process, process_cpu_ms(), run["served"])
        after = httpx.get(f"{url}/v1/stats", params={"reset": True}).json()
        forget(url, names)
        served = run["served"]
        rows.append(_row(f"served-{transport}", k, run, cpu, rss.peak_mb) | _stats_row(_delta(before, after), served)
                    | {"cpu_ms_per_frame_by_process": by_process})  # fmt: skip
    return rows


def run_paced(url: str, transport: str, source: str, streams: int, frames: int, capacity_fps: float,
              load: float = 0.8) -> dict:  # fmt: skip
    """``streams`` camera-like streams offering ``load`` x ``capacity_fps`` in all: p99 latency against
    the frame period."""
    per_stream = load * capacity_fps / streams
    period = 1.0 / per_stream
    names = [f"paced-{transport}-{i}" for i in range(streams)]
    cpu0 = machine_cpu_ms()
    run = asyncio.run(_drive(url, transport, encoded_frames(source, frames), names, period))
    forget(url, names)
    row = _row(f"served-{transport} at {load:.0%}", streams, run, machine_cpu_ms() - cpu0, 0.0)
    return row | {"offered_fps": per_stream * streams, "frame_period_ms": period * 1000,
                  "p99_in_periods": row["p99_ms"] / (period * 1000)}  # fmt: skip


def _per_frame(before: dict[str, float], after: dict[str, float], frames: int) -> dict[str, float]:
    """CPU-ms a frame of each kind of process between two :func:`process_cpu_ms`, the largest first."""
    used = {name: (ms - before.get(name, 0.0)) / max(frames, 1) for name, ms in after.items()}
    return {name: round(ms, 2) for name, ms in sorted(used.items(), key=lambda kv: -kv[1]) if ms >= 0.05}


def _delta(before: dict, after: dict) -> dict:
    """Counters of ``after`` less ``before`` (calls are cumulative; batch stats were reset before)."""
    out = dict(after)
    out["ray_calls"] = {k: v - before.get("ray_calls", {}).get(k, 0) for k, v in after.get("ray_calls", {}).items()}
    workers = []
    for b, a in zip(before.get("workers") or [], after.get("workers") or [], strict=False):
        workers.append(a | {"ray_calls": {k: v - b["ray_calls"].get(k, 0) for k, v in a["ray_calls"].items()}})
    out["workers"] = workers
    return out


def _row(mode: str, k: int, run: dict, cpu_ms: float, rss: float) -> dict:
    lat = np.array(run["latencies"]) if run["latencies"] else np.array([np.nan])
    served = run["served"]
    return {
        "mode": mode,
        "streams": k,
        "frames": served,
        "fps": served / run["wall"],
        "p50_ms": float(np.nanpercentile(lat, 50)),
        "p99_ms": float(np.nanpercentile(lat, 99)),
        "cpu_ms_per_frame": cpu_ms / served if served else None,
        "people_per_frame": run.get("people", 0) / served if served else None,
        "dropped": run["dropped"],
        "skipped": run["skipped"],
        "errors": run["errors"],
        # how much earlier the first stream finished than the last (0: all at once; more: some streams'
        # holders were faster, and the machine ran the tail with fewer streams)
        "end_spread": 1.0 - min(run["ends"].values()) / max(run["ends"].values()) if run["ends"] else 0.0,
        # frames/s until the first stream finished: the rate with every stream live, as cameras that never
        # stop would keep it (the tail after it runs fewer streams than the machine can take)
        "fps_live": _live_rate(run),
        "peak_rss_mb": rss,
    }


def _live_rate(run: dict) -> float | None:
    if not run.get("ends") or not run.get("done"):
        return None
    first_end = min(run["ends"].values())
    return sum(1 for t in run["done"] if t <= first_end) / first_end


def table(rows: list[dict]) -> str:
    head = ["mode", "streams", "FPS", "p50 ms", "p99 ms", "CPU ms/frame", "Ray calls/frame", "frames/model call (max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        fpc = r.get("frames_per_model_call")
        cells = [r["mode"], r["streams"], f"{r['fps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                 f"{r['cpu_ms_per_frame']:.1f}" if r.get("cpu_ms_per_frame") else "",
                 f"{r['ray_calls_per_frame']:.2f}" if r.get("ray_calls_per_frame") is not None else "",
                 f"{fpc:.2f} ({r['max_frames_per_model_call']})" if fpc else ""]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS)
    parser.add_argument("--config", help="Serve config (default configs/serve-cpu.yaml)")
    parser.add_argument("--source", default=str(CLIP))
    parser.add_argument("--set", default="{}", help="JSON merged over the config's args")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    app_args = deep_merge(load_serve_config(args.config)["applications"][0].get("args") or {}, json.loads(args.set))
    rows = []
    with local_app(app_args) as url:
        for transport in args.transports:
            rows += run_transport(url, transport, args.source, args.streams, args.frames)
    print("\n" + table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
