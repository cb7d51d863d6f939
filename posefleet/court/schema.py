"""A fused group frame, as the group JSONL, the API, the sinks and the docs give it."""

from __future__ import annotations

from pydantic import BaseModel, Field

Keypoint3D = list[float]  # x, y, z, score


class GroupPerson(BaseModel):
    group_id: int = Field(description="one id a player within the group (court), kept over time")
    views: dict[str, int] = Field(description="the cameras that see this person: stream id -> its track id there")
    court_xy: tuple[float, float] | None = Field(
        None, description="where the person stands, court (floor) metres; null where no camera places it"
    )
    outside_court: bool | None = Field(None, description="stands beyond the court's lines (null: no court template)")
    keypoints3d: list[Keypoint3D] | None = Field(
        None,
        description=(
            "17 COCO keypoints [x, y, z, score] in metres in the calibration's world frame; score 0 (and 0, 0, 0) "
            "where fewer than two calibrated cameras see one; null where no two calibrated cameras see the person"
        ),
    )
    reprojection_px: list[float | None] | None = Field(
        None, description="each 3D keypoint's mean reprojection error over the views used, px"
    )
    n_views: list[int] = Field(default_factory=list, description="views each 3D keypoint was triangulated from")


class CourtOutline(BaseModel):
    """The court template's shape, so a reader (the viewer's top-down view) can draw it without the template."""

    name: str
    length: float = Field(description="metres along x")
    width: float = Field(description="metres along y")
    net_x: float | None = None


class GroupFrame(BaseModel):
    group: str
    timestamp: float | None = Field(None, description="the frames' capture time (the group's matching time)")
    frames: dict[str, int] = Field(default_factory=dict, description="stream id -> the frame index fused")
    people: list[GroupPerson] = Field(default_factory=list)
    fusion_ms: float = Field(0.0, description="CPU time the fusion took")
    court: CourtOutline | None = Field(None, description="the group's court template, where it has one")
