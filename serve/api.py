"""The HTTP API's FastAPI app and what its routes share: path types, OpenAPI descriptions of bodies and
errors, and the one handler that maps every posefleet error to its HTTP answer. The routes are methods of
the ``Ingress`` deployment, split by concern: ``transports`` (frames in), ``management`` (streams,
sources, stats) and ``viewer_routes`` (the live page and its feeds)."""

import inspect
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse

from posefleet import __version__
from posefleet.errors import PosefleetError
from posefleet.pipeline.schema import STREAM_ID_PATTERN

BAD_STREAM_ID = "invalid stream id (1-64 of A-Za-z0-9._-)"


StreamId = Annotated[
    str, Path(pattern=STREAM_ID_PATTERN, description="1-64 characters: letters, digits, '.', '_', '-'")
]

app = FastAPI(
    title="posefleet",
    version=__version__,
    description=(
        "Multi-person 2D pose estimation with tracking, for many camera streams. Frames come in three ways, "
        "all served by the same pipeline: `POST /v1/streams/{stream_id}/frames` (one JPEG/PNG a request), "
        "`WS /v1/streams/{stream_id}/ws` (a WebSocket per stream: binary JPEG/PNG messages in, one JSON "
        "`FrameResult` out per frame, in order; a message may start with a JSON line "
        '`{"frame_index": n, "timestamp": t}` and a newline before the image bytes; errors come back as '
        '`{"error": {"status", "detail"}}`; the token goes in the `Authorization` header or `?token=`), '
        "and `POST /v1/frames` (multipart: several frames of one or many streams, each part "
        "named by its stream id)."
    ),
)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not a usable JPEG/PNG image"},
    401: {"description": "missing or wrong bearer token"},
    408: {"description": "the body did not arrive in full within limits.body_timeout_s"},
    409: {"description": "duplicate or out-of-order frame index, or the frame was abandoned"},
    413: {"description": "body or image larger than the configured limits"},
    415: {"description": "content type is not image/jpeg, image/png or application/octet-stream"},
    503: {"description": "overloaded, over a cap (serving.limits) or recovering from a fault; retry after Retry-After"},
}

EVENT_STREAM: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}, 503: ERRORS[503]}
SOURCE_ERRORS = {403: {"description": "sources off, or the URL is not on the allowlist"}, 503: ERRORS[503]}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
FRAME_BODY = {
    "required": True,
    "description": "one encoded frame",
    "content": {"image/jpeg": _BINARY, "image/png": _BINARY, "application/octet-stream": _BINARY},
}
FRAMES_BODY = {
    "required": True,
    "description": (
        "multipart/form-data: one file part per frame, its field name the stream id; optional part headers "
        "`x-frame-index` and `x-timestamp`. A stream's frames apply in the order they appear."
    ),
    "content": {"multipart/form-data": {"schema": {"type": "object", "additionalProperties": _BINARY}}},
}




@app.exception_handler(PosefleetError)
async def error_answer(request: Request, exc: PosefleetError) -> JSONResponse:
    """Every posefleet error as its HTTP status with the reason in ``detail`` (503s say when to retry)."""
    headers = {"Retry-After": str(request.app.state.retry_after)} if exc.status == 503 else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


async def _replica() -> Any:
    from ray import serve

    return serve.get_replica_context().servable_object


Routes = TypeVar("Routes", bound=type)


def routes_of_ingress(cls: Routes) -> Routes:
    """Mark the route methods of a mixin of ``Ingress`` as Serve marks its own (``self``: the replica's
    deployment object), where they are defined. Serve does it for ``Ingress`` when it decorates the class, and
    ships the class by value; a mixin's methods travel by reference, so a replica that imports the mixin
    without that decoration would see ``self`` as a required query parameter."""
    endpoints = {route.endpoint for route in app.router.routes if hasattr(route, "endpoint")}
    for fn in vars(cls).values():
        if fn in endpoints:
            sig = inspect.signature(fn)
            first, *rest = sig.parameters.values()
            params = [first.replace(default=Depends(_replica))]
            params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest]
            fn.__signature__ = sig.replace(parameters=params)
    return cls
