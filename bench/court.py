"""Court-level fusion, measured on the real multi-view demos of Pose2Sim (four calibrated cameras of one room, one
person in one demo and two in the other) and beside Pose2Sim's own association and triangulation:

    python -m bench.court [--quick] [--out bench/results] [--pose2sim-python PATH]

1. posefleet's 2D (the default preset) on every camera, in process;
2. whether the cameras start in sync: each camera's frames shifted against cam01's, the offset whose two-view
   triangulation reprojects best (0 everywhere: in sync);
3. posefleet's fusion: group ids, reprojection error (median, p90), limb-length coefficient of variation (with
   each player's bone lengths held, the default, and as triangulated), CPU-ms per group frame; and at 4 cameras
   x 12 people, the demo's real 3D poses replayed at 12 places;
4. Pose2Sim 0.10.49's association and triangulation of the same 2D (OpenPose JSON, our calibration written as
   its TOML), run with the interpreter of an environment holding the ``pose2sim`` extra (``--pose2sim-python``,
   or ``POSEFLEET_POSE2SIM_PYTHON``); its reprojection error and the distance between the two 3D results.

Writes ``court.md`` and ``court.json`` under ``--out``; figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from posefleet.config import load_pipeline_config
from posefleet.court.calibration import Camera, load_calibration, write_toml
from posefleet.court.fusion import GroupFuser
from posefleet.court.schema import GroupFrame
from posefleet.court.settings import GroupSettings
from posefleet.court.triangulate import triangulate
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.schema import FrameResult, Person
from posefleet.runner import run_sources
from posefleet.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "multiview" / "pose2sim"
CAMS = ["cam01", "cam02", "cam03", "cam04"]
FPS = 60.0
LIMBS = {  # COCO keypoint pairs
    "upper arm L": (5, 7), "upper arm R": (6, 8), "forearm L": (7, 9), "forearm R": (8, 10),
    "thigh L": (11, 13), "thigh R": (12, 14), "shank L": (13, 15), "shank R": (14, 16),
}  # fmt: skip
MAX_OFFSET = 8  # frames each camera is shifted by, either way, in the sync check


def demos() -> dict[str, Path]:
    """Each demo's folder (videos/, calibration/); the multi-person one from tests/data on a fresh clone."""
    found = {d: SHARED / f"Demo_{d}" for d in ("SinglePerson", "MultiPerson") if (SHARED / f"Demo_{d}").is_dir()}
    return found or {"MultiPerson": ROOT / "tests" / "data" / "pose2sim"}


def videos_of(folder: Path) -> list[Path]:
    sub = folder / "videos"
    return [(sub if sub.is_dir() else folder) / f"{c}.mp4" for c in CAMS]


def calibration_of(folder: Path) -> Path:
    sub = folder / "calibration" / "Calib.qca.txt"
    return sub if sub.is_file() else folder / "Calib.qca.txt"


def run_2d(folder: Path, frames: int | None, preset: str = "balanced") -> list[dict[str, FrameResult]]:
    """A preset's pipeline on the four cameras, one round (one frame each) at a time."""
    pipeline = Pipeline(load_pipeline_config(preset))
    rounds: list[dict[str, FrameResult]] = []
    sources = {c: open_source(str(v)) for c, v in zip(CAMS, videos_of(folder), strict=True)}
    run_sources(pipeline, sources, lambda f, r: None, frames, lambda rs: rounds.append({r.stream_id: r for r in rs}))
    return rounds


def fuse(cameras: dict[str, Camera], rounds: list[dict[str, FrameResult]], bones: bool = True) -> list[GroupFrame]:
    """The group's frames; ``bones``: with each player's bone lengths held (the default), else as triangulated."""
    settings = GroupSettings.model_validate({"fusion": {"bones": {"enabled": bones}}})
    fuser = GroupFuser("room", settings, cameras)
    return [fuser.fuse({s: r.model_copy(deep=True) for s, r in rs.items()}, i / FPS) for i, rs in enumerate(rounds)]


def sync_offsets(cameras: dict[str, Camera], rounds: list[dict[str, FrameResult]], fused: list[GroupFrame],
                 passes: int = 3) -> dict:  # fmt: skip
    """Each camera's lag in frames, relative to cam01. A camera's 2D is compared with the 3D the other cameras
    triangulate (each read at its current lag), its own detection of the person (its track, as the fusion paired
    them at lag 0) read at frame i + offset: the median pixel error over offsets -8..+8 has its minimum at the
    camera's lag. Solved camera by camera, ``passes`` times over, since each lag is measured against the others'."""

    def person(stream: str, frame: int, track: int) -> np.ndarray | None:
        if not 0 <= frame < len(rounds) or stream not in rounds[frame]:
            return None
        return next((np.array(p.keypoints) for p in rounds[frame][stream].people if p.track_id == track), None)

    lag = dict.fromkeys(CAMS, 0)
    curves: dict[str, dict[int, float]] = {}
    for _ in range(passes):
        for cam in CAMS:
            fixed: list[tuple[int, int, np.ndarray]] = []  # (frame, this camera's track, the others' 3D)
            for i, f in enumerate(fused):
                for p in f.people:
                    others = [s for s in p.views if s != cam]
                    kps = [person(s, i + lag[s], p.views[s]) for s in others]
                    if cam in p.views and sum(k is not None for k in kps) >= 2:
                        use = [(s, k) for s, k in zip(others, kps, strict=True) if k is not None]
                        tri = triangulate([cameras[s] for s, _ in use], np.stack([k for _, k in use]))
                        fixed.append((i, p.views[cam], tri.points))
            errors = {}
            for off in range(-MAX_OFFSET, MAX_OFFSET + 1):
                errs = []
                for i, track, X in fixed:
                    kp = person(cam, i + off, track)
                    if kp is not None:
                        ok = np.isfinite(X).all(axis=1) & (kp[:, 2] >= 0.3)
                        errs += list(np.linalg.norm(cameras[cam].project(X[ok]) - kp[ok, :2], axis=1))
                if errs:
                    errors[off] = float(np.median(errs))
            if errors:
                lag[cam] = min(errors, key=errors.get)
                curves[cam] = errors
    base = lag[CAMS[0]]
    return {cam: {"lag_frames": lag[cam] - base, "px_at_lag": round(curves[cam][lag[cam]], 2),
                  "px_at_0": round(curves[cam].get(base, np.nan), 2)} for cam in curves}  # fmt: skip


def fusion_stats(fused: list[GroupFrame]) -> dict[str, Any]:
    errors = [e for f in fused for p in f.people for e in (p.reprojection_px or []) if e is not None]
    ids = sorted({p.group_id for f in fused for p in f.people})
    cv: dict[str, list[float]] = {}
    for gid in ids:
        for limb, (a, b) in LIMBS.items():
            lengths = []
            for f in fused:
                for p in f.people:
                    if p.group_id == gid and p.keypoints3d and p.keypoints3d[a][3] > 0 and p.keypoints3d[b][3] > 0:
                        lengths.append(np.linalg.norm(np.subtract(p.keypoints3d[a][:3], p.keypoints3d[b][:3])))
            if len(lengths) > 10:
                cv.setdefault(limb, []).append(float(np.std(lengths) / np.mean(lengths)))
    ms = [f.fusion_ms for f in fused]
    return {
        "frames": len(fused), "group_ids": len(ids),
        "people_per_frame": round(float(np.mean([len(f.people) for f in fused])), 2),
        "reproj_median_px": round(float(np.median(errors)), 2),
        "reproj_p90_px": round(float(np.percentile(errors, 90)), 2),
        "limb_cv_max": {k: round(max(v), 3) for k, v in cv.items()},
        "fusion_ms_median": round(float(np.median(ms)), 2),
    }  # fmt: skip


def replay_12(cameras: dict[str, Camera], fused: list[GroupFrame], noise_px: float = 3.0,
              passes: int = 3) -> dict[str, Any]:  # fmt: skip
    """4 cameras x 12 people: the demo's real 3D poses placed at 12 spots 1.5 m apart, projected into each camera
    with ``noise_px`` of noise (the 2D a real court's cameras would give), fused frame by frame; the demo played
    ``passes`` times over, so that the median CPU time is of a few hundred frames."""
    rng = np.random.default_rng(0)
    poses = [np.array(p.keypoints3d) for f in fused for p in f.people[:1] if p.keypoints3d] * passes
    spots = [(dx, dy) for dx in (-1.5, 0.0, 1.5) for dy in (-2.25, -0.75, 0.75, 2.25)]
    fuser = GroupFuser("replay", GroupSettings(), cameras)
    ms, ids, people = [], set(), []
    for i, pose in enumerate(poses):
        results = {}
        for cam in CAMS:
            persons = []
            for k, (dx, dy) in enumerate(spots):
                X = pose[:, :3] - [pose[:, 0].mean() - dx, pose[:, 1].mean() - dy, 0.0]
                px = cameras[cam].project(X) + rng.normal(0, noise_px, (17, 2))
                kp = np.c_[px, np.where(pose[:, 3] > 0, 0.8, 0.0)]
                persons.append(Person(track_id=k + 1, box=(*px.min(0), *px.max(0)), score=0.9, keypoints=kp.tolist()))
            w, h = cameras[cam].size
            results[cam] = FrameResult(stream_id=cam, frame_index=i, width=w, height=h, people=persons)
        t0 = time.thread_time()
        frame = fuser.fuse(results, i / FPS)
        ms.append((time.thread_time() - t0) * 1000)
        ids |= {p.group_id for p in frame.people}
        people.append(len(frame.people))
    return {"frames": len(poses), "people_per_frame": round(float(np.mean(people)), 2), "group_ids": len(ids),
            "fusion_ms_median": round(float(np.median(ms)), 2),
            "fusion_ms_p90": round(float(np.percentile(ms, 90)), 2)}  # fmt: skip


def pose2sim_python(arg: str | None) -> str | None:
    path = arg or os.environ.get("POSEFLEET_POSE2SIM_PYTHON")
    return path if path and Path(path).is_file() else None


def run_pose2sim(python: str, folder: Path, cameras: dict[str, Camera], rounds: list[dict[str, FrameResult]],
                 single: bool) -> dict[str, Any]:  # fmt: skip
    """Pose2Sim's association and triangulation of our 2D, in its own environment."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        (project / "calibration").mkdir(parents=True)
        write_toml(cameras, project / "calibration" / "Calib_posefleet.toml")
        for cam in CAMS:
            folder_json = project / "pose" / f"{cam}_json"
            folder_json.mkdir(parents=True)
            for i, rs in enumerate(rounds):
                people = [{"person_id": [-1], "pose_keypoints_2d": np.ravel(p.keypoints).tolist()}
                          for p in rs[cam].people]  # fmt: skip
                (folder_json / f"{cam}_{i:06d}.json").write_text(json.dumps({"version": 1.3, "people": people}))
        config = folder / "Config.toml"
        if not config.is_file():
            config = SHARED / "Demo_MultiPerson" / "Config.toml"
        out = Path(tmp) / "out.json"
        cmd = [python, str(ROOT / "bench" / "pose2sim_run.py"), str(project), str(config), str(out)]
        done = subprocess.run(cmd + (["--single"] if single else []), capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not out.is_file():
            return {"error": (done.stderr or done.stdout)[-600:]}
        return json.loads(out.read_text())


def compare(cameras: dict[str, Camera], rounds: list[dict[str, FrameResult]], fused: list[GroupFrame],
            theirs: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Both 3D results' reprojection errors measured the same way (each 3D point of a joint both solved into
    every view of that person, our association's, that saw the joint), and the distance per joint between
    Pose2Sim's 3D and ours (each of its people matched to our nearest)."""
    ours = {(i, p.group_id): np.array(p.keypoints3d) for i, f in enumerate(fused) for p in f.people if p.keypoints3d}
    dist, reproj, mine_reproj = [], [], []
    per_joint: dict[int, list[float]] = {}
    for person in theirs["people"]:
        for frame_s, points in person.items():
            i = int(frame_s)
            mine = [(gid, k) for (j, gid), k in ours.items() if j == i]
            P = np.array([p if p is not None else [np.nan] * 3 for p in points], dtype=float)
            if not mine or not np.isfinite(P).any():
                continue
            gid, k = min(mine, key=lambda m: np.nanmean(np.linalg.norm(m[1][:, :3] - P, axis=1)))
            ok = np.isfinite(P).all(axis=1) & (k[:, 3] > 0)
            for j in np.flatnonzero(ok):
                d = float(np.linalg.norm(P[j] - k[j, :3]))
                per_joint.setdefault(int(j), []).append(d)
                dist.append(d)
            views = next(p.views for p in fused[i].people if p.group_id == gid)
            for s, tid in views.items():
                kp = next(np.array(q.keypoints) for q in rounds[i][s].people if q.track_id == tid)
                seen = np.isfinite(P).all(axis=1) & (kp[:, 2] >= 0.3) & (k[:, 3] > 0)
                if seen.any():  # both 3D results into the same views, at the joints both solved
                    reproj += list(np.linalg.norm(cameras[s].project(P[seen]) - kp[seen, :2], axis=1))
                    mine_reproj += list(np.linalg.norm(cameras[s].project(k[seen, :3]) - kp[seen, :2], axis=1))
    if not dist:
        return {"error": "no 3D point of Pose2Sim's matched ours"}
    cv: dict[str, float] = {}
    for person in theirs["people"]:
        for limb, (a, b) in LIMBS.items():
            lengths = [np.linalg.norm(np.subtract(pts[a], pts[b])) for pts in person.values()
                       if pts[a] is not None and pts[b] is not None]  # fmt: skip
            if len(lengths) > 10:
                cv[limb] = max(cv.get(limb, 0.0), round(float(np.std(lengths) / np.mean(lengths)), 3))
    return {
        "pose2sim_people": len(theirs["people"]), "pose2sim_seconds": round(theirs.get("seconds", 0.0), 1),
        "pose2sim_reproj_median_px": round(float(np.median(reproj)), 2),
        "pose2sim_reproj_p90_px": round(float(np.percentile(reproj, 90)), 2),
        "posefleet_reproj_median_px_same_views": round(float(np.median(mine_reproj)), 2),
        "posefleet_reproj_p90_px_same_views": round(float(np.percentile(mine_reproj, 90)), 2),
        "distance_median_mm": round(1000 * float(np.median(dist)), 1),
        "pose2sim_limb_cv_max": cv,
        "distance_median_mm_per_joint": {j: round(1000 * float(np.median(v)), 1) for j, v in sorted(per_joint.items())},
    }  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    lines = ["| demo | frames | group ids | people/frame | reproj median px | p90 px |"
             " worst limb CV: held / as triangulated | fusion CPU-ms | same views: posefleet median / p90 px |"
             " Pose2Sim median / p90 px | Pose2Sim worst limb CV |"
             " median 3D distance to Pose2Sim mm |", "|" + "---|" * 12]  # fmt: skip
    for demo, r in res["demos"].items():
        f, p = r["fusion"], r.get("pose2sim", {})
        worst = max(f["limb_cv_max"].items(), key=lambda kv: kv[1]) if f["limb_cv_max"] else ("-", 0)
        unheld = f.get("limb_cv_max_unheld") or {}
        raw = "{1:.3f} ({0})".format(*max(unheld.items(), key=lambda kv: kv[1])) if unheld else "-"
        theirs = p.get("pose2sim_limb_cv_max") or {}
        their_worst = "{1:.3f} ({0})".format(*max(theirs.items(), key=lambda kv: kv[1])) if theirs else "-"
        lines.append(
            f"| {demo} | {f['frames']} | {f['group_ids']} | {f['people_per_frame']} | {f['reproj_median_px']} | "
            f"{f['reproj_p90_px']} | {worst[1]:.3f} ({worst[0]}) / {raw} | {f['fusion_ms_median']} | "
            f"{p.get('posefleet_reproj_median_px_same_views', '-')} / "
            f"{p.get('posefleet_reproj_p90_px_same_views', '-')} | "
            f"{p.get('pose2sim_reproj_median_px', p.get('skipped', str(p.get('error', '-'))[-60:]))} / "
            f"{p.get('pose2sim_reproj_p90_px', '-')} | {their_worst} | {p.get('distance_median_mm', '-')} |"
        )
    lines += ["", "Sync check: each camera's lag in frames (60 fps) against cam01, where its 2D best fits the 3D of "
              "the "
              "other three: +2 is a video whose frame i + 2 shows what cam01's frame i shows, a video started 2 frames "
              "(33 ms) before cam01's. Median px at that lag / with no lag:", "",
              "| demo | " + " | ".join(CAMS) + " |", "|" + "---|" * (len(CAMS) + 1)]  # fmt: skip
    for demo, r in res["demos"].items():
        cells = [f"{s['lag_frames']:+d} ({s['px_at_lag']} / {s['px_at_0']})" if (s := r["sync"].get(c)) else "-"
                 for c in CAMS]  # fmt: skip
        lines.append(f"| {demo} | " + " | ".join(cells) + " |")
    rp = res["replay_12"]
    lines += ["", f"4 cameras x 12 people (the demo's real 3D poses replayed at 12 places, 3 px noise): "
              f"{rp['people_per_frame']} people a frame, {rp['group_ids']} group ids, fusion "
              f"{rp['fusion_ms_median']} CPU-ms median, {rp['fusion_ms_p90']} p90 a group frame over "
              f"{rp['frames']} frames (the fusing thread's CPU time; the demo played 3 times).", "",
              f"2D from the {res['preset']} preset. Machine: {res['machine']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 frames a demo, no Pose2Sim")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--pose2sim-python", help="the interpreter of an environment with the pose2sim extra")
    parser.add_argument("--preset", default="balanced", help="the preset whose 2D is fused (default: the default)")
    args = parser.parse_args()
    from bench.__main__ import machine

    frames = 30 if args.quick else None
    python = None if args.quick else pose2sim_python(args.pose2sim_python)
    res: dict[str, Any] = {"machine": machine(), "preset": args.preset, "demos": {}}
    found = demos()
    replayed: tuple[dict[str, Camera], list[GroupFrame]] | None = None
    with tqdm(total=len(found) * 3 + 1, desc="court bench", unit="step") as bar:
        for demo, folder in found.items():
            cameras = load_calibration(calibration_of(folder))
            rounds = run_2d(folder, frames, args.preset)
            bar.update(1)
            fused = fuse(cameras, rounds)
            replayed = replayed or (cameras, fused)
            res["demos"][demo] = {"fusion": fusion_stats(fused), "sync": sync_offsets(cameras, rounds, fused)}
            unheld = fusion_stats(fuse(cameras, rounds, bones=False))["limb_cv_max"]
            res["demos"][demo]["fusion"]["limb_cv_max_unheld"] = unheld
            bar.update(1)
            if python:
                # Pose2Sim's single-person association fails on COCO-17 (IndexError in 0.10.49): multi-person for both
                theirs = run_pose2sim(python, folder, cameras, rounds, single=False)
                res["demos"][demo]["pose2sim"] = (
                    theirs if "error" in theirs else compare(cameras, rounds, fused, theirs)
                )
            else:
                res["demos"][demo]["pose2sim"] = {"skipped": "no --pose2sim-python"}
            bar.update(1)
        res["replay_12"] = replay_12(*replayed)
        bar.update(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "court.json").write_text(json.dumps(res, indent=1))
    (out / "court.md").write_text(markdown(res))
    print(markdown(res))
    from bench import report

    print(f"written: {out / 'court.md'}, {report.write(out)}")


if __name__ == "__main__":
    sys.exit(main())
