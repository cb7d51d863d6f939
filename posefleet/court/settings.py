"""A group's (a court's) typed settings: its cameras' calibrations and how their people are fused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from posefleet.court.calibration import CameraCalibration
from posefleet.court.homography import HomographyCalibration


class BonesConfig(BaseModel):
    """A player's arm and leg bones keep their length in 3D (posefleet/court/skeleton.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True, description="fit each 3D pose to its player's bone lengths (the median of its recent measurements)"
    )
    window: int = Field(60, ge=1, description="a player's last measurements of a bone that its length is taken from")
    min_samples: int = Field(5, ge=1, description="measurements of a bone before its length is held")
    tolerance: float = Field(
        0.05, ge=0.0, lt=1.0, description="a bone may measure this fraction more or less than its held length"
    )


class FusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(0.3, ge=0.0, le=1.0, description="keypoints used to associate and triangulate")
    max_epipolar: float = Field(
        0.03, gt=0.0,
        description=(
            "two calibrated views are one person when their keypoints' mean epipolar distance is under this, in "
            "normalised image units (pixels over the focal length: 0.03 is 50 px at a 1680 px focal length)"
        ),
    )  # fmt: skip
    max_ground_m: float = Field(1.0, gt=0.0, description="two views are one person within this on the floor (m)")
    outlier_px: float = Field(
        15.0, gt=0.0, description="a view whose keypoint reprojects further than this is dropped from that keypoint"
    )
    max_view_px: float = Field(
        60.0, gt=0.0, description="a view whose person reprojects this far (median px) is another person"
    )
    max_distance_m: float = Field(1.0, gt=0.0, description="a player within this of its prediction keeps its id")
    max_age_s: float = Field(2.0, gt=0.0, description="how long an unseen player keeps its group id")
    floor_z: float = Field(0.0, description="the floor is z = floor_z in the calibration's world frame (z up)")
    ankle_height_m: float = Field(
        0.08, ge=0.0, description="how high ankle keypoints sit over the floor (where one camera places a person)"
    )
    hint_factor: float = Field(
        0.5, gt=0.0, le=1.0, description="the association cost of two views that were one person a frame ago, scaled"
    )
    court_margin_m: float = Field(1.0, ge=0.0, description="a player this far beyond the lines is still on court")
    bones: BonesConfig = Field(default_factory=BonesConfig)


class GroupSettings(BaseModel):
    """One group's cameras, by stream id: full calibrations (triangulation, 3D keypoints) or court points
    (a ground-plane homography: court positions only), and the fusion's settings."""

    model_config = ConfigDict(extra="forbid")

    cameras: dict[str, CameraCalibration] = Field(default_factory=dict, description="calibrated cameras by stream id")
    court_points: dict[str, HomographyCalibration] = Field(
        default_factory=dict, description="court points of cameras with no full calibration, by stream id"
    )
    court: str | None = Field(
        None,
        description=(
            "the court template (configs/courts) whose lines say who is outside the court; with full "
            "calibrations, the calibration's world x, y are taken as that court's metres; None: the template "
            "the court points were marked on, if any"
        ),
    )
    fusion: FusionConfig = Field(default_factory=FusionConfig)


class GroupsConfig(BaseModel):
    """Court-level fusion when served: one fuser actor per group, fed the results of the group's streams."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="fuse the streams of a group whose cameras are calibrated")
    courts: dict[str, GroupSettings] = Field(
        default_factory=dict, description="groups (courts) known in advance: their cameras and fusion settings"
    )
    max_groups: int = Field(64, ge=1, description="group fusers at most (frames of further groups are not fused)")
    match_window_s: float = Field(
        0.02, gt=0.0, description="a camera's result is part of a group frame within this of the group's time"
    )
    queue_frames: int = Field(
        8, ge=1, description="results a feed holds for its group while the fuser is busy (the newest kept)"
    )
    checkpoint_s: float = Field(1.0, gt=0.0, description="how often a fuser saves its group ids (restart-safe)")
    placement_wait_s: float = Field(
        2.0, gt=0.0, description="a group's first frame on a replica waits this long at most for its calibrations, "
        "to answer with court positions (later changes are fetched behind the frames)",
    )  # fmt: skip
