"""``posefleet sources add|list|rm``: the cameras a server pulls itself."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from posefleet.cli.common import api, unique


def _source_line(s: dict[str, Any]) -> str:
    seen = time.strftime("%H:%M:%S", time.localtime(s["last_frame_at"])) if s.get("last_frame_at") else "-"
    line = (f"{s['stream_id']:<24} {s['state']:<12} {s['frames']:>7} frames {s['fps']:>5.1f} FPS "
            f"last {seen} reconnects {s['reconnects']} {s['url']}")  # fmt: skip
    return line + (f"  ({s['last_error']})" if s.get("last_error") and s["state"] != "running" else "")


def source_names(urls: list[str]) -> list[str]:
    """Stream ids for ``serve --source`` cameras: the last part of each URL's path, made a valid id."""
    from urllib.parse import urlsplit

    stems = [re.sub(r"[^A-Za-z0-9._-]", "-", Path(urlsplit(u).path).stem).strip("-._")[:60] or "camera" for u in urls]
    return unique(stems)


def cmd_sources(args: argparse.Namespace) -> int:
    if args.action == "add":
        ask = {"stream_id": args.stream, "url": args.source_url, "max_fps": args.max_fps, "group": args.group}
        print(_source_line(api(args.url, args.token, "POST", "/v1/sources", json=ask)))
    elif args.action == "list":
        for s in api(args.url, args.token, "GET", "/v1/sources")["sources"]:
            print(_source_line(s))
    else:
        api(args.url, args.token, "DELETE", f"/v1/sources/{args.stream}")
        print(f"stopped {args.stream}")
    return 0
