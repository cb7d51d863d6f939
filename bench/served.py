"""Served throughput and latency for 1, 4 and 8 concurrent streams over HTTP on loopback.

    python -m bench.served [--frames 60] [--streams 1 4 8] [--config configs/serve-cpu.yaml]

Starts a local Ray and the Serve app from a Serve config file, posts a real clip (cycled as many
streams) at full rate, and prints a markdown table: FPS, p50/p99 latency, batch sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import ray
from ray import serve

from posefleet.serve.app import build_app, load_serve_config
from posefleet.serve.client import submit

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "test_video_structuralize.mp4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--config", help="Serve config (default configs/serve-cpu.yaml)")
    parser.add_argument("--source", default=str(CLIP))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    spec = load_serve_config(args.config)["applications"][0]
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(build_app(spec.get("args") or {}), name="posefleet", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for k in args.streams:
            jobs = [(f"bench-{k}-{i}", args.source) for i in range(k)]
            httpx.get(f"{url}/v1/stats", params={"reset": True})
            t0 = time.perf_counter()
            reports = asyncio.run(submit(url, jobs, max_rate=True, max_frames=args.frames, progress=True))
            wall = time.perf_counter() - t0
            stats = httpx.get(f"{url}/v1/stats", params={"reset": True}).json()
            lat = sorted(x for r in reports for x in r.latencies_ms)
            frames = sum(r.frames for r in reports)
            rows.append({
                "streams": k, "frames": frames, "fps": frames / wall,
                "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "det_requests_per_batch": stats["detector"]["mean_requests"],
                "det_max_requests": stats["detector"]["max_requests"],
                "pose_requests_per_batch": stats["pose"]["mean_requests"],
                "pose_crops_per_batch": stats["pose"]["mean_items"],
                "pose_max_crops": stats["pose"]["max_items"],
                "errors": sum(sum(r.errors.values()) for r in reports),
            })  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()
    head = ["streams", "FPS (all)", "p50 ms", "p99 ms", "det req/batch (max)", "pose req/batch",
            "pose crops/batch (max)", "errors"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [
            r["streams"], f"{r['fps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
            f"{r['det_requests_per_batch']:.2f} ({r['det_max_requests']})",
            f"{r['pose_requests_per_batch']:.2f}",
            f"{r['pose_crops_per_batch']:.2f} ({r['pose_max_crops']})", r["errors"],
        ]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
