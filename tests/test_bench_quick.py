"""The benchmark harness runs end to end (a small slice; speeds are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert {"in-process/naive (top-down)", "served-ws 2 streams / in-process 2 streams"} <= set(res["ratios"])
    assert res["accuracy"] and all(r["coco_AP"] >= 0 for r in res["accuracy"])
    assert res["variants"] and all("AP" in v for v in res["variants"])
    assert res["detect_every"][1]["detect_every"] == 3
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
    assert "| ratio | value |" in (tmp_path / "results.md").read_text()
    if (ROOT.parent / "shared/data/mot17-mini").is_dir():  # read from beside the checkout, never copied
        assert res["crowd"] and 0.0 <= res["crowd"][0]["recall"] <= 1.0
        assert 0.0 <= res["accuracy"][0]["mot_recall"] <= 1.0
        assert "MOT17-mini" in (tmp_path / "results.md").read_text()
