"""How soon a served group's fused frame follows its cameras' results: the Pose2Sim multi-person demo's four
cameras posted to the embedded default as one group (each round's four frames at once, as four cameras would),
the group's fused frames read from its event feed (``GET /v1/groups/room/people/events``).

    python -m bench.court_served [--frames 60] [--out bench/results]

Per round: the time from the last camera's answer to the fused frame's event (negative: the event came first),
beside the cameras' frame period (the demo is 60 FPS). Writes ``court_served.md`` and ``.json`` under ``--out``;
figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from tqdm import tqdm

from bench import report
from bench.court import CAMS, FPS, ROOT, calibration_of, demos, videos_of
from posefleet.config import deep_merge
from posefleet.court.calibration import load_calibration
from posefleet.image_io import encode_jpeg
from posefleet.serve.app import load_serve_config
from posefleet.serve.launcher import local_app
from posefleet.serving_config import AppConfig


def read_frames(folder: Path, count: int) -> dict[str, list[bytes]]:
    out = {}
    for cam, path in zip(CAMS, videos_of(folder), strict=True):
        cap = cv2.VideoCapture(str(path))
        out[cam] = [encode_jpeg(cap.read()[1], 90) for _ in range(count)]
        cap.release()
    return out


class EventLog:
    """The group's fused-frame events, each with when it arrived, read on a thread of its own."""

    def __init__(self, url: str) -> None:
        self.url, self.arrived = url, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with httpx.stream("GET", f"{self.url}/v1/groups/room/people/events", timeout=None) as events:
            for line in events.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("data: "):
                    frame = json.loads(line.removeprefix("data: "))
                    if frame["frames"]:
                        self.arrived.setdefault(min(frame["frames"].values()), (time.perf_counter(), frame))


async def post_rounds(url: str, frames: dict[str, list[bytes]], base: int = 0) -> list[float]:
    """Each round's four frames at once (frame indices and timestamps from ``base`` on); when the last answer
    came, per round."""
    done = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(cam: str, i: int) -> None:
            r = await client.post(f"{url}/v1/streams/{cam}/frames", content=frames[cam][i - base],
                                  params={"frame_index": i, "timestamp": i / FPS, "group": "room"},
                                  headers={"content-type": "image/jpeg"})  # fmt: skip
            r.raise_for_status()

        for i in tqdm(range(base, base + len(frames[CAMS[0]])), desc="rounds", unit="round"):
            await asyncio.gather(*(one(cam, i) for cam in CAMS))
            done.append(time.perf_counter())
            await asyncio.sleep(0.05)  # the event of this round has its moment before the next round's load
    return done


def measure(frames_n: int) -> dict[str, Any]:
    folder = demos()["MultiPerson"]
    frames = read_frames(folder, frames_n)
    calibrated = load_calibration(calibration_of(folder))
    cameras = {name: cam.to_model().model_dump(mode="json") for name, cam in calibrated.items()}
    args = load_serve_config()["applications"][0]["args"]
    groups = {"courts": {"room": {"cameras": cameras}}}
    cfg = AppConfig.model_validate(deep_merge(args, {"serving": {"groups": groups}}))
    with local_app(cfg) as url:
        asyncio.run(post_rounds(url, {c: f[:3] for c, f in frames.items()}))  # warm: sessions, the fuser
        log = EventLog(url)
        time.sleep(0.5)
        base = 1000  # frame indices past the warm-up's
        answered = asyncio.run(post_rounds(url, frames, base))
        time.sleep(1.0)
        log.stop.set()
    lags, fusion = [], []
    for i, t_answer in enumerate(answered):
        got = log.arrived.get(base + i)
        if got is not None:
            lags.append((got[0] - t_answer) * 1000.0)
            fusion.append(got[1]["fusion_ms"])
    lag = np.array(lags)
    period_ms = 1000.0 / FPS
    return {
        "rounds": len(answered), "fused_rounds": len(lags), "frame_period_ms": round(period_ms, 1),
        "lag_ms": {q: round(float(np.percentile(lag, p)), 1) for q, p in (("p50", 50), ("p90", 90), ("max", 100))}
        if len(lag) else {},
        "within_one_period": round(float(np.mean(lag <= period_ms)), 3) if len(lag) else 0.0,
        "fusion_ms_p50": round(float(np.median(fusion)), 2) if fusion else None,
    }  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    lag = res["lag_ms"]
    return "\n".join([
        "The Pose2Sim multi-person demo's four cameras posted to the embedded default as group `room` (each round's",
        "four frames at once); the fused frames read from `GET /v1/groups/room/people/events` (`python -m",
        "bench.court_served`).",
        "",
        "| rounds | fused | lag p50 ms | p90 | max | frame period ms | within one period | fusion CPU-ms p50 |",
        "|---|---|---|---|---|---|---|---|",
        f"| {res['rounds']} | {res['fused_rounds']} | {lag.get('p50')} | {lag.get('p90')} | {lag.get('max')} | "
        f"{res['frame_period_ms']} | {res['within_one_period']:.0%} | {res['fusion_ms_p50']} |",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="rounds (frames a camera) measured")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    res = measure(args.frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "court_served.json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    (out / "court_served.md").write_text(text)
    print(text)
    report.write(out)


if __name__ == "__main__":
    main()
