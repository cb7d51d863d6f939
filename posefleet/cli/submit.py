"""``posefleet submit``: a file or camera's frames posted to a server like a camera, the results kept (and drawn)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from posefleet.cli.common import CliError, check_server


def annotate_from_results(source_spec: str, results: list, path: Path) -> None:
    """Draw served results onto the source's frames (the server never sends frames back)."""
    from posefleet.draw import AnnotatedWriter, draw_people
    from posefleet.sources import open_source

    source = open_source(source_spec)
    by_index = {r.frame_index: r for r in results}
    writer = AnnotatedWriter(path, source.fps)
    try:
        for frame in source:
            r = by_index.get(frame.index)
            if r is None:
                continue
            status = f"{r.stream_id} #{r.frame_index}  {r.timings.total_ms:.0f} ms  {len(r.people)} people"
            writer.write(draw_people(frame.image, r.people, status=status))
    finally:
        writer.close()


def submit_jobs(sources: list[str], streams: list[str] | None, copies: int) -> list[tuple[str, str]]:
    from posefleet.sources import SourceError, open_source

    names = streams or []
    if names and len(names) != len(sources):
        raise CliError("give one --stream per source, or none")
    jobs = []
    for i, spec in enumerate(sources):
        try:
            base = names[i] if names else open_source(spec).name
        except SourceError as exc:
            raise CliError(str(exc)) from exc
        base = re.sub(r"[^A-Za-z0-9._-]", "-", base)[:56] or "stream"
        jobs += [(base if copies == 1 else f"{base}-{k + 1}", spec) for k in range(copies)]
    return jobs


def run_submit(url: str, jobs: list[tuple[str, str]], args: argparse.Namespace, keep: bool) -> list:
    import asyncio

    from posefleet.serve.client import submit, summary

    t0 = time.perf_counter()
    reports = asyncio.run(
        submit(
            url,
            jobs,
            max_rate=args.max_rate,
            fps=getattr(args, "fps", None),
            max_inflight=getattr(args, "inflight", 1),
            max_frames=args.max_frames,
            out_dir=Path(args.out),
            progress=not args.quiet,
            keep=keep,
            token=getattr(args, "token", None),
            transport=getattr(args, "transport", "ws"),
        )
    )
    print(summary(reports, time.perf_counter() - t0), file=sys.stderr)
    return reports


ANNOTATED_SUFFIXES = {".mp4", ".avi", ".jpg", ".jpeg", ".png"}


def _annotation_paths(jobs: list[tuple[str, str]], target: str) -> dict[str, Path]:
    """Where each stream's annotated copy goes: ``target`` itself for one stream given a file name,
    else ``target/<stream>.mp4`` (``.jpg`` for a single image). Live sources cannot be replayed."""
    from posefleet.sources import open_source

    paths = {}
    for stream, spec in jobs:
        source = open_source(spec)
        if source.count is None:
            raise CliError(f"--annotate needs file sources ({spec} is live and cannot be read twice)")
        if len(jobs) == 1 and Path(target).suffix.lower() in ANNOTATED_SUFFIXES:
            paths[stream] = Path(target)
        else:
            paths[stream] = Path(target) / f"{stream}{'.jpg' if source.count == 1 else '.mp4'}"
    return paths


def cmd_submit(args: argparse.Namespace) -> int:
    import httpx

    jobs = submit_jobs(args.sources, args.stream, args.copies)
    annotate = _annotation_paths(jobs, args.annotate) if args.annotate else {}
    check_server(args.url, args.token)
    try:
        reports = run_submit(args.url, jobs, args, keep=bool(annotate))
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {args.url}: {exc}") from exc
    print(f"results: {args.out}/<stream>.jsonl", file=sys.stderr)
    for (stream, spec), report in zip(jobs, reports, strict=True):
        if stream in annotate:
            annotate_from_results(spec, report.results, annotate[stream])
            print(f"annotated: {annotate[stream]}", file=sys.stderr)
    return submit_status(reports, args.max_rate)


def submit_status(reports: list, max_rate: bool) -> int:
    """The exit status of a submission: 1 when a stream got no results, or, with ``--max-rate`` (every frame
    promised), when any frame was refused or lost after its retries; the counts are printed per stream."""
    return 0 if all(r.complete(max_rate) for r in reports) else 1
