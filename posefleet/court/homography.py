"""One camera on a court, without a full calibration: the ground-plane homography from four or more image points
matched to court points (a template's named corners and line crossings, or court metres), checked on arrival."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, Field, model_validator

from posefleet.court.calibration import CalibrationError

# the court templates ship as data in the configs package (read directly: posefleet.config imports this module)
COURTS_DIR = Path(str(resources.files("posefleet.configs"))) / "courts"

MIN_SPREAD = 1e-3  # the points' smallest principal spread over their largest: below it they lie on a line
MAX_REPROJECTION_PX = 25.0  # matched points the homography misses by more than this are refused as inconsistent


class CourtTemplate(BaseModel):
    """A court's shape in metres: its length (x), width (y), the net's x and its named points."""

    name: str
    length: float = Field(gt=0)
    width: float = Field(gt=0)
    net_x: float | None = Field(None, description="the line across that splits the court's two halves")
    points: dict[str, tuple[float, float]] = Field(default_factory=dict)

    def inside(self, xy: np.ndarray, margin: float = 0.0) -> np.ndarray:
        xy = np.atleast_2d(xy)
        return (
            (xy[:, 0] >= -margin) & (xy[:, 0] <= self.length + margin)
            & (xy[:, 1] >= -margin) & (xy[:, 1] <= self.width + margin)
        )  # fmt: skip


@cache
def court_template(name: str) -> CourtTemplate:
    """A template by name from ``configs/courts/NAME.yaml`` (add a file to add a court)."""
    path = COURTS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in COURTS_DIR.glob("*.yaml"))
        raise CalibrationError(f"unknown court template {name!r}; templates: {', '.join(known)}")
    return CourtTemplate(**yaml.safe_load(path.read_text()))


class CourtPoint(BaseModel):
    """An image point and where it is on the court: a template point's name or court metres."""

    image: tuple[float, float]
    name: str | None = None
    court: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one(self) -> CourtPoint:
        if (self.name is None) == (self.court is None):
            raise ValueError("a court point gives either name (a template point) or court [x, y] metres")
        return self


class HomographyCalibration(BaseModel):
    """A camera's court points, as the config and the API take them."""

    template: str = Field("volleyball", description="the court template (configs/courts/*.yaml)")
    points: list[CourtPoint] = Field(min_length=4, description="4 or more image points with their court points")


@dataclass(frozen=True)
class Homography:
    """Image pixels to court metres (``H``), fitted from points it misses by ``errors_px``."""

    H: np.ndarray
    template: CourtTemplate
    errors_px: np.ndarray
    errors_m: np.ndarray

    def to_court(self, pixels: np.ndarray) -> np.ndarray:
        px = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        if not len(px):
            return np.zeros((0, 2))
        return cv2.perspectiveTransform(px, self.H).reshape(-1, 2)

    def to_image(self, court: np.ndarray) -> np.ndarray:
        pts = np.asarray(court, dtype=np.float64).reshape(-1, 1, 2)
        return cv2.perspectiveTransform(pts, np.linalg.inv(self.H)).reshape(-1, 2)


def _spread(points: np.ndarray) -> float:
    s = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    return float(s[-1] / s[0]) if s[0] > 0 else 0.0


def fit_homography(calib: HomographyCalibration, size: tuple[int, int] | None = None) -> Homography:
    """The least-squares homography of the matched points; :class:`CalibrationError` when they are too few, on a
    line, off the image, name no template point, or do not fit one plane."""
    template = court_template(calib.template)
    image, court = [], []
    for p in calib.points:
        if p.name is not None and p.name not in template.points:
            raise CalibrationError(f"{p.name!r} is no point of the {template.name} court; its points: "
                                   f"{', '.join(template.points)}")  # fmt: skip
        image.append(p.image)
        court.append(template.points[p.name] if p.name is not None else p.court)
    img, crt = np.array(image, dtype=np.float64), np.array(court, dtype=np.float64)
    if not (np.isfinite(img).all() and np.isfinite(crt).all()):
        raise CalibrationError("court points must be finite numbers")
    if size is not None:
        w, h = size
        off = (img[:, 0] < 0) | (img[:, 0] > w) | (img[:, 1] < 0) | (img[:, 1] > h)
        if off.any():
            raise CalibrationError(f"image point {img[off][0].tolist()} lies off the {w}x{h} image")
    if len({tuple(c) for c in crt}) < len(crt) or len({tuple(i) for i in img}) < len(img):
        raise CalibrationError("two court points repeat the same image or court point")
    if _spread(img) < MIN_SPREAD or _spread(crt) < MIN_SPREAD:
        raise CalibrationError("the court points lie on one line: a homography needs 4 points, no 3 of them on a line")
    H, _ = cv2.findHomography(img, crt, 0)
    if H is None or not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
        raise CalibrationError("the court points give a degenerate homography (3 of them on a line?)")
    hom = Homography(H, template, np.zeros(len(img)), np.zeros(len(img)))
    w_img = (np.c_[img, np.ones(len(img))] @ H.T)[:, 2]
    if not ((w_img > 0).all() or (w_img < 0).all()):
        raise CalibrationError("the court points do not lie on one plane seen by the camera (the horizon crosses them)")
    errors_px = np.linalg.norm(hom.to_image(crt) - img, axis=1)
    errors_m = np.linalg.norm(hom.to_court(img) - crt, axis=1)
    if errors_px.max() > MAX_REPROJECTION_PX:
        worst = int(errors_px.argmax())
        raise CalibrationError(f"the court points do not fit one plane: point {worst} is missed by "
                               f"{errors_px[worst]:.0f} px (a point matched to the wrong court point?)")  # fmt: skip
    return Homography(H, template, errors_px, errors_m)
