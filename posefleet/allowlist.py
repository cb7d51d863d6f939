"""What a camera source may point at: a URL is checked against the configured allowlist before anything is
fetched (no SSRF), and credentials in it never appear in an answer or a log line."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from posefleet.errors import Forbidden, InvalidRequest
from posefleet.serving_config import SourcesConfig


def redact(url: str) -> str:
    """The URL with any user and password replaced by ``***`` (for answers and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _host_allowed(host: str, allowed: list[str]) -> bool:
    """A name only if listed as it is; an IP address if inside a listed network. Names are never resolved
    here: what a name resolves to could change between this check and the camera's connection."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in {a.lower() for a in allowed}
    for entry in allowed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a name
    return False


def file_path(url: str) -> Path:
    """The file a ``file://`` URL or a plain path names, resolved (``..`` and links followed)."""
    parts = urlsplit(url)
    return Path(parts.path if parts.scheme else url).resolve()


def check_source_url(url: str, cfg: SourcesConfig) -> str:
    """The URL if the allowlist lets a source read it; Forbidden (403) if not, InvalidRequest (422) if it is
    not a usable URL. A file source is given as ``file:///path`` or a plain path under an allowed directory."""
    if len(url) > 2048:
        raise InvalidRequest("a source URL is at most 2048 characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidRequest(f"not a URL: {exc}") from None
    scheme = (parts.scheme or "file").lower()
    if scheme not in cfg.allow_schemes:
        raise Forbidden(f"scheme {scheme!r} is not allowed (serving.sources.allow_schemes: {cfg.allow_schemes})")
    if scheme == "file":
        path = file_path(url)
        dirs = [Path(d).resolve() for d in cfg.allow_dirs]
        if not any(path.is_relative_to(d) for d in dirs):
            raise Forbidden(f"{redact(url)}: not under a directory of serving.sources.allow_dirs")
        if not path.is_file():
            raise InvalidRequest(f"no such file: {path}")
        return str(path)
    if not parts.hostname:
        raise InvalidRequest(f"{redact(url)}: no host")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError as exc:
        raise InvalidRequest(f"{redact(url)}: {exc}") from None
    if not _host_allowed(parts.hostname, cfg.allow_hosts):
        raise Forbidden(f"host {parts.hostname!r} is not allowed (serving.sources.allow_hosts)")
    return url
