"""The GPU check's figures (``scripts/gpu-check.sh`` runs this): the provider each model runs on, then at
1920x1080 the limit row (the models alone), the in-process rows (scaled decode, and the model-free ceiling) and
the served WebSocket rows, in one run.

    python -m bench.gpu_check [--require-gpu] [--gpu-name NAME] [--frames 60] [--json bench/results/gpu.json]

With ``--require-gpu`` it stops at once, loudly (exit 2), when the detector does not run on CUDA or TensorRT:
figures of a GPU machine measured on its CPU would mislead. Without a GPU the same rows run on CPU and the
GPU parts are reported as skipped, so the harness itself is checked wherever it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
from tqdm import tqdm

from bench.camera import LIMITS, Timed, court_like, run_row, section_served
from posefleet.config import CPU, load_pipeline_config
from posefleet.pipeline.frames import LocalModels

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "gpu.md"


def providers(models: LocalModels) -> dict[str, str]:
    out = {"detector": models.detector.model.provider}
    if models.pose is not None:
        out["pose"] = models.pose.model.provider
    return out


def limit_row(frames: list[bytes], people_per_frame: float) -> dict[str, Any]:
    from bench.inprocess import run_limit

    cfg = load_pipeline_config("balanced")
    return run_limit(cfg, frames, 1, people_per_frame, 1.0 / cfg.detect_every) | {"row": "limit (models alone)"}


def markdown(res: dict[str, Any]) -> str:
    gpu = res["gpu"] or "none (the rows ran on CPU)"
    lines = [f"GPU check: {gpu}. Machine: {res['machine']}. Providers: "
             + ", ".join(f"{k} {v}" for k, v in res["providers"].items()) + ".", ""]  # fmt: skip
    if res["skipped"]:
        lines += ["Skipped: " + "; ".join(res["skipped"]) + ".", ""]
    lines += ["| row (1920x1080, default preset) | FPS | CPU-ms/frame (machine) |", "|---|---|---|"]
    for r in res["rows"]:
        cpu = r.get("machine_cpu_ms_per_frame", r.get("cpu_ms_per_frame"))
        lines.append(f"| {r['row']} | {r['fps']:.1f} | {'-' if cpu is None else format(cpu, '.1f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--require-gpu", action="store_true", help="fail unless the models run on CUDA/TensorRT")
    parser.add_argument("--gpu-name", default="", help="the GPU, as nvidia-smi names it")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "gpu.json"))
    parser.add_argument("--doc", default=str(DOC))
    args = parser.parse_args()
    from bench.__main__ import machine

    cfg = load_pipeline_config("balanced")
    models = LocalModels(cfg)
    active = providers(models)
    on_gpu = all(p != CPU for p in active.values())
    if args.require_gpu and not on_gpu:
        print(f"gpu-check: FAILED: the models run on {active} (available: {ort.get_available_providers()}); "
              "CUDA is not active, so no GPU figure is measured", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    skipped = [] if on_gpu else ["the gpu extra's install and the CUDA provider check (no GPU here)"]
    frames = court_like((1920, 1080), args.frames)
    if not frames:
        raise SystemExit("gpu-check: no court-like frames (../shared/data/volleyball and mot17-mini are needed)")
    rows = []
    with tqdm(total=4, desc="gpu-check", unit="row") as bar:
        timed = Timed(models)
        run_row("warm-up", cfg, frames[:3], timed, "bytes")
        scaled = run_row("in-process, scaled decode", cfg, frames, timed, "bytes")
        bar.update(1)
        rows.append(limit_row(frames, scaled["people_per_frame"]))
        bar.update(1)
        rows += [scaled, run_row("model-free ceiling (bench only)", cfg, frames, timed, "replay")]
        bar.update(1)
        for r in section_served(args.frames, args.streams, bar):
            rows.append(r | {"row": f"served-ws, {r['streams']} streams"})
    res = {"gpu": args.gpu_name or None, "machine": machine(), "providers": active, "skipped": skipped,
           "limits": LIMITS, "rows": rows}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    Path(args.doc).write_text("# GPU check\n\nWritten by `scripts/gpu-check.sh` (`python -m bench.gpu_check`).\n\n"
                              + markdown(res))  # fmt: skip
    print(markdown(res))


if __name__ == "__main__":
    main()
