"""Results kept for analytics code to read later: each stream's answered frames appended as JSON lines,
one file per stream and UTC hour (``<dir>/<stream>/<YYYYmmddTHH>.jsonl``, then ``.1.jsonl``... past
``rotate_mb``). A line is written whole in one append, and a file opened again after a crash loses its
torn last line, so a restart leaves every line whole and none twice."""

from __future__ import annotations

import os
import time
from pathlib import Path

from posefleet.serving_config import SinkConfig


class JsonlSink:
    def __init__(self, cfg: SinkConfig):
        assert cfg.directory is not None
        self.root = Path(cfg.directory)
        self.rotate_bytes = int(cfg.rotate_mb * 1e6)
        self.files: dict[str, tuple[str, int, int]] = {}  # stream -> (hour, part, fd)

    def write(self, stream_id: str, line: str) -> None:
        """Append one result (a JSON object on one line) to the stream's current file."""
        data = (line + "\n").encode()
        fd = self._fd(stream_id, len(data))
        os.write(fd, data)  # one append of the whole line (O_APPEND)

    def _fd(self, stream_id: str, incoming: int) -> int:
        hour = time.strftime("%Y%m%dT%H", time.gmtime())
        current = self.files.get(stream_id)
        if current is not None and current[0] == hour and os.fstat(current[2]).st_size + incoming <= self.rotate_bytes:
            return current[2]
        part = current[1] + 1 if current is not None and current[0] == hour else 0
        if current is not None:
            os.close(current[2])
        folder = self.root / stream_id
        folder.mkdir(parents=True, exist_ok=True)
        while True:  # the first part of this hour with room (after a restart, the one it was writing)
            path = folder / (f"{hour}.jsonl" if part == 0 else f"{hour}.{part}.jsonl")
            if not path.exists() or path.stat().st_size + incoming <= self.rotate_bytes:
                break
            part += 1
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        _drop_torn_line(fd)
        self.files[stream_id] = (hour, part, fd)
        return fd

    def forget(self, stream_id: str) -> None:
        current = self.files.pop(stream_id, None)
        if current is not None:
            os.close(current[2])

    def close(self) -> None:
        for stream_id in list(self.files):
            self.forget(stream_id)


def _drop_torn_line(fd: int) -> None:
    """Cut a last line that a crash left without its newline."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail_len = min(size, 1 << 20)
    tail = os.pread(fd, tail_len, size - tail_len)
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    os.ftruncate(fd, size - tail_len + cut + 1 if cut >= 0 else (0 if tail_len == size else size - tail_len))
