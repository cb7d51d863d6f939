"""``docs/benchmarks.md``: the figures of the bench's latest runs, assembled from what each section wrote
under ``bench/results/`` (its tables as the run printed them), with no prose of its own: what a reader
finds there is what the bench measured last, on the machine it names."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"

# (result file, heading, the command that writes it)
SECTIONS = [
    ("results.md", "Throughput, latency, accuracy and scaling", "python -m bench"),
    ("players.md", "Every player on the court: recall, AP and FPS per preset", "python -m bench.players"),
    ("court.md", "Court fusion on Pose2Sim's demos, beside Pose2Sim", "python -m bench.court --pose2sim-python PY"),
    ("court_served.md", "Served court fusion: a fused frame after its cameras", "python -m bench.court_served"),
    ("camera.md", "Camera resolution: stages, scaled decode and the model-free ceiling", "python -m bench.camera"),
]
FIGURES = [("throughput.png", "throughput by transport and streams"), ("scaling.png", "served FPS by Ray nodes")]
JSON_TABLES = [  # results the bench keeps as JSON only, shown as a table of their figures
    ("hostile.json", "Hostile clients", "python -m bench.overload --hostile"),
    ("proxy_recovery.json", "Front-end recovery after its process is killed", "python -m bench.proxy_recovery"),
    ("sources.json", "Camera sources", "python -m bench.sources --json bench/results/sources.json"),
]


def _json_table(data: object) -> list[str]:
    rows = data if isinstance(data, list) else data.get("rows", [data]) if isinstance(data, dict) else []
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return ["```json", json.dumps(data, indent=1)[:4000], "```"]
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, dict | list)))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return lines


def render(results: Path = RESULTS) -> str:
    out = ["# Benchmarks", "", "Written by the bench (`bench/report.py`) from its latest results in `bench/results/`; "
           "each section names the command that measured it. Do not edit by hand.", ""]  # fmt: skip
    for name, title, command in SECTIONS:
        if (results / name).is_file():
            out += [f"## {title}", "", f"`{command}`", "", (results / name).read_text().strip(), ""]
    for name, caption in FIGURES:
        if (results / name).is_file():
            out += [f"![{caption}](../bench/results/{name})", ""]
    for name, title, command in JSON_TABLES:
        if (results / name).is_file():
            out += [f"## {title}", "", f"`{command}`", "", *_json_table(json.loads((results / name).read_text())), ""]
    return "\n".join(out).rstrip() + "\n"


def write(results: Path = RESULTS) -> Path:
    """Rewrite ``docs/benchmarks.md`` (only from the results of record, ``bench/results/``)."""
    if results.resolve() == RESULTS.resolve():
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(render(results))
    return DOC


if __name__ == "__main__":
    print(f"written: {write()}")
