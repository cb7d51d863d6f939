"""``posefleet serve``: the Serve config's app on a local Ray started on the spot (or --address), until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from posefleet.cli.common import CliError, api
from posefleet.cli.sources import source_names
from posefleet.cli.submit import annotate_from_results, run_submit, submit_jobs, submit_status


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
    from posefleet.serve import launcher
    from posefleet.serve.app import build_app, load_serve_config
    from posefleet.serving_config import AppConfig

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
    for name, source in zip(source_names(args.source), args.source, strict=True):
        made = api(url, token, "POST", "/v1/sources", json={"stream_id": name, "url": source})
        print(f"source {made['stream_id']}: {made['url']} ({made['state']})", file=sys.stderr)
    if args.submit:
        jobs = submit_jobs(args.submit, None, 1)
        args.max_rate = not args.realtime
        args.token = app_cfg.serving.security.api_token()  # this server's own
        reports = run_submit(url, jobs, args, keep=bool(args.annotate))
        print(f"results: {args.out}/<stream>.jsonl", file=sys.stderr)
        if args.annotate:
            annotate_from_results(args.submit[0], reports[0].results, Path(args.annotate))
            print(f"annotated: {args.annotate}", file=sys.stderr)
        if args.once:
            return submit_status(reports, args.max_rate)
    if args.once:
        return 0
    print("Ctrl-C (or SIGTERM) stops the server", file=sys.stderr)
    while True:
        time.sleep(3600)
