"""posefleet's HAProxy guard: what a local Ray runs as its HAProxy binary (``RAY_SERVE_HAPROXY_BINARY_PATH``,
set by the launcher). It execs the real binary with the same arguments after two fixes:

- HAProxy stops when the Ray process that started it dies. Ray runs HAProxy as a child of an actor process;
  a stop that kills Ray's processes (``ray stop --force``, a service manager's SIGKILL a few seconds after
  SIGTERM) left it running, adopted by init, holding the HTTP port and answering 500 (seen 4 times in 6 such
  stops). The kernel's parent-death signal, asked for here, survives the exec.
- Its stats page and Prometheus exporter listen where the server does: Ray's config binds them on every
  interface, without a token; with ``POSEFLEET_HAPROXY_BIND_HOST`` set they bind on that host.

It stays small and imports nothing heavy: it runs on every HAProxy start and reload.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import signal
import sys
from pathlib import Path

REAL_BINARY = "POSEFLEET_HAPROXY_BINARY"  # the launcher's GUARD_REAL_BINARY
BIND_HOST = "POSEFLEET_HAPROXY_BIND_HOST"  # the launcher's GUARD_BIND_HOST
PR_SET_PDEATHSIG = 1
# a `bind` with no address (":9101", "*:8404") listens on every interface; one with an address is left alone
_ANY_INTERFACE = re.compile(r"^(\s*bind\s+)\*?:(\d+)", re.MULTILINE)


def bind_on(config: str, host: str) -> str:
    """``config`` with each listener that HAProxy would open on every interface bound on ``host``."""
    address = f"ipv6@{host}" if ":" in host else host
    return _ANY_INTERFACE.sub(lambda m: f"{m.group(1)}{address}:{m.group(2)}", config)


def _config_path(args: list[str]) -> Path | None:
    for flag, value in itertools.pairwise(args):
        if flag == "-f":
            return Path(value)
    return None


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main() -> None:
    real = os.environ.get(REAL_BINARY)
    if not real:
        sys.exit(f"{Path(sys.argv[0]).name}: {REAL_BINARY} is not set (the launcher sets it for Ray's HAProxy)")
    args = sys.argv[1:]
    host, config = os.environ.get(BIND_HOST), _config_path(args)
    if host and config and config.is_file():
        text = config.read_text()
        fixed = bind_on(text, host)
        if fixed != text:
            config.write_text(fixed)
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the request took: nothing would stop this one
        sys.exit(1)
    os.execv(real, [real, *args])


if __name__ == "__main__":
    main()
