"""Overload and faults on loopback: 8 camera-like streams offering twice the rated frame rate.

    python -m bench.overload [--duration 60] [--streams 8] [--factor 2] [--faults]

1. rated: what the server sustains with the streams sending as fast as answers come back;
2. overload: each stream sends on time at ``factor x rated / streams`` FPS for ``duration``
   seconds (at most 4 unanswered frames a stream, later frames skipped like a camera would);
3. with ``--faults``, the process holding the streams is killed a third of the way in and again at
   two thirds: the ingress replica in the embedded default (Serve replaces it), a stream worker
   actor in the worker layout (Ray restarts it); either restores its streams from checkpoints.
Prints shed/dropped counts, latency (p50/p99 overall and per 10 s window, to show it stays
bounded) and checks that every stream's server-side state matches what the client saw.

    python -m bench.overload --hostile [--duration 60] [--fuzz 10000] [--churn 100000]

instead runs hostile clients (``serve/attacks.py``) against the embedded default: a victim camera at
10 FPS beside 200 viewers, 100 slow uploaders and 4 senders of pathological bodies for ``duration``;
then a fuzz of every parameter (counting 5xx); then ``churn`` stream ids that come and go (RSS of the
server's processes before, at the peak and after their eviction).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import ray

from posefleet.serve.app import load_serve_config
from posefleet.serve.client import submit
from posefleet.serve.launcher import local_app

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "test_video_structuralize.mp4"


def kill_during(duration: float) -> threading.Thread:
    def holder() -> tuple[str, str, bool]:
        """(name, namespace, whether Ray should restart it) of what holds the streams now."""
        names = {a["name"]: a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True)}
        worker = next((n for n in names if n.startswith("posefleet-") and "-worker-" in n), None)
        if worker is not None:
            return worker, names[worker], True
        replica = next(n for n in names if "#Ingress#" in n)  # Serve starts a new replica itself
        return replica, names[replica], False

    def run() -> None:
        for k in (1, 2):
            time.sleep(duration / 3)
            name, namespace, restart = holder()
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=not restart)
            print(f"\n[{k * duration / 3:.0f} s] killed {name}", flush=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--factor", type=float, default=2.0, help="offered / rated frame rate")
    parser.add_argument("--faults", action="store_true")
    parser.add_argument("--config", help="Serve config (default configs/serve-cpu.yaml)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--hostile", action="store_true", help="hostile clients beside a victim stream instead")
    parser.add_argument("--fuzz", type=int, default=10_000, help="with --hostile: fuzz requests")
    parser.add_argument("--churn", type=int, default=100_000, help="with --hostile: stream ids that come and go")
    args = parser.parse_args()
    if args.hostile:
        return run_hostile(args)

    spec = load_serve_config(args.config)["applications"][0]
    with local_app(spec.get("args") or {}) as url:
        rated_jobs = [(f"rated-{i}", str(CLIP)) for i in range(args.streams)]
        t0 = time.perf_counter()
        rated_reports = asyncio.run(submit(url, rated_jobs, max_rate=True, max_frames=20, progress=False))
        rated = sum(r.frames for r in rated_reports) / (time.perf_counter() - t0)
        fps = args.factor * rated / args.streams
        frames = int(fps * args.duration)
        print(f"rated {rated:.1f} FPS; offering {args.factor:.1f}x = {fps * args.streams:.1f} FPS "
              f"({fps:.1f} a stream) for {args.duration:.0f} s", flush=True)  # fmt: skip
        jobs = [(f"load-{i}", str(CLIP)) for i in range(args.streams)]
        killer = kill_during(args.duration) if args.faults else None
        t0 = time.perf_counter()
        reports = asyncio.run(submit(url, jobs, fps=fps, max_inflight=4, max_frames=frames, cycle=True))
        wall = time.perf_counter() - t0
        if killer:
            killer.join()
        states = {s["stream_id"]: s for s in httpx.get(f"{url}/v1/streams").json()["streams"]}

    lat = np.array([x for r in reports for x in r.latencies_ms])
    by_window: dict[int, list[float]] = {}
    for r in reports:
        for sent, ms in r.timeline:
            by_window.setdefault(int(sent // 10), []).append(ms)
    intact = all(states[r.stream]["frames"] == r.frames and states[r.stream]["dropped"] == r.dropped for r in reports)
    out = {
        "rated_fps": rated,
        "offered_fps": fps * args.streams,
        "served_fps": sum(r.frames for r in reports) / wall,
        "sent": sum(r.frames + r.dropped + sum(r.errors.values()) for r in reports),
        "served": sum(r.frames for r in reports),
        "dropped_by_server": sum(r.dropped for r in reports),
        "skipped_by_client": sum(r.skipped for r in reports),
        "errors": {str(k): sum(r.errors.get(k, 0) for r in reports) for k in {k for r in reports for k in r.errors}},
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "p99_ms_per_10s": {
            f"{10 * k}-{10 * k + 10}s": float(np.percentile(v, 99)) for k, v in sorted(by_window.items())
        },
        "ids_restarted": sum(r.ids_restarted for r in reports),
        "streams_recovered_from_checkpoint": sum(r.state_recovered for r in reports),
        # after a restart a stream's counters restart from its checkpoint, so only without faults
        "state_intact": intact if not args.faults else None,
        "streams_served": sum(1 for r in reports if r.frames),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def run_hostile(args: argparse.Namespace) -> None:
    from bench import hostile
    from bench.served import RssSampler
    from posefleet.config import deep_merge
    from posefleet.serve import attacks

    spec = load_serve_config(args.config)["applications"][0]
    idle_s = 5.0  # streams evicted after 5 s idle, so the churn's ids are gone within the run
    serving = {"security": {"auth_token": f"{hostile.VICTIM_TOKEN},{hostile.ATTACKER_TOKEN}"},
               "admission": {"stream_idle_s": idle_s}}  # fmt: skip
    out: dict = {}
    with local_app(deep_merge(spec.get("args") or {}, {"serving": serving})) as url:
        # the attackers' bytes over a 1 Gbit/s link (125 MB/s), and on loopback with no limit at all
        for name, link in (("mix_1gbit", 125.0), ("mix_loopback", None)):
            print(f"hostile mix for {args.duration:.0f} s, link {link or 'unlimited'} MB/s ...", flush=True)
            out[name] = asyncio.run(hostile.hostile_mix(url, args.duration, link_mb_s=link))
            print(json.dumps(out[name], indent=2), flush=True)
        print(f"fuzz of {args.fuzz} requests ...", flush=True)
        got, errors = asyncio.run(attacks.fuzz(url, args.fuzz, attacks.victim_frame(), hostile.VICTIM_TOKEN))
        out["fuzz"] = {"requests": sum(got.values()), "statuses": dict(sorted(got.items())),
                       "5xx": sum(n for s, n in got.items() if s >= 500), "first_5xx": errors}  # fmt: skip
        print(json.dumps(out["fuzz"], indent=2), flush=True)
        if args.churn:
            out["churn"] = asyncio.run(hostile.churn(url, args.churn, idle_s, RssSampler.current_mb))
            print(json.dumps(out["churn"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
