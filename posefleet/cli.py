"""posefleet: real-time multi-person pose estimation for many camera streams, served on Ray."""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from posefleet.config import PipelineConfig, load_pipeline_config
from posefleet.errors import problems

TRANSPORTS = ["ws", "http", "batch"]


class CliError(Exception):
    """An error shown to the user as one line, exit status 2."""


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "detect_every", None):
        overrides["detect_every"] = args.detect_every
    if getattr(args, "roi", None):
        overrides["stream"] = {"roi": _polygon(args.roi), "keep_outside_roi": args.keep_outside_roi}
    try:
        return load_pipeline_config(args.preset, args.config, overrides)
    except ValidationError as exc:  # one line a problem: where, and what
        raise CliError(f"bad configuration: {problems(exc, 'pipeline')}") from exc
    except (ValueError, OSError) as exc:
        raise CliError(f"bad configuration: {exc}") from exc


def _polygon(text: str) -> list[list[float]]:
    """``x,y x,y x,y ...`` (or JSON ``[[x, y], ...]``) -> points; the polygon's own checks come after."""
    try:
        points = json.loads(text) if text.lstrip().startswith("[") else [
            [float(v) for v in pair.split(",")] for pair in text.split()
        ]  # fmt: skip
    except ValueError as exc:
        raise CliError(f"--roi: expected 'x,y x,y x,y ...' image points ({exc})") from exc
    return points


def cmd_run(args: argparse.Namespace) -> int:
    from posefleet.coco import coco_results
    from posefleet.court.calibration import CalibrationError
    from posefleet.draw import AnnotatedWriter, draw_people
    from posefleet.models import ModelFileError
    from posefleet.pipeline.engine import Pipeline
    from posefleet.pipeline.schema import StageTimings
    from posefleet.runner import run_sources, tuned_for_streams
    from posefleet.sources import SourceError, open_source

    cfg = tuned_for_streams(_pipeline_config(args), len(args.sources))
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
    streams = names or _unique([re.sub(r"[^A-Za-z0-9._-]", "-", s.name)[:56] or "stream" for s in opened])
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


def _unique(names: list[str]) -> list[str]:
    """Stream names, numbered where two sources share one."""
    seen: collections.Counter[str] = collections.Counter(names)
    taken: collections.Counter[str] = collections.Counter()
    out = []
    for n in names:
        taken[n] += 1
        out.append(n if seen[n] == 1 else f"{n}-{taken[n]}")
    return out


def _annotate_from_results(source_spec: str, results: list, path: Path) -> None:
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


def _submit_jobs(sources: list[str], streams: list[str] | None, copies: int) -> list[tuple[str, str]]:
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


def _run_submit(url: str, jobs: list[tuple[str, str]], args: argparse.Namespace, keep: bool) -> list:
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


def _check_server(url: str, token: str | None) -> None:
    """One cheap authenticated request first, so a wrong address or token is one clear line."""
    _api(url, token, "GET", "/v1/streams?limit=1")


def _api(url: str, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """A call to a posefleet server's API; what goes wrong is one CliError line."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.request(method, f"{url.rstrip('/')}{path}", headers=headers, timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {url} ({type(exc).__name__}): is `posefleet serve` running there?") from exc
    if resp.status_code == 401:
        raise CliError(f"{url} wants a valid API token: pass --token or set POSEFLEET_TOKEN")
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text[:200]
        raise CliError(f"{url}: {method} {path.split('?')[0]}: HTTP {resp.status_code}: {detail}")
    return resp.json() if resp.content else None


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

    jobs = _submit_jobs(args.sources, args.stream, args.copies)
    annotate = _annotation_paths(jobs, args.annotate) if args.annotate else {}
    _check_server(args.url, args.token)
    try:
        reports = _run_submit(args.url, jobs, args, keep=bool(annotate))
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {args.url}: {exc}") from exc
    print(f"results: {args.out}/<stream>.jsonl", file=sys.stderr)
    for (stream, spec), report in zip(jobs, reports, strict=True):
        if stream in annotate:
            _annotate_from_results(spec, report.results, annotate[stream])
            print(f"annotated: {annotate[stream]}", file=sys.stderr)
    return submit_status(reports, args.max_rate)


def submit_status(reports: list, max_rate: bool) -> int:
    """The exit status of a submission: 1 when a stream got no results, or, with ``--max-rate`` (every frame
    promised), when any frame was refused or lost after its retries; the counts are printed per stream."""
    return 0 if all(r.complete(max_rate) for r in reports) else 1


def _source_line(s: dict[str, Any]) -> str:
    seen = time.strftime("%H:%M:%S", time.localtime(s["last_frame_at"])) if s.get("last_frame_at") else "-"
    line = (f"{s['stream_id']:<24} {s['state']:<12} {s['frames']:>7} frames {s['fps']:>5.1f} FPS "
            f"last {seen} reconnects {s['reconnects']} {s['url']}")  # fmt: skip
    return line + (f"  ({s['last_error']})" if s.get("last_error") and s["state"] != "running" else "")


def _source_names(urls: list[str]) -> list[str]:
    """Stream ids for ``serve --source`` cameras: the last part of each URL's path, made a valid id."""
    from urllib.parse import urlsplit

    stems = [re.sub(r"[^A-Za-z0-9._-]", "-", Path(urlsplit(u).path).stem).strip("-._")[:60] or "camera" for u in urls]
    return _unique(stems)


def cmd_sources(args: argparse.Namespace) -> int:
    if args.action == "add":
        ask = {"stream_id": args.stream, "url": args.source_url, "max_fps": args.max_fps, "group": args.group}
        print(_source_line(_api(args.url, args.token, "POST", "/v1/sources", json=ask)))
    elif args.action == "list":
        for s in _api(args.url, args.token, "GET", "/v1/sources")["sources"]:
            print(_source_line(s))
    else:
        _api(args.url, args.token, "DELETE", f"/v1/sources/{args.stream}")
        print(f"stopped {args.stream}")
    return 0


def _allow_sources(app_args: dict[str, Any], urls: list[str], out: str) -> dict[str, Any]:
    """``serve --source``: turn sources on, allow exactly these cameras' hosts (or folders), and keep the
    results in ``out`` (``<stream>/<hour>.jsonl``) unless the config names a sink already."""
    from urllib.parse import urlsplit

    from posefleet.allowlist import file_path
    from posefleet.config import deep_merge

    hosts, dirs = [], []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("", "file"):
            dirs.append(str(file_path(url).parent))
        elif parts.hostname:
            hosts.append(parts.hostname)
    serving = app_args.get("serving") or {}
    have = serving.get("sources") or {}
    schemes = sorted({*have.get("allow_schemes", ["rtsp", "rtsps", "http", "https"]), *(["file"] if dirs else [])})
    sources = {"enabled": True, "allow_hosts": [*have.get("allow_hosts", []), *hosts],
               "allow_dirs": [*have.get("allow_dirs", []), *dirs], "allow_schemes": schemes}  # fmt: skip
    sink = serving.get("sink") or {}
    return deep_merge(app_args, {"serving": {"sources": sources, "sink": {"directory": sink.get("directory") or out}}})


def cmd_serve(args: argparse.Namespace) -> int:
    from posefleet.config import AppConfig
    from posefleet.serve import launcher
    from posefleet.serve.app import build_app, load_serve_config

    try:
        serve_cfg = load_serve_config(args.config)
        app_spec = serve_cfg["applications"][0]
        app_args = app_spec.get("args") or {}
        if args.source:
            app_args = _allow_sources(app_args, args.source, args.out)
        app_cfg = AppConfig.model_validate(app_args)
        application = build_app(app_cfg)
    except (ValueError, OSError) as exc:
        raise CliError(f"bad serve config: {exc}") from exc
    http = dict(serve_cfg.get("http_options") or {})
    http["host"] = args.host or http.get("host", "127.0.0.1")
    http["port"] = args.port or http.get("port", 8000)
    logging_cfg = serve_cfg.get("logging_config") or {"enable_access_log": False}
    if not args.address and (held := launcher.clear_port(http["host"], http["port"])):
        raise CliError(held)
    _stop_on(signal.SIGTERM, signal.SIGINT)  # either stops Serve and Ray below
    try:
        launcher.start_ray(args.address, http["host"], args.num_cpus, args.metrics_port)
        _stop_on(signal.SIGTERM, signal.SIGINT)  # again: Ray's core worker installs its own (it aborts)
        return _serve(args, serve_cfg, app_spec, app_cfg, application, http, logging_cfg)
    except KeyboardInterrupt:
        print("posefleet: stopping", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the shutdown short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        launcher.stop_ray()


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_on(*signals: signal.Signals) -> None:
    """These signals stop the server, SIGINT too where it was ignored when this process started (a shell
    starts its background jobs so, and Python then leaves Ctrl-C's signal ignored)."""
    for sig in signals:
        signal.signal(sig, _stop_on_signal)


def _serve(args: argparse.Namespace, serve_cfg: dict, app_spec: dict, app_cfg: Any, application: Any,
           http: dict, logging_cfg: dict) -> int:  # fmt: skip
    from ray import serve

    from posefleet.serve.launcher import start_http

    start_http(http, serve_cfg.get("proxy_location"), logging_cfg)
    name, prefix = app_spec.get("name", "posefleet"), app_spec.get("route_prefix", "/")
    serve.run(application, name=name, route_prefix=prefix, logging_config=logging_cfg)
    host = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
    url = f"http://{host}:{http['port']}"
    print(f"posefleet serving at {url} (API docs {url}/docs)", file=sys.stderr)
    if not args.address:
        print(f"Prometheus metrics: http://127.0.0.1:{args.metrics_port}/metrics", file=sys.stderr)
    token = app_cfg.serving.security.api_token()
    for name, source in zip(_source_names(args.source), args.source, strict=True):
        made = _api(url, token, "POST", "/v1/sources", json={"stream_id": name, "url": source})
        print(f"source {made['stream_id']}: {made['url']} ({made['state']})", file=sys.stderr)
    if args.submit:
        jobs = _submit_jobs(args.submit, None, 1)
        args.max_rate = not args.realtime
        args.token = app_cfg.serving.security.api_token()  # this server's own
        reports = _run_submit(url, jobs, args, keep=bool(args.annotate))
        print(f"results: {args.out}/<stream>.jsonl", file=sys.stderr)
        if args.annotate:
            _annotate_from_results(args.submit[0], reports[0].results, Path(args.annotate))
            print(f"annotated: {args.annotate}", file=sys.stderr)
        if args.once:
            return submit_status(reports, args.max_rate)
    if args.once:
        return 0
    print("Ctrl-C (or SIGTERM) stops the server", file=sys.stderr)
    while True:
        time.sleep(3600)


def _needs(module: str, command: str) -> None:
    """One line naming the extra to install where an evaluation library is missing (it is not in the default
    install), instead of a traceback from deep inside."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise CliError(f'posefleet {command} needs {module}, in the eval extra: pip install "posefleet[eval]"') from exc


def cmd_evaluate(args: argparse.Namespace) -> int:
    _needs("pycocotools", "evaluate")
    from posefleet.evaluate import evaluate
    from posefleet.pipeline.engine import Pipeline

    cfg = _pipeline_config(args)
    images = args.images or str(Path(args.annotations).parent)
    try:
        result = evaluate(Pipeline(cfg), args.annotations, images)
    except FileNotFoundError as exc:
        raise CliError(f"missing image or annotation file: {exc}") from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(result, indent=2))
    return 0


def _print_evaluation(evaluate: Any, args: argparse.Namespace, paths: list[str]) -> int:
    from posefleet.pipeline.engine import Pipeline

    try:
        result = evaluate(Pipeline(_pipeline_config(args)), paths)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(result, indent=2))
    return 0


def cmd_evaluate_mot(args: argparse.Namespace) -> int:
    _needs("motmetrics", "evaluate-mot")
    from posefleet.mot import evaluate_mot

    return _print_evaluation(evaluate_mot, args, args.sequences)


def cmd_evaluate_boxes(args: argparse.Namespace) -> int:
    from posefleet.boxes import evaluate_boxes

    return _print_evaluation(evaluate_boxes, args, args.sets)


def cmd_optimize(args: argparse.Namespace) -> int:
    from posefleet.optimize import optimize

    cfg = _pipeline_config(args)
    try:
        written = optimize(cfg, Path(args.out), args.calibration, args.frames)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(written, indent=2))
    print("point detector.model / pose.model at these files; `python -m bench` compares them", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posefleet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log model/provider choices")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the in-process pipeline on videos, images or folders (several at once)")
    run.add_argument("sources", nargs="+", help="video files, images, folders of images, webcam indices or URLs; "
                     "several run as streams batched together")  # fmt: skip
    run.add_argument("--preset", default="balanced",
                     help="configs/<preset>.yaml: fast, balanced, quality, top-down, crowd")  # fmt: skip
    run.add_argument("--config", help="a YAML file merged over the preset")
    run.add_argument("--detect-every", type=int, help="override: run the detector every N frames")
    run.add_argument("--out", help="JSON lines output (default out/<stream>.jsonl; a folder for several sources)")
    run.add_argument("--annotate", help="write an annotated .mp4/.avi (or .jpg/.png for one image); "
                     "a folder of <stream>.mp4 for several sources")  # fmt: skip
    run.add_argument("--coco", help="also write COCO keypoint results (image_id = frame index)")
    run.add_argument("--roi", help="region of interest (the court) as image points 'x,y x,y x,y ...': scans cover "
                     "it, people standing outside it are not returned")  # fmt: skip
    run.add_argument("--keep-outside-roi", action="store_true", help="return them too, flagged outside_roi")
    run.add_argument("--stream", action="append", help="stream name, once per source (default: the source's name)")
    run.add_argument("--max-frames", type=int, help="stop after this many frames a stream")
    run.add_argument("--group", help="fuse the streams as one group (a court): writes <out>/<group>.group.jsonl "
                     "with one id a player, court positions and, from 2 calibrated cameras, 3D keypoints")  # fmt: skip
    run.add_argument("--calibration", action="append", default=[],
                     help="the group's cameras, named as the streams: Qualisys .qca.txt, Pose2Sim/Anipose .toml or "
                     "OpenCV .yml/.json (intrinsics and extrinsics may be two files)")  # fmt: skip
    run.add_argument("--court-points", help="YAML/JSON of stream: {template, points: [{image: [x, y], name}]}: "
                     "court homographies for cameras with no full calibration")  # fmt: skip
    run.add_argument("--court", help="the court template (configs/courts) that says who is outside the court")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    srv = sub.add_parser("serve", help="serve the HTTP API on a local Ray started on the spot (or --address)")
    srv.add_argument("--config", help="Serve config file (default configs/serve-cpu.yaml)")
    srv.add_argument("--host", help="bind address (default from the config)")
    srv.add_argument("--port", type=int, help="HTTP port (default from the config)")
    srv.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    srv.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port of the local Ray")
    srv.add_argument("--address", help="join a running Ray cluster instead (e.g. auto)")
    srv.add_argument("--submit", nargs="+", help="once serving, submit these sources through the HTTP API")
    srv.add_argument("--annotate", help="with --submit: draw the served results of the first source here")
    srv.add_argument("--out", default="out", help="with --submit or --source: folder for the results (JSON lines)")
    srv.add_argument(
        "--realtime",
        action="store_true",
        help="with --submit: send at the source's frame rate like a camera "
        "(frames the server cannot take in time are skipped); default: every frame, as fast as served",
    )
    srv.add_argument("--max-frames", type=int, help="with --submit: at most this many frames a stream")
    srv.add_argument("--transport", choices=TRANSPORTS, default="ws", help="with --submit: how frames travel")
    srv.add_argument("--source", action="append", default=[], metavar="URL",
                     help="a camera the server pulls from the start (its host or folder is allowed)")  # fmt: skip
    srv.add_argument("--once", action="store_true", help="stop after --submit instead of serving on")
    srv.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    srv.set_defaults(func=cmd_serve)

    sb = sub.add_parser("submit", help="post the frames of videos/images/cameras to a posefleet server")
    sb.add_argument("sources", nargs="+", help="video files, image folders, webcam indices or stream URLs")
    sb.add_argument("--stream", action="append", help="stream name, once per source (default: source name)")
    sb.add_argument("--url", default="http://127.0.0.1:8000", help="server address")
    sb.add_argument("--copies", type=int, default=1, help="submit each source as this many streams")
    sb.add_argument("--max-rate", action="store_true", help="as fast as the server answers, not at source FPS")
    sb.add_argument("--max-frames", type=int, help="at most this many frames a stream")
    sb.add_argument("--fps", type=float, help="send at this rate instead of the source's")
    sb.add_argument("--inflight", type=int, default=2, help="unanswered frames a stream may have")
    sb.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="ws",
        help="a WebSocket per stream (default), a POST per frame, or multipart POSTs of many frames",
    )
    sb.add_argument("--out", default="out", help="folder for <stream>.jsonl results")
    sb.add_argument("--annotate", help="draw the served results onto a copy of each file source: a file "
                    "for one stream, else a folder of <stream>.mp4")  # fmt: skip
    sb.add_argument("--token", default=os.environ.get("POSEFLEET_TOKEN"),
                    help="bearer token for the API (default: $POSEFLEET_TOKEN)")  # fmt: skip
    sb.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sb.set_defaults(func=cmd_submit)

    src = sub.add_parser("sources", help="cameras the server pulls itself: add, list, rm")
    src_sub = src.add_subparsers(dest="action", required=True)
    add = src_sub.add_parser("add", help="start pulling a camera into a stream")
    add.add_argument("source_url", help="rtsp://, http(s):// (MJPEG/HLS) or a file under an allowed directory")
    add.add_argument("--stream", required=True, help="the stream the frames go to")
    add.add_argument("--max-fps", type=float, help="hand on at most this many frames a second")
    add.add_argument("--group", help="e.g. the court the camera films")
    src_sub.add_parser("list", help="every source and its state")
    rm = src_sub.add_parser("rm", help="stop a source")
    rm.add_argument("stream", help="its stream id")
    for action in src_sub.choices.values():
        action.add_argument("--url", default="http://127.0.0.1:8000", help="server address")
        action.add_argument("--token", default=os.environ.get("POSEFLEET_TOKEN"),
                            help="bearer token for the API (default: $POSEFLEET_TOKEN)")  # fmt: skip
    src.set_defaults(func=cmd_sources)

    ev = sub.add_parser("evaluate", help="COCO keypoint AP (OKS) on a COCO-format annotated image set")
    ev.add_argument("annotations", help="COCO keypoints JSON (person_keypoints_*.json style)")
    ev.add_argument("--images", help="image folder (default: the annotation file's folder)")
    ev.add_argument("--preset", default="balanced")
    ev.add_argument("--config", help="a YAML file merged over the preset")
    ev.set_defaults(func=cmd_evaluate)

    mot = sub.add_parser("evaluate-mot", help="MOTA/IDF1/id switches against MOT-format box ground truth")
    mot.add_argument("sequences", nargs="+", help="MOT17-layout sequence folders (img1/, gt/gt.txt, seqinfo.ini)")
    mot.add_argument("--preset", default="balanced")
    mot.add_argument("--config", help="a YAML file merged over the preset")
    mot.add_argument("--detect-every", type=int, help="override: run the detector every N frames")
    mot.set_defaults(func=cmd_evaluate_mot)

    bx = sub.add_parser("evaluate-boxes", help="person recall and precision (IoU >= 0.5) on the Volleyball "
                        "dataset's annotations.txt or MOT17 sequences, each frame after those before it")  # fmt: skip
    bx.add_argument("sets", nargs="+", help="a Volleyball annotations.txt (or its folder), MOT17 sequence folders")
    bx.add_argument("--preset", default="balanced")
    bx.add_argument("--config", help="a YAML file merged over the preset")
    bx.add_argument("--roi", help="region of interest for every set, 'x,y x,y x,y ...'")
    bx.add_argument("--keep-outside-roi", action="store_true", help="count people outside it too")
    bx.add_argument("--detect-every", type=int, help="override: run the detector every N frames")
    bx.set_defaults(func=cmd_evaluate_boxes)

    op = sub.add_parser("optimize", help="write INT8 (calibrated) and FP16 variants of the models")
    op.add_argument("--out", default="models/optimized")
    op.add_argument("--calibration", default="tests/data/test_video_structuralize.mp4", help="real frames")
    op.add_argument("--frames", type=int, default=48, help="calibration frames")
    op.add_argument("--preset", default="balanced")
    op.add_argument("--config", help="a YAML file merged over the preset")
    op.set_defaults(func=cmd_optimize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except CliError as exc:
        print(f"posefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
