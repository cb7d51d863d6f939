"""Players: every preset (and the default before track-guided detection) on the people who matter, in one run.

    python -m bench.players [--quick] [--out bench/results]

Per row: Volleyball player recall and precision (the shared broadcast frame, IoU >= 0.5; with and without
the court drawn as its region of interest), MOT17-mini pedestrian recall and precision, COCO, PoseTrack and
CrowdPose (its 12 body joints, COCO's sigmas) keypoint AP, ids on the basketball clip (as filmed, and through
a virtual camera panning across it), and in-process FPS on court-like input at 1280x720 and 1920x1080 (the
shared volleyball frames played forward and back, and MOT17-mini's 1080p sequences, JPEG q90 decoded as
cameras send them). Then detect-every-N of the default against every frame (ids, fragments, OKS). Tables and
ratios, no asserts; every figure of a row comes from the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
VOLLEYBALL = SHARED / "volleyball" / "deepactrec_vb_39_29885"
CLIP = ROOT / "tests" / "data" / "test_video_structuralize.mp4"
# The court of the shared volleyball camera (frame 29885, 1920x1080) with its free zone, as a user would draw
# it: image points round the playing area, the stands, benches and line judges outside.
VOLLEYBALL_COURT = [[250, 520], [1860, 520], [1920, 900], [0, 900]]
# The default preset before this section's work (configs/balanced.yaml of 2026-12-01): MoveNet at 320 on the
# whole frame and a 2x1 grid of tiles on wide frames, every frame, at most 6 people a call.
PREVIOUS_DEFAULT: dict[str, Any] = {
    "detect_every": 1,
    "detector": {
        "scan": {"adaptive": False, "split_full": False},
        "guided": {"enabled": False},
        "tiling": {"enabled": True, "cols": 2, "rows": 1, "overlap": 0.25, "include_full_frame": True,
                   "min_aspect": 1.6},
    },
}  # fmt: skip
# MoveNet Thunder (shipped, models/NOTICE) as the top-down pose model: one crop a call, no alignment
THUNDER: dict[str, Any] = {"decoder": "movenet-single", "model": "movenet_thunder", "input_width": 256,
                           "input_height": 256, "max_batch": 1, "align": False, "min_person_score": 0.2}  # fmt: skip
# the top-down preset's pose model before Thunder: BlazePose landmark (full) on crops aligned by the body
BLAZEPOSE: dict[str, Any] = {"decoder": "blazepose", "model": "blazepose_landmark_full", "input_width": 256,
                             "input_height": 256, "max_batch": 32, "align": True, "min_person_score": 0.5}  # fmt: skip
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("previous default (2x1 tiles, capped)", "balanced", PREVIOUS_DEFAULT),
    ("balanced (default)", "balanced", {}),
    ("balanced, carried frames extrapolated (no flow)", "balanced", {"flow": {"enabled": False}}),
    ("balanced, people followed, no camera motion", "balanced", {"flow": {"camera": False}}),
    ("balanced, crops 64 px", "balanced", {"detector": {"guided": {"min_person_px": 64}}}),
    ("balanced, crops 96 px", "balanced", {"detector": {"guided": {"min_person_px": 96}}}),
    ("quality", "quality", {}),
    ("crowd", "crowd", {}),
    ("fast", "fast", {}),
    ("top-down: MoveNet Thunder crops", "top-down", {}),
    ("top-down: BlazePose, aligned crops (the previous top-down)", "top-down", {"pose": BLAZEPOSE}),
]
PAN_PERIOD = 20  # frames the virtual camera takes to pan across and back (the basketball clip, panned)
PAIRED_ROUNDS = 3  # back-to-back FPS pairs of the default against the previous default, for the ratio
# Candidates converted by scripts/convert_models.py --human but not shipped: rows where the file is there.
NANODET = ROOT / "models" / "candidates" / "nanodet_416.onnx"
CANDIDATES: list[tuple[str, str, dict[str, Any]]] = [
    ("top-down: NanoDet 416 detector, Thunder crops", "top-down", {"pose": THUNDER, "detector": {
        "decoder": "nanodet", "model": str(NANODET), "input_size": 416, "score_threshold": 0.3,
        "scan": {"adaptive": True, "min_person_px": 64}}}),
]  # fmt: skip


def court_like(size: tuple[int, int] | None, quick: bool) -> list[list[np.ndarray]]:
    """Streams of court-like frames as cameras send them (JPEG q90, decoded), each a few frames played forward
    and back three times (a camera runs for hours: its first frames' whole scans are not its steady cost): the
    shared volleyball frames, resized to ``size``; MOT17-mini's 1080p sequences too at 1920x1080."""
    frames = sorted((VOLLEYBALL / "frames").glob("*.jpg"))
    if not frames:
        return []
    def played(shots: list[np.ndarray]) -> list[np.ndarray]:  # a camera's length from a few frames
        return (shots + shots[::-1]) * (1 if quick else 3)

    streams = [played([cv2.imread(str(p)) for p in frames])]
    if size is None or size[0] == 1920:
        for seq in sorted(SHARED.glob("mot17-mini/*/img1")):
            seq_frames = [cv2.imread(str(p)) for p in sorted(seq.glob("*.jpg"))]
            if seq_frames and seq_frames[0].shape[1] == 1920 and not quick:
                streams.append(played(seq_frames))
    out = []
    for stream in streams:
        sized = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) if size and f.shape[1] != size[0] else f
                 for f in stream]  # fmt: skip
        out.append([cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], 1) for f in sized])
    return out


def fps_on(pipeline: Any, streams: list[list[np.ndarray]]) -> float:
    """Frames a second over the streams, one after the other (each its own stream, warmed by its first frame)."""
    total, spent = 0, 0.0
    for k, frames in enumerate(streams):
        pipeline.process(f"fps-{k}", frames[0], 0)
        t0 = time.perf_counter()
        for i, f in enumerate(frames[1:], 1):
            pipeline.process(f"fps-{k}", f, i)
        spent += time.perf_counter() - t0
        total += len(frames) - 1
        pipeline.forget(f"fps-{k}")
    return total / spent if spent else 0.0


def paired_ratios(base: Any, new: Any, streams: list[list[np.ndarray]], rounds: int) -> list[float]:
    """``new``'s FPS over ``base``'s, measured back to back ``rounds`` times, which one goes first alternating:
    this machine's speed drifts 20-40% over minutes, so rows measured minutes apart do not compare."""
    ratios = []
    for k in range(rounds):
        pair = (base, new) if k % 2 == 0 else (new, base)
        fps = dict(zip(("first", "second"), (fps_on(p, streams) for p in pair), strict=True))
        b, n = (fps["first"], fps["second"]) if k % 2 == 0 else (fps["second"], fps["first"])
        ratios.append(n / b if b else 0.0)
    return ratios


def basketball_ids(pipeline: Any, frames: list[np.ndarray]) -> int:
    ids = {p.track_id for i, f in enumerate(frames) for p in pipeline.process("basketball", f, i).people}
    pipeline.forget("basketball")
    return len(ids)


def virtual_pan(frames: list[np.ndarray], period: int = PAN_PERIOD) -> list[np.ndarray]:
    """The clip seen by a camera that pans: each frame's 70% window, sliding from side to side and back every
    ``period`` frames, enlarged to the frame's size (the same people; only the camera moves)."""
    out = []
    for i, f in enumerate(frames):
        h, w = f.shape[:2]
        cw, ch = 0.7 * w, 0.7 * h
        x = (w - cw) / 2 * (1 + math.sin(2 * math.pi * i / period))
        m = np.float32([[w / cw, 0, -x * w / cw], [0, h / ch, -(h - ch) / 2 * h / ch]])
        out.append(cv2.warpAffine(f, m, (w, h)))
    return out


def section_players(quick: bool, bar: tqdm | None = None) -> dict[str, Any]:
    from posefleet.boxes import evaluate_frames, read_mot, read_volleyball
    from posefleet.config import load_pipeline_config
    from posefleet.evaluate import evaluate
    from posefleet.pipeline.engine import Pipeline
    from posefleet.sources import open_source

    vb = read_volleyball(VOLLEYBALL / "annotations.txt") if (VOLLEYBALL / "annotations.txt").is_file() else []
    mot = [read_mot(p) for p in sorted(SHARED.glob("mot17-mini/*")) if (p / "seqinfo.ini").is_file()]
    keypoint_sets = {
        "coco": (SHARED / "coco" / "test_coco.json", SHARED / "coco"),
        "posetrack": (SHARED / "posetrack18" / "annotations" / "test_posetrack18_val.json", SHARED / "posetrack18"),
        "crowdpose": (SHARED / "crowdpose" / "test_crowdpose.json", SHARED / "crowdpose"),  # its 12 body joints
    }
    keypoint_sets = {k: v for k, v in keypoint_sets.items() if v[0].is_file()}
    clip = [f.image for _, f in zip(range(60 if quick else 300), open_source(str(CLIP)), strict=False)]
    panned = virtual_pan(clip)
    inputs = {"720p": court_like((1280, 720), quick), "1080p": court_like((1920, 1080), quick)}
    rows = []
    models: dict[str, Any] = {}
    pipelines: dict[str, Any] = {}
    rows_run = ROWS[:2] if quick else ROWS + (CANDIDATES if NANODET.is_file() else [])
    for name, preset, overrides in rows_run:
        cfg = load_pipeline_config(preset, overrides=overrides)
        pipeline = Pipeline(cfg)
        models[name], pipelines[name] = pipeline.models, pipeline
        row: dict[str, Any] = {"row": name, "preset": preset}
        for label, streams in inputs.items():
            row[f"fps_{label}"] = fps_on(pipeline, streams) if streams else None
        if vb:
            row["volleyball"] = evaluate_frames(pipeline, vb, "vb")
            court = cfg.model_copy(update={"stream": cfg.stream.model_copy(update={"roi": VOLLEYBALL_COURT})})
            row["volleyball_court"] = evaluate_frames(Pipeline(court, pipeline.models), vb, "vb-court")
        if mot:
            found = [evaluate_frames(pipeline, frames, f"mot-{k}") for k, frames in enumerate(mot)]
            people = sum(r["people"] for r in found)
            hits = sum((r["recall"] or 0) * r["people"] for r in found)
            returned = sum(r["returned_per_frame"] * r["frames"] for r in found)
            row["mot"] = {"recall": hits / people if people else None,
                          "precision": hits / returned if returned else None}  # fmt: skip
        for key, (ann, images) in keypoint_sets.items():
            row[f"{key}_AP"] = evaluate(pipeline, ann, images)["AP"]
        row["basketball_ids"] = basketball_ids(pipeline, clip)
        row["basketball_ids_panned"] = basketball_ids(pipeline, panned)
        rows.append(row)
        if bar is not None:
            bar.update(1)
    ns, shared = [2] if quick else [2, 3, 5], models.get("balanced (default)")
    detect_every = detect_every_rows("balanced", clip, ns, shared)
    for r in detect_every_rows("balanced", clip, ns, shared, {"flow": {"enabled": False}})[1:]:
        detect_every.append(r | {"flow": False})
    if bar is not None:
        bar.update(1)
    base = next((p for name, p in pipelines.items() if name.startswith("previous")), None)
    new = pipelines.get("balanced (default)")
    ratios = {}
    if base and new:
        for label, streams in inputs.items():
            if streams:
                paired = paired_ratios(base, new, streams, 1 if quick else PAIRED_ROUNDS)
                ratios[f"default FPS {label}, x the previous default (median of {len(paired)} back-to-back "
                       f"pairs: {', '.join(f'{r:.2f}' for r in paired)})"] = float(np.median(paired))  # fmt: skip
    return {"rows": rows, "detect_every": detect_every, "ratios": ratios, "court": VOLLEYBALL_COURT}


def detect_every_rows(
    preset: str, clip: list[np.ndarray], ns: list[int], models: Any = None, overrides: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """A preset (with ``overrides``) detecting every N frames against every frame on the same clip: id
    switches, fragmentations, share matched and keypoint OKS against the every-frame run, and FPS."""
    from posefleet.config import load_pipeline_config
    from posefleet.evaluate import tracking_consistency
    from posefleet.pipeline.engine import Pipeline

    def run(n: int) -> tuple[list, float]:
        pipeline = Pipeline(load_pipeline_config(preset, overrides={**(overrides or {}), "detect_every": n}), models)
        t0 = time.perf_counter()
        out = [pipeline.process("clip", f, i) for i, f in enumerate(clip)]
        return out, len(clip) / (time.perf_counter() - t0)

    reference, fps1 = run(1)
    rows = [{"detect_every": 1, "fps": fps1, "id_switches": 0, "fragmentations": 0, "matched": 1.0,
             "mean_oks_vs_reference": 1.0}]  # fmt: skip
    for n in ns:
        test, fps = run(n)
        rows.append({"detect_every": n, "fps": fps, **tracking_consistency(reference, test)})
    return rows


def _f(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(res: dict[str, Any]) -> str:
    lines = ["Players: recall is the share of annotated people matched one-to-one by a returned box at IoU >= 0.5; "
             "Volleyball precision counts every returned person who is not an annotated player against it "
             "(referees, line judges, the crowd); `court` draws the court as the stream's region of interest "
             f"({res['court']}). FPS: in process, 1 stream, court-like JPEGs.", "",
             "| preset | FPS 720p | FPS 1080p | volleyball recall / precision / people | with the court: recall / "
             "precision | MOT17-mini recall / precision | COCO AP | PoseTrack AP | CrowdPose AP (12 body joints) "
             "| basketball ids | the same, panned |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        vb, court, mot = r.get("volleyball") or {}, r.get("volleyball_court") or {}, r.get("mot") or {}
        lines.append(
            f"| {r['row']} | {_f(r.get('fps_720p'), '.1f')} | {_f(r.get('fps_1080p'), '.1f')} | "
            f"{_f(vb.get('recall'), '.2f')} / {_f(vb.get('precision'), '.2f')} / "
            f"{_f(vb.get('returned_per_frame'), '.0f')} | "
            f"{_f(court.get('recall'), '.2f')} / {_f(court.get('precision'), '.2f')} | "
            f"{_f(mot.get('recall'), '.3f')} / {_f(mot.get('precision'), '.3f')} | {_f(r.get('coco_AP'), '.3f')} | "
            f"{_f(r.get('posetrack_AP'), '.3f')} | {_f(r.get('crowdpose_AP'), '.3f')} | {r['basketball_ids']} | "
            f"{r.get('basketball_ids_panned', '')} |"
        )
    lines += ["", "Default preset, detect every N against every frame (basketball clip); carried frames follow each "
              "person by optical flow, or (no flow) extrapolate the tracker's last velocity:", "",
              "| detect every | carried frames | FPS | id switches | fragmentations | matched | keypoint OKS vs every "
              "frame |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['detect_every']} | {'flow' if r.get('flow', True) else 'no flow'} | {r['fps']:.1f} | "
              f"{r['id_switches']} | {r['fragmentations']} | {r['matched']:.2f} | {r['mean_oks_vs_reference']:.3f} |"
              for r in res["detect_every"]]  # fmt: skip
    if res["ratios"]:
        lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two rows, short inputs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = 2 if args.quick else len(ROWS) + len(CANDIDATES) * NANODET.is_file()
    with tqdm(total=rows + 1, desc="players", unit="row") as bar:
        res = section_players(args.quick, bar) | {"date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "players.json").write_text(json.dumps(res, indent=2, default=str))
    md = markdown(res)
    (out / "players.md").write_text(md)
    print("\n" + md)
    from bench import report

    print(f"written: {out / 'players.md'}, {report.write(out)}")


if __name__ == "__main__":
    main()
