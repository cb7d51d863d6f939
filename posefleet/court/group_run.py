"""A group in process (``posefleet run CAM1 CAM2 ... --group NAME --calibration FILE``): the fuser built from the
files a user has, fed each round of the streams' results, one fused frame a line of ``DIR/NAME.group.jsonl``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import yaml
from pydantic import ValidationError

from posefleet.court.calibration import CalibrationError, load_calibration
from posefleet.court.fusion import GroupFuser
from posefleet.court.homography import HomographyCalibration
from posefleet.court.settings import GroupSettings
from posefleet.pipeline.schema import FrameResult


def group_fuser(
    group: str,
    streams: Sequence[str],
    calibration: Sequence[str] = (),
    court_points: str | None = None,
    court: str | None = None,
) -> GroupFuser:
    """The fuser of ``streams`` from calibration files (cameras named as the streams) and/or a court-points file
    (YAML/JSON: stream -> {template, points}); :class:`CalibrationError` names what does not fit."""
    cameras = load_calibration(*calibration) if calibration else {}
    points: dict[str, HomographyCalibration] = {}
    if court_points:
        path = Path(court_points)
        if not path.is_file():
            raise CalibrationError(f"{path}: no such court-points file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            points = {str(s): HomographyCalibration(**v) for s, v in raw.items()}
        except (yaml.YAMLError, ValidationError, AttributeError, TypeError) as exc:
            raise CalibrationError(
                f"{path}: court points as stream: {{template, points: [{{image, name}}]}}: {exc}"
            ) from exc
    known = set(cameras) | set(points)
    unknown = known - set(streams)
    if not known & set(streams):
        raise CalibrationError(
            f"no stream has a camera: the calibration names {', '.join(sorted(known)) or 'none'}; the streams are "
            f"{', '.join(streams)} (name them with --stream)"
        )
    if unknown:
        cameras = {s: c for s, c in cameras.items() if s in streams}
        points = {s: p for s, p in points.items() if s in streams}
    settings = GroupSettings(court_points=points, court=court)
    return GroupFuser(group, settings, cameras)


class GroupWriter:
    """Fuses each round of results and writes the fused frame as a JSON line."""

    def __init__(self, fuser: GroupFuser, path: Path) -> None:
        self.fuser = fuser
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out: IO[str] = path.open("w")
        self.frames = 0
        self.group_ids: set[int] = set()

    def round(self, results: Sequence[FrameResult]) -> None:
        """One round of the streams' results (one frame each, the same time): fused, placed and written."""
        mine = {r.stream_id: r for r in results if r.stream_id in self.fuser.streams}
        if not mine:
            return
        stamps = [r.timestamp for r in mine.values() if r.timestamp is not None]
        frame = self.fuser.fuse(mine, min(stamps) if stamps else None)
        self._out.write(json.dumps(frame.model_dump(mode="json")) + "\n")
        self.frames += 1
        self.group_ids |= {p.group_id for p in frame.people}

    def close(self) -> None:
        self._out.close()
