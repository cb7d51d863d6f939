"""What every command shares: the one-line error, the pipeline config from the flags, API calls."""

from __future__ import annotations

import argparse
import collections
import importlib
import json
from typing import Any

from pydantic import ValidationError

from posefleet.config import PipelineConfig, load_pipeline_config
from posefleet.errors import problems

TRANSPORTS = ["ws", "http", "batch"]


class CliError(Exception):
    """An error shown to the user as one line, exit status 2."""


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "detect_every", None):
        overrides["detect_every"] = args.detect_every
    if getattr(args, "roi", None):
        overrides["stream"] = {"roi": polygon(args.roi), "keep_outside_roi": args.keep_outside_roi}
    try:
        return load_pipeline_config(args.preset, args.config, overrides)
    except ValidationError as exc:  # one line a problem: where, and what
        raise CliError(f"bad configuration: {problems(exc, 'pipeline')}") from exc
    except (ValueError, OSError) as exc:
        raise CliError(f"bad configuration: {exc}") from exc


def polygon(text: str) -> list[list[float]]:
    """``x,y x,y x,y ...`` (or JSON ``[[x, y], ...]``) -> points; the polygon's own checks come after."""
    try:
        points = json.loads(text) if text.lstrip().startswith("[") else [
            [float(v) for v in pair.split(",")] for pair in text.split()
        ]  # fmt: skip
    except ValueError as exc:
        raise CliError(f"--roi: expected 'x,y x,y x,y ...' image points ({exc})") from exc
    return points


def unique(names: list[str]) -> list[str]:
    """Stream names, numbered where two sources share one."""
    seen: collections.Counter[str] = collections.Counter(names)
    taken: collections.Counter[str] = collections.Counter()
    out = []
    for n in names:
        taken[n] += 1
        out.append(n if seen[n] == 1 else f"{n}-{taken[n]}")
    return out


def check_server(url: str, token: str | None) -> None:
    """One cheap authenticated request first, so a wrong address or token is one clear line."""
    api(url, token, "GET", "/v1/streams?limit=1")


def api(url: str, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
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


def needs(module: str, command: str) -> None:
    """One line naming the extra to install where an evaluation library is missing (it is not in the default
    install), instead of a traceback from deep inside."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise CliError(f'posefleet {command} needs {module}, in the eval extra: pip install "posefleet[eval]"') from exc
