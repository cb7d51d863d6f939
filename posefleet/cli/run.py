"""``posefleet run``: the in-process pipeline on videos, images, folders or cameras, several at once, and a
group's court fusion."""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from posefleet.cli.common import CliError, pipeline_config, unique


def cmd_run(args: argparse.Namespace) -> int:
    from posefleet.coco import coco_results
    from posefleet.court.calibration import CalibrationError
    from posefleet.draw import AnnotatedWriter, draw_people
    from posefleet.models import ModelFileError
    from posefleet.pipeline.engine import Pipeline
    from posefleet.pipeline.schema import StageTimings
    from posefleet.runner import run_sources, tuned_for_streams
    from posefleet.sources import SourceError, open_source

    cfg = tuned_for_streams(pipeline_config(args), len(args.sources))
    several = len(args.sources) > 1
    if several and args.coco:
        raise CliError("--coco takes one source")
    names = args.stream or []
    if names and len(names) != len(args.sources):
        raise CliError(f"{len(names)} --stream names for {len(args.sources)} sources")
    try:
        opened = [open_source(spec) for spec in args.sources]
        pipeline = Pipeline(cfg)
    except (SourceError, ModelFileError) as exc:
        raise CliError(str(exc)) from exc
    streams = names or unique([re.sub(r"[^A-Za-z0-9._-]", "-", s.name)[:56] or "stream" for s in opened])
    group = _group_writer(args, streams)
    if several or args.group:  # --out and --annotate name folders
        out_paths = {s: Path(args.out or "out") / f"{s}.jsonl" for s in streams}
        drawn = {s: Path(args.annotate) / f"{s}.mp4" for s in streams} if args.annotate else {}
    else:
        out_paths = {streams[0]: Path(args.out or f"out/{streams[0]}.jsonl")}
        drawn = {streams[0]: Path(args.annotate)} if args.annotate else {}
    for path in out_paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    outs = {s: p.open("w") for s, p in out_paths.items()}
    writers = {s: AnnotatedWriter(drawn[s], src.fps) for s, src in zip(streams, opened, strict=True) if s in drawn}
    recent: collections.deque[float] = collections.deque(maxlen=30)
    stages = collections.defaultdict(list)
    # the stages this pipeline has: a single-stage one has no pose model to time
    measured = {k for k in StageTimings.model_fields if k != "pose_ms" or cfg.needs_pose_model}
    coco: list = []
    counts = [min(s.count or 0, args.max_frames or 10**9) for s in opened]
    total = sum(counts) if all(counts) else None
    people = 0
    t_start = last = time.perf_counter()

    def on_result(frame: Any, result: Any) -> None:
        nonlocal people, last
        now = time.perf_counter()
        recent.append(now - last)
        last = now
        outs[result.stream_id].write(result.model_dump_json() + "\n")
        for k, v in result.timings.model_dump().items():
            if k in measured:
                stages[k].append(v)
        if not several:
            coco.append((frame.index, result))
        people += len(result.people)
        if result.stream_id in writers:
            fps = len(recent) / max(sum(recent), 1e-9)
            status = f"{result.stream_id} #{frame.index}  {fps:.1f} FPS  {len(result.people)} people"
            writers[result.stream_id].write(draw_people(frame.image, result.people, status=status))
        bar.update(1)
        bar.set_postfix(people=len(result.people), ms=f"{result.timings.total_ms:.0f}")

    desc = streams[0] if not several else f"{len(streams)} streams"
    with tqdm(total=total, unit="frame", desc=desc, disable=args.quiet) as bar:
        try:
            sources = dict(zip(streams, opened, strict=True))
            frames = run_sources(pipeline, sources, on_result, args.max_frames, group.round if group else None)
        except (SourceError, CalibrationError) as exc:
            raise CliError(str(exc)) from exc
        finally:
            if group:
                group.close()
            for w in writers.values():
                w.close()
            for f in outs.values():
                f.close()
    if frames == 0:
        raise CliError(f"{', '.join(args.sources)}: no frames could be read")
    if args.coco:
        Path(args.coco).write_text(json.dumps(coco_results(coco)))
    wall = time.perf_counter() - t_start
    means = {k: float(np.mean(v)) for k, v in stages.items()}
    print(
        f"{frames} frames, {people} people, {frames / wall:.1f} FPS; mean ms: "
        + ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in means.items()),
        file=sys.stderr,
    )
    where = ", ".join(str(p) for p in out_paths.values())
    print(f"results: {where}" + (f"; annotated: {args.annotate}" if args.annotate else ""), file=sys.stderr)
    if group:
        print(f"group {args.group}: {group.frames} fused frames, {len(group.group_ids)} group ids: {group.path}",
              file=sys.stderr)  # fmt: skip
    return 0


def _group_writer(args: argparse.Namespace, streams: list[str]) -> Any:
    """The group's fuser and JSONL writer when --group is given (--calibration or --court-points say its cameras)."""
    from posefleet.court.calibration import CalibrationError
    from posefleet.court.group_run import GroupWriter, group_fuser

    if not args.group:
        if args.calibration or args.court_points:
            raise CliError("--calibration and --court-points belong to a --group")
        return None
    if not (args.calibration or args.court_points):
        raise CliError(f"--group {args.group} needs --calibration or --court-points for its cameras")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.group):
        raise CliError(f"--group {args.group!r}: letters, digits, '.', '_' and '-' (64 at most)")
    try:
        fuser = group_fuser(args.group, streams, args.calibration, args.court_points, args.court)
    except CalibrationError as exc:
        raise CliError(str(exc)) from exc
    return GroupWriter(fuser, Path(args.out or "out") / f"{args.group}.group.jsonl")
