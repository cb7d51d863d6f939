"""How long a node refuses HTTP after its Serve proxy is killed (kill -9), with Serve's default proxy health
check and with the one ``posefleet serve`` sets; a fresh Ray for each, the median of a few kills.

    python -m bench.proxy_recovery [--kills 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import httpx

from posefleet.serve.app import PROXY_HEALTH_ENV


def _one_setting(kills: int) -> list[float]:
    """In this process: serve the embedded default, kill its proxy ``kills`` times, time each gap."""
    import ray

    from bench.local import local_app
    from posefleet.serve.app import load_serve_config

    gaps = []
    with local_app(load_serve_config()["applications"][0]["args"]) as url:
        for _ in range(kills):
            proxy = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "PROXY" in a["name"])
            pid = ray.get(ray.get_actor(proxy["name"], namespace=proxy["namespace"]).__ray_call__.remote(
                lambda self: os.getpid()))  # fmt: skip
            os.kill(pid, signal.SIGKILL)
            t0 = time.perf_counter()
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            gaps.append(round(time.perf_counter() - t0, 2))
            time.sleep(2)
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one_setting(args.kills)))
        return
    out = {}
    for name, env in (("serve_default", {}), ("posefleet_serve", PROXY_HEALTH_ENV)):
        run_env = {k: v for k, v in os.environ.items() if k not in PROXY_HEALTH_ENV} | env
        proc = subprocess.run([sys.executable, "-m", "bench.proxy_recovery", "--child", "--kills", str(args.kills)],
                              env=run_env, capture_output=True, text=True, timeout=600)  # fmt: skip
        gaps = json.loads(proc.stdout.strip().splitlines()[-1])
        out[name] = {"env": env, "gaps_s": gaps, "median_s": statistics.median(gaps)}
        print(name, out[name], flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
