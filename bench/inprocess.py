"""In-process runners of the benchmark, each in its own subprocess (so peak RSS is its own):

    python -m bench.inprocess MODE --video clip.mp4 --frames 120 --streams 4 --json out.json

MODE is one of:
  limit      the models alone on pre-decoded frames (and pre-cut crops, top-down), best layout
  naive      top-down seed-style: detect every frame, one pose inference per person, default ORT
             options, stages in turn
  in-process the product's own path (``posefleet run a.mp4 b.mp4 ...``): the preset's pipeline,
             one batched pass over every stream's next frame, reading prefetched on a thread
  rtmlib     a loop shaped like rtmlib's PoseTracker (top-down): det_frequency, per-box pose calls,
             greedy IoU tracking, next boxes from the previous keypoints; same models

Every row also gives the machine's CPU time per frame (/proc/stat: every process, not only this one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from posefleet.config import PipelineConfig, load_pipeline_config
from posefleet.image_io import decode_image, encode_jpeg
from posefleet.pipeline.bytetrack import ByteTracker
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels
from posefleet.pipeline.geometry import iou_matrix, keypoint_box
from posefleet.pipeline.schema import FrameResult
from posefleet.runner import run_sources, tuned_for_streams
from posefleet.sources import Frame, open_source

LIMITS = {"max_pixels": 40_000_000, "max_side": 16384}
_TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


def machine_cpu_ms() -> float:
    """CPU time every process on this machine has used so far (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields)
    return (user + nice + system + irq + softirq) * _TICK_MS


STAGES = ("decode_ms", "detect_ms", "track_ms", "pose_ms", "total_ms")


def load_frames(video: str, count: int) -> list[bytes]:
    """``count`` frames of a real clip as JPEG bytes (cycled when the clip is shorter)."""
    frames = [encode_jpeg(f.image) for f in open_source(video)]
    return [frames[i % len(frames)] for i in range(count)]


def summarise(mode: str, streams: int, wall: float, rows: list[dict[str, float]], extra: dict | None = None,
              cpu_ms: float | None = None) -> dict:  # fmt: skip
    lat = np.array([r["total_ms"] for r in rows])
    return {
        "cpu_ms_per_frame": None if cpu_ms is None else cpu_ms / len(rows),
        "mode": mode,
        "streams": streams,
        "frames": len(rows),
        "fps": len(rows) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "stages_ms": {k.removesuffix("_ms"): float(np.mean([r.get(k, 0.0) for r in rows])) for k in STAGES},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **(extra or {}),
    }


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def run_limit(cfg: PipelineConfig, frames: list[bytes], streams: int, people_per_frame: float,
              detect_fraction: float) -> dict:  # fmt: skip
    """The floor: model time alone for this workload (detections per frame, crops per frame) on
    pre-decoded frames and pre-cut crops, at the best pose batch size, in the best of three layouts:
    one call at a time using every core (idle ORT threads spinning or not), or one call per core at
    once (one ORT thread each).
    """
    cores = len(os.sched_getaffinity(0))
    probe = LocalModels(cfg)
    images = [decode_image(f, **LIMITS) for f in frames[:24]]
    det_inputs = [probe.detector.decoder.prepare(im)[0] for im in images]
    top_down = probe.pose is not None
    crops = []
    if top_down:
        crops = [probe.pose.decoder.prepare(im, b)[0] for im in images if len(b := probe.detector(im).boxes)]
    crops_all = np.concatenate(crops) if crops else np.zeros((1, 256, 256, 3), np.uint8)
    layouts = {}
    for workers, threads, spin in ((1, 0, False), (1, 0, True), (cores, 1, False)):
        tuned = cfg.model_copy(deep=True)
        for ort_cfg in (tuned.detector.ort, tuned.pose.ort):
            ort_cfg.intra_op_num_threads, ort_cfg.allow_spinning = threads, spin
        engine = LocalModels(tuned)
        per_crop = {}
        for batch in (1, 2, 4, 8, 16, 32) if top_down else ():
            x = np.ascontiguousarray(np.resize(crops_all, (batch, *crops_all.shape[1:])))
            engine.pose.infer(x)
            t0 = time.perf_counter()
            for _ in range(max(1, 32 // batch)):
                engine.pose.infer(x)
            per_crop[batch] = _ms(t0) / (max(1, 32 // batch) * batch)
        best = min(per_crop, key=per_crop.get) if per_crop else 1
        n_frames = 48  # each worker: detections and crops of 48 frames, crops at the best batch
        n_det = max(1, round(n_frames * detect_fraction))
        n_crops = max(best, round(n_frames * people_per_frame))
        x = np.ascontiguousarray(np.resize(crops_all, (best, *crops_all.shape[1:])))

        def work(x: np.ndarray = x, n_det: int = n_det, n_crops: int = n_crops, best: int = best,
                 engine: LocalModels = engine) -> tuple[float, float]:  # fmt: skip
            t0 = time.perf_counter()
            for i in range(n_det):
                engine.detector.infer(det_inputs[i % len(det_inputs)])
            t1 = time.perf_counter()
            for _ in range(n_crops // best if top_down else 0):
                engine.pose.infer(x)
            return t1 - t0, time.perf_counter() - t1

        work()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(lambda _: work(), range(workers)))
        wall = time.perf_counter() - t0
        fps = workers * n_frames / wall
        det_ms = sum(p[0] for p in parts) / workers / n_frames * 1000
        pose_ms = sum(p[1] for p in parts) / workers / n_frames * 1000
        layouts[f"{workers} x {threads or 'all'} threads" + (", spinning" if spin else "")] = {
            "fps": fps, "detect_ms": det_ms, "pose_ms": pose_ms, "best_pose_batch": best, "pose_ms_per_crop": per_crop,
        }  # fmt: skip
    name, top = max(layouts.items(), key=lambda kv: kv[1]["fps"])
    frame_ms = 1000.0 / top["fps"]
    return {
        "mode": "limit", "streams": streams, "frames": len(frames), "fps": top["fps"],
        "p50_ms": top["detect_ms"] + top["pose_ms"], "p99_ms": top["detect_ms"] + top["pose_ms"],
        "stages_ms": {"decode": 0.0, "detect": top["detect_ms"], "track": 0.0, "pose": top["pose_ms"],
                      "total": frame_ms},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "layout": name, "layouts": layouts,
    }  # fmt: skip


def ort_defaults(cfg: PipelineConfig) -> PipelineConfig:
    """A copy of ``cfg`` whose sessions use ONNX Runtime's own defaults (what a plain
    ``InferenceSession(path)`` gets), as the baselines do."""
    plain = cfg.model_copy(deep=True)
    for ort_cfg in (plain.detector.ort, plain.pose.ort):
        ort_cfg.intra_op_num_threads, ort_cfg.inter_op_num_threads, ort_cfg.allow_spinning = 0, 0, True
        ort_cfg.graph_optimization_level, ort_cfg.execution_mode = "all", "sequential"
    return plain


def run_naive(cfg: PipelineConfig, frames: list[bytes], streams: int) -> dict:
    """Seed-style: every stage in turn, every frame detected, one pose call per person, ONNX
    Runtime's default session options."""
    naive = ort_defaults(cfg)
    naive.detect_every = 1
    engine = LocalModels(naive)
    trackers = [ByteTracker(naive.tracker) for _ in range(streams)]
    rows = []
    t_start = time.perf_counter()
    for data in frames:
        for s in range(streams):
            r: dict[str, float] = {}
            t0 = t = time.perf_counter()
            image = decode_image(data, **LIMITS)
            r["decode_ms"] = _ms(t)
            t = time.perf_counter()
            dets = engine.detector(image)
            r["detect_ms"] = _ms(t)
            t = time.perf_counter()
            tracks = trackers[s].update(dets.boxes, dets.scores)
            r["track_ms"] = _ms(t)
            t = time.perf_counter()
            for track in tracks:
                engine.pose(image, track.det_box[None])
            r["pose_ms"] = _ms(t)
            r["total_ms"] = _ms(t0)
            rows.append(r)
    return summarise("naive", streams, time.perf_counter() - t_start, rows)


def wait_for_parties(barrier: Path, parties: int, timeout_s: float = 300.0) -> None:
    """Start together with the other copies of this run (``parties`` in all, each ready at its own pace):
    each leaves a file in ``barrier`` and goes on once every copy has left one (a copy that failed before
    it never will: then this one fails too, after ``timeout_s``, rather than hang the bench)."""
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while sum(1 for _ in barrier.iterdir()) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other copies did not reach {barrier} within {timeout_s:g} s")
        time.sleep(0.005)


def run_pipeline(cfg: PipelineConfig, frames: list[bytes], streams: int, ready: Callable[[], None] = lambda: None,
                 ) -> dict:  # fmt: skip
    """The product's in-process path on ``streams`` copies of the clip: :func:`posefleet.runner.run_sources`
    (one batched pass a round, frames decoded on the reading thread), ONNX Runtime on every core (of this
    process's affinity). ``ready``: called after the warm-up, just before the measured run."""
    pipeline = Pipeline(tuned_for_streams(cfg, streams))
    pipeline.process("warm-up", decode_image(frames[0], **LIMITS), 0)
    ready()
    rows: list[dict] = []

    def source(name: str) -> Iterator[Frame]:
        for i, data in enumerate(frames):
            yield Frame(i, i / 30.0, decode_image(data, **LIMITS), name)

    def keep(_: Frame, result: FrameResult) -> None:
        rows.append(result.timings.model_dump() | {"people": len(result.people)})

    cpu0, t_start, started_at = machine_cpu_ms(), time.perf_counter(), time.time()
    run_sources(pipeline, {f"s{s}": source(f"s{s}") for s in range(streams)}, keep)
    wall, cpu = time.perf_counter() - t_start, machine_cpu_ms() - cpu0
    extra = {"detect_fraction": 1.0 / cfg.detect_every, "started_at": started_at,
             "people_per_frame": float(np.mean([r["people"] for r in rows]))}  # fmt: skip
    return summarise("in-process", streams, wall, rows, extra, cpu)


def run_rtmlib_style(cfg: PipelineConfig, frames: list[bytes], streams: int) -> dict:
    """rtmlib PoseTracker's loop on our models: per-box pose, IoU ids, boxes from last keypoints,
    sessions opened with ONNX Runtime's defaults as rtmlib opens them."""
    engine = LocalModels(ort_defaults(cfg))
    det_frequency = cfg.detect_every
    state = [{"boxes": np.zeros((0, 4), np.float32), "ids": [], "next_id": 0} for _ in range(streams)]
    rows = []
    t_start = time.perf_counter()
    for i, data in enumerate(frames):
        for s in range(streams):
            st, r = state[s], {}
            t0 = t = time.perf_counter()
            image = decode_image(data, **LIMITS)
            r["decode_ms"] = _ms(t)
            t = time.perf_counter()
            if i % det_frequency == 0 or len(st["boxes"]) == 0:
                boxes = engine.detector(image).boxes
                r["detect_ms"] = _ms(t)
            else:
                boxes = st["boxes"]
            t = time.perf_counter()
            kps = [engine.pose(image, b[None])[0][0] for b in boxes]  # one inference per box
            r["pose_ms"] = _ms(t)
            t = time.perf_counter()
            ious = iou_matrix(boxes, st["boxes"])
            ids = []
            for j in range(len(boxes)):  # greedy: best previous box above 0.3, else a new id
                k = int(np.argmax(ious[j])) if ious.shape[1] else -1
                if k >= 0 and ious[j, k] > 0.3:
                    ids.append(st["ids"][k])
                    ious[:, k] = 0
                else:
                    ids.append(st["next_id"])
                    st["next_id"] += 1
            next_boxes = [keypoint_box(k, cfg.keypoint_min_score, cfg.keypoint_box_padding) for k in kps]
            keep = [j for j, b in enumerate(next_boxes) if b is not None]
            st["boxes"] = np.array([next_boxes[j] for j in keep], np.float32).reshape(-1, 4)
            st["ids"] = [ids[j] for j in keep]
            r["track_ms"] = _ms(t)
            r["total_ms"] = _ms(t0)
            rows.append(r)
    return summarise("rtmlib", streams, time.perf_counter() - t_start, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["limit", "naive", "in-process", "rtmlib"])
    parser.add_argument("--video", required=True)
    parser.add_argument("--frames", type=int, default=120, help="frames per stream")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--people-per-frame", type=float, default=2.0, help="limit: measured workload")
    parser.add_argument("--detect-fraction", type=float, default=0.5, help="limit: measured workload")
    parser.add_argument("--cpu", type=int, help="run on this core only (its threads too)")
    parser.add_argument("--barrier", type=Path, help="in-process: start the measured run with the other copies")
    parser.add_argument("--parties", type=int, default=1, help="how many copies meet at --barrier")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    if args.cpu is not None:  # before any model: ONNX Runtime's and OpenCV's threads inherit it
        os.sched_setaffinity(0, {args.cpu})
    cfg = load_pipeline_config(args.preset)
    frames = load_frames(args.video, args.frames)
    if args.mode == "limit":
        row = run_limit(cfg, frames, args.streams, args.people_per_frame, args.detect_fraction)
    else:
        run = {"naive": run_naive, "rtmlib": run_rtmlib_style}.get(args.mode)
        if run is not None:
            row = run(cfg, frames, args.streams)
        else:
            barrier, parties = args.barrier, args.parties
            ready = (lambda: wait_for_parties(barrier, parties)) if barrier else lambda: None
            row = run_pipeline(cfg, frames, args.streams, ready)
    Path(args.json).write_text(json.dumps(row, indent=2, default=float))


if __name__ == "__main__":
    main()
