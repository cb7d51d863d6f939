"""Camera resolution: what the product spends around the model at 426x240, 1280x720 and 1920x1080, by stage,
with a model-free ceiling, in one run.

    python -m bench.camera [--quick] [--frames 60] [--out bench/results]

Inputs are court-like clips sent as cameras send them (JPEG q90): the shared volleyball broadcast frames played
forward and back, and MOT17-mini's 1080p sequences for length, cycled and resized to each size; the basketball
clip for the 426x240 row. Per size, one stream of the default preset, each row in the same run:

- ``before: OpenCV full decode``: decoding as the product did before scaled decode (``cv2.imdecode`` of the
  whole frame), then the same pipeline;
- ``full decode``: libjpeg-turbo at full size (``decode.scaled: false``);
- ``scaled decode``: the default, each frame decoded at the scale its regions and crops need;
- ``model-free ceiling`` (bench only, labelled as such): the scaled-decode row again with the models replaying
  the outputs recorded in that row at zero cost. The same people come back, so decoding, regions, tracking and
  the JSON answer are real: it is what the CPU around the model can move on these cores.

Then the served app (the embedded default: streams in the ingress replica) over WebSocket at 1 and 8 streams
at 1080p, with CPU-ms a frame per process as ``bench.served`` measures it. Stage figures are CPU-ms of this
process a frame (``time.process_time``: ONNX Runtime's threads included) and wall-ms by stage from each answer's
timings. Tables and ratios, no asserts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from bench.inprocess import machine_cpu_ms
from bench.players import court_like as court_streams
from bench.served_ceiling import served_ceiling
from posefleet.config import PipelineConfig, load_pipeline_config
from posefleet.image_io import Picture, check_image, encode_jpeg
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels, ModelCall
from posefleet.sources import open_source

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "tests" / "data" / "test_video_structuralize.mp4"
SIZES = {"426x240 clip": None, "1280x720": (1280, 720), "1920x1080": (1920, 1080)}
LIMITS = (40_000_000, 16384)


def court_like(size: tuple[int, int] | None, count: int) -> list[bytes]:
    """``count`` JPEG q90 frames: the basketball clip (``size`` None), or ``bench.players``' court-like streams
    (the volleyball frames forward and back, MOT17-mini's 1080p sequences) at ``size``, one after another, cycled."""
    if size is None:
        frames = [f.image for _, f in zip(range(count), open_source(str(CLIP)), strict=False)]
    else:
        frames = [f for stream in court_streams(size, quick=False) for f in stream]
    if not frames:
        return []
    encoded = [encode_jpeg(f, 90) for f in frames]
    return [encoded[i % len(encoded)] for i in range(count)]


class Timed:
    """The models, each call timed by kind; with ``replay`` set, the outputs recorded earlier come back in the
    same order at zero cost (the bench's model-free ceiling: nothing in the product can select this)."""

    def __init__(self, models: LocalModels):
        self.models = models
        self.ms: dict[str, float] = {"detector": 0.0, "pose": 0.0}
        self.recorded: list[list] = []
        self.replay = False
        self.at = 0

    def __call__(self, call: ModelCall) -> list:
        if self.replay:
            self.at += 1
            return self.recorded[self.at - 1]
        t0 = time.perf_counter()
        out = self.models(call)
        self.ms[call.model] += (time.perf_counter() - t0) * 1000.0
        self.recorded.append(out)
        return out


def run_row(label: str, cfg: PipelineConfig, frames: list[bytes], models: Timed, mode: str) -> dict[str, Any]:
    """One stream of ``frames`` through the in-process pipeline: ``mode`` opencv (decoded whole by OpenCV, as
    before), bytes (decoded by the pipeline) or replay (bytes, models replayed)."""
    pipeline = Pipeline(cfg, models)  # type: ignore[arg-type]
    models.ms = {"detector": 0.0, "pose": 0.0}
    models.replay, models.at = mode == "replay", 0
    if mode != "replay":
        models.recorded = []
    stages = {k: 0.0 for k in ("decode", "detect", "track", "pose", "serialise")}
    scales: list[float] = []
    people = 0
    cpu0, wall0, machine0 = time.process_time(), time.perf_counter(), machine_cpu_ms()
    for i, data in enumerate(frames):
        if mode == "opencv":
            t0 = time.perf_counter()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            result = pipeline.process("cam", image, i, decode_ms=(time.perf_counter() - t0) * 1000.0)
            scales.append(1.0)
        else:
            picture = Picture.encoded(data, *check_image(data, *LIMITS))
            [result] = pipeline.process_many([("cam", picture, i, None)])
            scales.append(picture.scale)
        t0 = time.perf_counter()
        result.model_dump_json()
        stages["serialise"] += (time.perf_counter() - t0) * 1000.0
        tm = result.timings
        stages["decode"] += tm.decode_ms
        stages["detect"] += tm.detect_ms
        stages["track"] += tm.track_ms
        stages["pose"] += tm.pose_ms
        people += len(result.people)
    wall = time.perf_counter() - wall0
    cpu, machine = (time.process_time() - cpu0) * 1000.0, machine_cpu_ms() - machine0
    n = len(frames)
    model_ms = {k: v / n for k, v in models.ms.items()}
    per = {k: v / n for k, v in stages.items()}
    # the detector and pose stages hold their model calls: what is left is the letterbox, crops, decoding outputs
    per["detect_around_model"] = per["detect"] - model_ms["detector"]
    per["pose_around_model"] = per["pose"] - model_ms["pose"]
    return {
        "row": label, "fps": n / wall, "frames": n, "cpu_ms_per_frame": cpu / n,
        "machine_cpu_ms_per_frame": machine / n, "model_ms": model_ms, "stages_ms": per, "people_per_frame": people / n,
        "decode_scale": {str(s): scales.count(s) for s in sorted(set(scales))},
    }  # fmt: skip


def section_inprocess(frames: int, bar: tqdm) -> list[dict[str, Any]]:
    cfg = load_pipeline_config("balanced")
    full = load_pipeline_config("balanced", overrides={"decode": {"scaled": False}})
    models = Timed(LocalModels(cfg))
    rows = []
    for size_label, size in SIZES.items():
        data = court_like(size, frames)
        if not data:
            continue
        run_row("warm-up", cfg, data[:3], models, "bytes")
        for label, c, mode in (("before: OpenCV full decode", full, "opencv"), ("full decode", full, "bytes"),
                               ("scaled decode", cfg, "bytes"), ("model-free ceiling", cfg, "replay")):  # fmt: skip
            rows.append(run_row(label, c, data, models, mode) | {"size": size_label})
            bar.update(1)
    return rows


def section_served(frames: int, streams: list[int], bar: tqdm) -> list[dict[str, Any]]:
    """The served default over WebSocket at 1080p, frames written as a folder of JPEGs the client reads."""
    from bench.served import run_transport
    from posefleet.serve.app import load_serve_config
    from posefleet.serve.launcher import local_app

    data = court_like((1920, 1080), min(frames, 60))
    if not data:
        return []
    app_args = load_serve_config()["applications"][0]["args"]
    with tempfile.TemporaryDirectory() as folder:
        for i, d in enumerate(data):
            (Path(folder) / f"{i:05d}.jpg").write_bytes(d)
        with local_app(app_args) as url:
            rows = run_transport(url, "ws", folder, streams, frames)
    bar.update(1)
    rows = [r | {"size": "1920x1080", "layout": "embedded default (streams and models in the ingress)"} for r in rows]
    ceiling = served_ceiling(data, streams, frames)  # the GPU layout, its detector replayed: the path's own cost
    bar.update(1)
    return rows + [r | {"layout": "model-free ceiling: ingress + 1 stream worker + replayed detector deployment"}
                   for r in ceiling]  # fmt: skip


def _f(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Machine: {res['machine']}. One stream of the default preset (balanced), JPEG q90 frames; "
             f"{res['frames']} frames a row. Stage figures: wall-ms a frame from each answer's timings; CPU-ms: "
             "this process a frame (ONNX Runtime's threads included) and the whole machine.", "",
             "| size | row | FPS | CPU-ms/frame (process / machine) | decode | detect around model | detector model |"
             " track | serialise | decode scales | people |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["inprocess"]:
        st = r["stages_ms"]
        scales = ", ".join(f"{float(k):g}: {v}" for k, v in r["decode_scale"].items())
        lines.append(
            f"| {r['size']} | {r['row']} | {r['fps']:.1f} | {r['cpu_ms_per_frame']:.1f} / "
            f"{r['machine_cpu_ms_per_frame']:.1f} | {st['decode']:.2f} | {st['detect_around_model']:.2f} | "
            f"{r['model_ms']['detector']:.1f} | {st['track']:.2f} | {st['serialise']:.2f} | {scales} | "
            f"{r['people_per_frame']:.1f} |"
        )
    lines += ["", "Ratios, same run:", ""]
    for size, rat in res["ratios"].items():
        lines.append(f"- {size}: " + ", ".join(f"{k} {v:.2f}x" for k, v in rat.items()))
    if res.get("served"):
        lines += ["", "Served over WebSocket, 1920x1080 court-like JPEGs. The model-free ceiling is the GPU layout "
                  "(`models: deployments`) with a bench-only detector deployment replaying the real model's outputs "
                  "at zero cost: what the serving path itself moves on these cores.", "",
                  "| layout | streams | FPS | p50 ms | p99 ms | CPU-ms/frame (machine) | top processes (CPU-ms/frame) "
                  "|",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in res["served"]:
            top = sorted((r.get("cpu_ms_per_frame_by_process") or {}).items(), key=lambda kv: -kv[1])[:4]
            lines.append(f"| {r.get('layout', '')} | {r['streams']} | {r['fps']:.1f} | {_f(r.get('p50_ms'))} | "
                         f"{_f(r.get('p99_ms'))} | {_f(r.get('cpu_ms_per_frame'))} | "
                         + ", ".join(f"{k} {v:.1f}" for k, v in top) + " |")
    return "\n".join(lines) + "\n"


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for size in dict.fromkeys(r["size"] for r in rows):
        by = {r["row"]: r for r in rows if r["size"] == size}
        before, scaled, ceiling = by["before: OpenCV full decode"], by["scaled decode"], by["model-free ceiling"]
        out[size] = {
            "scaled / before FPS": scaled["fps"] / before["fps"],
            "scaled / full decode FPS": scaled["fps"] / by["full decode"]["fps"],
            "ceiling FPS / scaled FPS": ceiling["fps"] / scaled["fps"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few frames a row (CI: the harness works)")
    parser.add_argument("--frames", type=int, help="frames a row (default 120, quick 8)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8], help="served rows' stream counts")
    parser.add_argument("--no-served", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    from bench.__main__ import machine

    frames = args.frames or (8 if args.quick else 120)
    steps = len(SIZES) * 4 + (0 if args.no_served else 2)
    with tqdm(total=steps, desc="bench.camera", unit="row") as bar:
        rows = section_inprocess(frames, bar)
        served = [] if args.no_served else section_served(frames, [1, 2] if args.quick else args.streams, bar)
    res = {"machine": machine(), "frames": frames, "inprocess": rows, "served": served, "ratios": ratios(rows)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "camera.json").write_text(json.dumps(res, indent=1, default=float))
    (out / "camera.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
