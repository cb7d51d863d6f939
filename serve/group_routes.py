"""A group's (a court's) fused people and its cameras' calibrations: read from and set on the group's fuser actor
(:mod:`posefleet.actors.group_fuser`); a mixin of the ``Ingress`` deployment."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import ray
from fastapi import Body, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from posefleet.actors import FAULTS
from posefleet.actors.group_fuser import check_camera
from posefleet.court.calibration import CalibrationError
from posefleet.court.schema import GroupFrame
from posefleet.serve.api import EVENT_STREAM, StreamId, app, routes_of_ingress
from posefleet.serve.auth import AUTH, Client
from posefleet.serve.viewer_routes import HeldStream

CALIBRATION_EXAMPLE = {
    "camera": {"size": [1920, 1080], "matrix": [[1400, 0, 960], [0, 1400, 540], [0, 0, 1]],
               "distortions": [0, 0, 0, 0], "rotation": [1.9, 0.0, 0.0], "translation": [0.0, 1.5, 12.0]},
    "check_points": [{"world": [0, 0, 0], "image": [960, 700]}],
}  # fmt: skip


class GroupPeople(GroupFrame):
    version: int = 0
    errors: dict[str, str] = Field(default_factory=dict, description="stream id -> why its results are left out")


@routes_of_ingress
class GroupRoutes:
    """The group routes of the ``Ingress`` deployment."""

    def _group(self, group: str, create: bool = False) -> Any:
        """The group's fuser; ``create``: made if there is none (a calibration is being set)."""
        feed = self.router.groups
        if feed is None:
            raise HTTPException(404, "group fusion is turned off (serving.groups.enabled)")
        fuser = feed.fuser(group, create)
        if fuser is None and create:
            raise HTTPException(429, f"no more groups: this deploy fuses {feed.cfg.max_groups} at most")
        if fuser is None:
            raise HTTPException(404, f"group {group!r} has no calibrated camera (serving.groups.courts, or PUT one)")
        return fuser

    @app.get("/v1/groups/{group}/people", dependencies=AUTH, response_model=GroupPeople, responses={404: {}})
    async def group_people(self, group: StreamId) -> dict:
        """The group's latest fused frame: one group id a player, the cameras that see it, its court position
        and, where two calibrated cameras see it, its 17 keypoints in 3D."""
        found = await self._group(group).people.remote()
        if found is None:
            raise HTTPException(404, f"group {group!r} has fused no frame yet (calibrated cameras sending?)")
        return found

    @app.get("/v1/groups/{group}/people/events", responses=EVENT_STREAM)
    async def group_events(self, group: StreamId, request: Request, client: Client) -> StreamingResponse:
        """Server-sent events: each fused frame of the group as it is made (capped like viewers)."""
        fuser = self._group(group)
        self.viewers.enter(client)

        async def stream() -> AsyncIterator[str]:
            version = -1
            while not await request.is_disconnected():
                try:
                    frame = await fuser.wait.remote(version, 5.0)
                except FAULTS:
                    await asyncio.sleep(1.0)
                    continue
                except (asyncio.CancelledError, ray.exceptions.TaskCancelledError):
                    return
                if frame is None:
                    yield ": keep-alive\n\n"
                    continue
                version = frame["version"]
                yield f"data: {json.dumps(frame, separators=(',', ':'))}\n\n"

        return HeldStream(stream(), lambda: self.viewers.leave(client), media_type="text/event-stream",
                          headers={"Cache-Control": "no-store"})  # fmt: skip

    @app.put("/v1/groups/{group}/cameras/{stream_id}/calibration", dependencies=AUTH, responses={422: {}})
    async def put_calibration(
        self, group: StreamId, stream_id: StreamId, body: Annotated[dict, Body(examples=[CALIBRATION_EXAMPLE])]
    ) -> dict:
        """Set a camera's calibration within its group: ``camera`` (OpenCV's model; rotation as Rodrigues or 3x3,
        translation in metres; optional ``check_points`` of world and image points, whose reprojection errors
        are answered) or ``court_points`` (a court template's points in the image: a ground-plane homography;
        optional ``size`` [w, h] to check them against). A singular, degenerate or mismatched calibration gets
        422 with the reason. Kept across restarts; the players keep their group ids."""
        try:  # checked here: a calibration that is no calibration makes no fuser
            entry = check_camera(stream_id, body)
        except CalibrationError as exc:
            raise HTTPException(422, str(exc)) from None
        answer = await self._group(group, create=True).set_camera.remote(stream_id, entry)
        if not answer["ok"]:
            raise HTTPException(422, answer["reason"])
        return {k: v for k, v in answer.items() if k != "ok"}

    @app.get("/v1/groups/{group}/cameras/{stream_id}/calibration", dependencies=AUTH, responses={404: {}})
    async def get_calibration(self, group: StreamId, stream_id: StreamId) -> dict:
        found = await self._group(group).camera.remote(stream_id)
        if found is None:
            raise HTTPException(404, f"camera {stream_id!r} of group {group!r} has no calibration")
        return found

    @app.delete("/v1/groups/{group}/cameras/{stream_id}/calibration", dependencies=AUTH, status_code=204,
                responses={404: {}})  # fmt: skip
    async def delete_calibration(self, group: StreamId, stream_id: StreamId) -> None:
        if not await self._group(group).delete_camera.remote(stream_id):
            raise HTTPException(404, f"camera {stream_id!r} of group {group!r} has no calibration set over the API")
