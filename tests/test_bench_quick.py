"""The benchmark harness runs end to end (a small slice; speeds are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_writes_tables_plot_and_ratios(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    modes = {(r["mode"], r["streams"]) for r in res["inprocess"] + res["served"]}
    assert {("limit", 1), ("naive", 1), ("optimised", 1), ("rtmlib", 1)} <= modes
    assert {("served-http", 1), ("served-http", 2), ("served-handle", 2)} <= modes
    assert all(r["fps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in res["inprocess"] + res["served"])
    assert {"optimised/naive", "optimised/rtmlib-style"} <= set(res["ratios"])
    assert res["variants"] and all("AP" in v for v in res["variants"])
    assert res["detect_every"][1]["detect_every"] == 3
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
    assert "| ratio | value |" in (tmp_path / "results.md").read_text()
    if (ROOT.parent / "shared/data/mot17-mini").is_dir():  # read from beside the checkout, never copied
        assert res["mot"] and 0.0 <= res["mot"][0]["recall"] <= 1.0
        assert "MOT17-mini" in (tmp_path / "results.md").read_text()
