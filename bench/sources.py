"""Cameras the cluster pulls itself against cameras that push: N streams of the same clip at its own frame
rate (30 FPS), as N file sources (``POST /v1/sources``, read and decoded by source actors), as N sessions
of a live RTSP camera (GStreamer's RTSP server on loopback sending the clip's H.264, where installed), and
as N clients pushing the same frames over a WebSocket and over POST, one run, the embedded default.

    python -m bench.sources [--streams 1 4 8] [--seconds 20]

Each row: frames served per second (all streams), frames shed (skipped or dropped), p99 latency (for
sources: capture to result; for pushing clients: send to answer), and the machine's CPU-ms per served
frame (/proc/stat, every process: camera reading and decoding included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from bench.inprocess import machine_cpu_ms
from posefleet.config import deep_merge
from posefleet.serve.app import load_serve_config
from posefleet.serve.client import submit
from posefleet.serve.launcher import free_port, local_app
from tests.cameras import rtsp_available, rtsp_camera

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "test_video_structuralize.mp4"


def run_sources(url: str, n: int, seconds: float, camera: str) -> dict:
    kind = "rtsp" if camera.startswith("rtsp://") else "file"
    names = [f"src-{kind}-{n}-{i}" for i in range(n)]
    for name in names:
        resp = httpx.post(f"{url}/v1/sources", json={"stream_id": name, "url": camera}, timeout=60)
        resp.raise_for_status()
    time.sleep(3.0)  # connected and warm
    before = {s["stream_id"]: s for s in httpx.get(f"{url}/v1/sources", timeout=60).json()["sources"]}
    served0 = {s: httpx.get(f"{url}/v1/streams/{s}", timeout=60).json()["frames"] for s in names}
    cpu0, t0 = machine_cpu_ms(), time.perf_counter()
    time.sleep(seconds)
    cpu1, wall = machine_cpu_ms(), time.perf_counter() - t0
    after = {s["stream_id"]: s for s in httpx.get(f"{url}/v1/sources", timeout=60).json()["sources"]}
    served = sum(httpx.get(f"{url}/v1/streams/{s}", timeout=60).json()["frames"] - served0[s] for s in names)
    shed = sum(after[s]["dropped"] - before[s]["dropped"] + after[s]["skipped"] - before[s]["skipped"] for s in names)
    for name in names:
        httpx.delete(f"{url}/v1/sources/{name}", timeout=60)
    p99 = max(after[s]["latency_p99_ms"] or 0.0 for s in names)
    return {"fps": served / wall, "shed": shed, "p99_ms": p99, "cpu_ms_per_frame": (cpu1 - cpu0) / max(served, 1)}


def run_pushing(url: str, n: int, seconds: float, transport: str) -> dict:
    jobs = [(f"{transport}-{n}-{i}", str(CLIP)) for i in range(n)]
    frames = int(seconds * 30)
    cpu0, t0 = machine_cpu_ms(), time.perf_counter()
    reports = asyncio.run(submit(url, jobs, fps=30.0, max_inflight=1, max_frames=frames, cycle=True, progress=False,
                                 transport=transport))  # fmt: skip
    cpu1, wall = machine_cpu_ms(), time.perf_counter() - t0
    served = sum(r.frames for r in reports)
    lat = np.array([x for r in reports for x in r.latencies_ms]) if served else np.zeros(1)
    return {"fps": served / wall, "shed": sum(r.skipped + r.dropped for r in reports),
            "p99_ms": float(np.percentile(lat, 99)), "cpu_ms_per_frame": (cpu1 - cpu0) / max(served, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    spec = load_serve_config()["applications"][0]
    sources = {"enabled": True, "allow_schemes": ["file", "rtsp"], "allow_dirs": [str(CLIP.parent)],
               "allow_hosts": ["127.0.0.1"], "max_sources": 16}  # fmt: skip
    cameras = {"sources (file)": str(CLIP)}
    rtsp = None
    work = Path(tempfile.mkdtemp(prefix="posefleet-bench-"))  # the looped clip; removed at the end
    if rtsp_available():
        port = free_port()
        rtsp, cameras["sources (rtsp)"] = rtsp_camera(port, CLIP, work), f"rtsp://127.0.0.1:{port}/cam"
    else:
        print("no RTSP camera here (scripts/install-test-tools.sh installs one): file sources only")
    rows = []
    try:
        with local_app(deep_merge(spec["args"], {"serving": {"sources": sources}})) as url:
            plan = [(n, how) for n in args.streams for how in (*cameras, "ws", "http")]
            for n, how in tqdm(plan, desc="bench.sources", unit="row"):
                if how in cameras:
                    row = run_sources(url, n, args.seconds, cameras[how])
                else:
                    row = run_pushing(url, n, args.seconds, how)
                figures = {k: round(v, 1) for k, v in row.items()}
                rows.append({"streams": n, "how": how, "offered_fps": 30.0 * n} | figures)
    finally:
        if rtsp is not None:
            rtsp.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print("| streams | how | offered FPS | served FPS | shed | p99 ms | CPU-ms / frame |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = (r["streams"], r["how"], f"{r['offered_fps']:.0f}", r["fps"], f"{r['shed']:.0f}", r["p99_ms"],
                 r["cpu_ms_per_frame"])  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
