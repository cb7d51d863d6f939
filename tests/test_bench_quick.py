"""The benchmark harness runs end to end (a small slice; speeds are reported, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posefleet.pipeline.frames import LocalModels

pytestmark = pytest.mark.slow  # a real Ray and Serve: the fast subset (-m 'not slow') leaves it out

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_writes_tables_plot_and_ratios(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    modes = {(r["mode"], r["streams"]) for r in res["inprocess"] + res["served"]}
    assert {("limit", 1), ("naive", 1), ("in-process", 1), ("in-process", 2), ("rtmlib", 1)} <= modes
    assert {(f"served-{t}", k) for t in ("ws", "batch", "http") for k in (1, 2)} <= modes
    assert all(r["fps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in res["inprocess"] + res["served"])
    served = [r for r in res["served"] if "%" not in r["mode"]]
    assert all(r["cpu_ms_per_frame"] > 0 and r["ray_calls_per_frame"] is not None for r in served)
    for r in served:  # where the CPU went, and how the streams were placed (the ingress holds them all here)
        assert r["cpu_ms_per_frame_by_process"]["ray::ServeReplica:posefleet:Ingress"] > 0.1, r
        assert sum(r["frames_per_worker"]) == r["frames"], r
    assert {"in-process/naive (top-down)", "served-ws 2 streams / in-process 2 streams"} <= set(res["ratios"])
    # AP of real models on real people: a broken decoder, mapping or evaluator scores about 0 (on the shared
    # COCO sample the default scores 0.66, the fast preset 0.33)
    accuracy = res["accuracy"]
    assert accuracy[0]["preset"] == "balanced" and accuracy[0]["coco_AP"] > 0.5, accuracy
    assert all(r["coco_AP"] > 0.2 for r in accuracy), accuracy
    assert res["variants"] and all("AP" in v for v in res["variants"])
    assert res["detect_every"][1]["detect_every"] == 3
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
    assert "| ratio | value |" in (tmp_path / "results.md").read_text()
    if (ROOT.parent / "shared/data/mot17-mini").is_dir():  # read from beside the checkout, never copied
        assert res["crowd"] and 0.0 <= res["crowd"][0]["recall"] <= 1.0
        assert 0.0 <= res["accuracy"][0]["mot_recall"] <= 1.0
        assert "MOT17-mini" in (tmp_path / "results.md").read_text()


def test_the_scaling_reference_runs_pinned_copies_together() -> None:
    """The scaling curve's reference: in-process copies pinned one to a core, their measured runs started
    together (each loads its models at its own pace first), and the table that shows them."""
    from bench.__main__ import DEFAULT_VIDEO, inprocess_per_core, markdown

    cores = sorted(os.sched_getaffinity(0))[:2]
    rows = [inprocess_per_core(str(DEFAULT_VIDEO), 6, cores[:k]) for k in range(1, len(cores) + 1)]
    for k, row in enumerate(rows, 1):
        assert row["cores"] == k and row["streams"] == 4 * k and len(row["fps_of_each"]) == k
        assert row["fps"] == pytest.approx(sum(row["fps_of_each"])) and row["fps"] > 0
        assert row["start_spread_ms"] < 100  # the barrier: a copy's model loading does not shift its start
        row |= {"speedup": row["fps"] / rows[0]["fps"], "rounds_fps": [row["fps"]]}
    point = {"nodes": 1, "streams": 4, "fps": 20.0, "fps_to_last": 19.0, "p99_ms": 100.0, "machine_cpu": 0.5,
             "speedup": 1.0, "speedup_to_last": 1.0, "efficiency": 1.0, "of_inprocess": 20.0 / rows[0]["fps"],
             "rounds_fps": [20.0]}  # fmt: skip
    scaling = {"rows": [point], "rounds": 1, "inprocess_per_core": rows}
    md = markdown({"date": "d", "machine": "m", "video": "v", "frames": 6, "quick": False, "inprocess": [],
                   "served": [], "ratios": {}, "scaling": scaling})  # fmt: skip
    assert "| cores | streams | FPS | FPS of each round | x one core |" in md
    assert f"| {len(cores)} | {4 * len(cores)} | {rows[-1]['fps']:.1f} |" in md


def test_players_bench_quick_writes_its_table(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.players", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "players.json").read_text())
    rows = {r["row"]: r for r in res["rows"]}
    assert set(rows) == {"previous default (2x1 tiles, capped)", "balanced (default)"}
    assert all(r["basketball_ids"] >= 2 for r in rows.values())  # the clip's two players
    assert [(r["detect_every"], r.get("flow", True)) for r in res["detect_every"]] == [(1, True), (2, True), (2, False)]
    assert any(k.startswith("default FPS 720p, x the previous default") for k in res["ratios"])  # paired
    assert "| preset | FPS 720p |" in (tmp_path / "players.md").read_text()
    if (ROOT.parent / "shared/data/volleyball").is_dir():  # read from beside the checkout, never copied
        new, old = rows["balanced (default)"], rows["previous default (2x1 tiles, capped)"]
        assert new["fps_1080p"] > 0 and 0.0 <= new["mot"]["recall"] <= 1.0
        assert new["volleyball_court"]["recall"] > old["volleyball_court"]["recall"]  # the cap and the tiles


def test_the_gpu_check_runs_on_cpu_with_its_gpu_parts_skipped(tmp_path: Path) -> None:
    """``scripts/gpu-check.sh`` end to end where no GPU is: the install and the CUDA check are reported skipped,
    the 1080p rows (limit, in-process, model-free ceiling, served) run on CPU and are written."""
    if not (ROOT.parent / "shared/data/volleyball").is_dir():
        pytest.skip("the court-like frames come from ../shared/data")
    env = os.environ | {"POSEFLEET_PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/gpu-check.sh", "--frames", "4", "--streams", "1", "--json",
                           str(tmp_path / "gpu.json"), "--doc", str(tmp_path / "gpu.md")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["gpu"] is None and res["providers"]["detector"] == "CPUExecutionProvider"
    assert "skipped" in proc.stderr and res["skipped"]
    rows = {r["row"]: r for r in res["rows"]}
    assert {"limit (models alone)", "in-process, scaled decode", "model-free ceiling (bench only)",
            "served-ws, 1 streams"} <= set(rows)  # fmt: skip
    assert all(r["fps"] > 0 for r in rows.values())
    assert "Skipped:" in (tmp_path / "gpu.md").read_text()


def test_the_model_free_ceiling_returns_the_same_people_at_no_model_cost(engine: LocalModels) -> None:
    """The ceiling replays the outputs the models gave on the same frames: same people, no model time."""
    from bench.camera import Timed, run_row
    from conftest import DATA
    from posefleet.config import load_pipeline_config
    from posefleet.image_io import encode_jpeg
    from posefleet.sources import open_source

    frames = [encode_jpeg(f.image) for _, f in zip(range(12), open_source(str(DATA / "test_video_structuralize.mp4")),
                                                    strict=False)]  # fmt: skip
    cfg = load_pipeline_config("balanced")
    timed = Timed(engine)
    real = run_row("real", cfg, frames, timed, "bytes")
    ceiling = run_row("ceiling", cfg, frames, timed, "replay")
    assert real["model_ms"]["detector"] > 0 and ceiling["model_ms"]["detector"] == 0
    assert ceiling["people_per_frame"] == real["people_per_frame"] > 0
    assert timed.at == len(timed.recorded)  # every recorded call replayed, in order


def test_the_served_ceiling_serves_every_frame_with_the_detector_replayed() -> None:
    """The served model-free ceiling: the GPU layout with a bench-only detector deployment that replays the
    real model's outputs; every frame is answered with people, and no model ran in the detector replica."""
    from bench.camera import court_like
    from bench.served_ceiling import served_ceiling

    frames = court_like(None, 10)  # the basketball clip, in the repo
    # batches of one region: a frame's detector call (several regions) goes as several requests
    [row] = served_ceiling(frames, [1], 10, {"detector": {"batch": {"max_batch_size": 1}}})
    assert row["frames"] == 10 and not row["errors"] and row["dropped"] == 0, row
    assert row["people_per_frame"] >= 1.5  # two players on the clip: the real model's people, replayed
    assert row["mode"] == "served-ws, model-free ceiling" and row["size"] == "426x240"
    by_process = row["cpu_ms_per_frame_by_process"]
    worker = next(v for k, v in by_process.items() if "StreamWorkerActor" in k)
    assert worker > 0.5, by_process  # decode, regions, letterbox, tracking ran where the stream is held
