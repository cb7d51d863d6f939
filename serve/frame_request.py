"""What a frame comes with besides its bytes, parsed from each transport into one :class:`FrameMeta` and
checked there, once, with the same bounds: the query of a POST (FastAPI checks it against these bounds),
a multipart part's headers, a WebSocket's query and the JSON line that may start each of its messages."""

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from posefleet.errors import problems
from posefleet.pipeline.admission import Policy
from posefleet.pipeline.schema import STREAM_ID_PATTERN

# frame indices and timestamps are checked before anything is stored: an index a JSON number holds
# exactly, a finite timestamp within about 30,000 years of 1970
MAX_FRAME_INDEX = 2**53 - 1
MAX_ABS_TIMESTAMP = 1e12
# a frame body this long is checked by its header before the rest is read (real headers end far sooner)
EARLY_HEADER_BYTES = 1 << 20
IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}
MAX_SOCKET_HEADER = 512


class FrameMeta(BaseModel):
    """A frame's index, capture time, its stream's overload policy and group, as checked on arrival."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frame_index: StrictInt | None = Field(None, ge=0, le=MAX_FRAME_INDEX, description="default: the stream's next")
    timestamp: float | None = Field(
        None, ge=-MAX_ABS_TIMESTAMP, le=MAX_ABS_TIMESTAMP, allow_inf_nan=False, strict=True, description="seconds"
    )
    policy: Policy | None = None
    group: str | None = Field(None, pattern=STREAM_ID_PATTERN, description="e.g. the court the camera films")


def frame_meta(**values: Any) -> FrameMeta:
    """The checked metadata, or ValueError with the reason in one line."""
    try:
        return FrameMeta(**values)
    except ValidationError as exc:
        raise ValueError(problems(exc)) from None


def _number(value: str | None, kind: type) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"not a number: {value!r}") from None


def from_part_headers(headers: dict[str, str]) -> FrameMeta:
    """A multipart part's ``x-frame-index`` and ``x-timestamp``."""
    return frame_meta(frame_index=_number(headers.get("x-frame-index"), int),
                      timestamp=_number(headers.get("x-timestamp"), float))  # fmt: skip


def from_socket_query(query: Any) -> FrameMeta:
    """A WebSocket's ``?policy=`` and ``?group=``, for all its frames (``?token=`` is auth's)."""
    return frame_meta(policy=query.get("policy"), group=query.get("group"))


def socket_message(message: dict[str, Any], stream: FrameMeta) -> tuple[FrameMeta, bytes]:
    """A WebSocket frame message: JPEG/PNG bytes, optionally after a one-line JSON header
    ``{"frame_index": n, "timestamp": t}\\n`` (an image never starts with ``{``, so no ambiguity); the
    socket's own policy and group go with it."""
    data = message.get("bytes")
    if data is None:
        raise ValueError("send frames as binary messages")
    if not data.startswith(b"{"):
        return stream, data
    end = data.find(b"\n", 0, MAX_SOCKET_HEADER)
    if end < 0:
        raise ValueError(f"a frame header is one JSON line of at most {MAX_SOCKET_HEADER} bytes, then a newline")
    try:
        meta = json.loads(data[:end])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"frame header is not JSON: {exc}") from None
    if not isinstance(meta, dict) or set(meta) - {"frame_index", "timestamp"}:
        raise ValueError('a frame header takes {"frame_index": int, "timestamp": float}')
    return frame_meta(**meta, policy=stream.policy, group=stream.group), data[end + 1 :]


def error_json(stream_id: str, status: int, detail: str) -> str:
    """An error answer on a WebSocket, where there is no HTTP status to carry it."""
    return json.dumps({"stream_id": stream_id, "error": {"status": status, "detail": detail}})
