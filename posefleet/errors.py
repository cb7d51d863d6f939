"""Every error a frame or a request can meet, each with its HTTP status and its metric label.

The ingress maps them to answers in one place (``serve/ingress.py``); the CLI prints their message.
Each keeps a constructor that takes the message alone, so Ray can rebuild one raised in an actor.
"""

from __future__ import annotations

from typing import Any


def problems(exc: Any, root: str = "") -> str:
    """A pydantic ValidationError as one line: ``where: what`` per problem (``root`` where it has no place)."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or root}: {e['msg'].removeprefix('Value error, ')}".removeprefix(": ")
        for e in exc.errors()
    )


class PosefleetError(Exception):
    """Base: ``status`` is the HTTP answer, ``reason`` the ``posefleet_frame_errors_total`` label."""

    status = 500
    reason = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ImageError(PosefleetError, ValueError):
    """The body is not a usable JPEG/PNG image."""

    status, reason = 400, "image"


class ImageTruncated(ImageError):
    """The bytes end before the image header does (a part of a body may still be whole later)."""


class ImageTooLarge(ImageError):
    """The image (by its header) is over the configured pixel or side limits."""

    status, reason = 413, "image_limit"


class BodyTooLarge(PosefleetError):
    status, reason = 413, "body_limit"


class WrongContentType(PosefleetError):
    status, reason = 415, "content_type"


class BodyTimeout(PosefleetError):
    """The request body did not arrive in full within ``limits.body_timeout_s`` (a slow or lying upload)."""

    status, reason = 408, "body_timeout"


class FrameOrderError(PosefleetError, ValueError):
    """A frame index that is not after the stream's last one (a duplicate, or late under ``wait``)."""

    status, reason = 409, "order"


class FrameAbandoned(PosefleetError):
    """The frame stalled past ``frame_timeout_s`` (or its stream was reset) and was given up."""

    status, reason = 409, "abandoned"


class InvalidRequest(PosefleetError, ValueError):
    """A request's content is unusable as given (a source URL with no host, a file that is not there)."""

    status, reason = 422, "invalid"


class Conflict(PosefleetError, ValueError):
    """It exists already (a source for the stream)."""

    status, reason = 409, "conflict"


class Forbidden(PosefleetError):
    """Not allowed by the configuration (a source URL off the allowlist, sources turned off)."""

    status, reason = 403, "forbidden"


class UnknownStream(PosefleetError):
    status, reason = 404, "unknown_stream"


class Unavailable(PosefleetError):
    """Overloaded, or a worker/replica is restarting: retry after ``Retry-After`` (HTTP 503)."""

    status, reason = 503, "unavailable"


class StreamBusy(Unavailable):
    """The stream already has as many frames waiting as its ``wait`` policy allows."""

    reason = "stream_busy"


class OverCap(Unavailable):
    """A client, or the replica, holds as many viewers, sockets, uploads or streams as its caps allow."""

    reason = "cap"


class FrameDropped(PosefleetError):
    """Not an error answer: a newer frame of the same stream superseded this one (HTTP 200, dropped)."""

    status, reason = 200, "dropped"


class HeldElsewhere(Exception):
    """Not an answer: a stream worker got a frame of a stream another worker holds (the ingress's idea of
    where it is was stale); the ingress sends the frame on to worker ``holder``."""

    def __init__(self, holder: int) -> None:
        super().__init__(holder)
        self.holder = holder


def cause(exc: BaseException) -> BaseException:
    """The original exception of one raised inside a Ray actor (Ray wraps it as ``cause``)."""
    return getattr(exc, "cause", None) or exc
