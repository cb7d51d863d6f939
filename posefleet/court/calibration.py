"""Calibrated cameras: intrinsics, distortion and pose, loaded from the files users already have and checked on
arrival (a singular, degenerate or mismatched calibration is refused with the reason).

World frame: whatever the calibration's is, in metres (a Qualisys file's millimetres are converted); the floor is
the plane ``z = floor_z`` of that frame (z up), which is how Qualisys and Pose2Sim's demos set it.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, Field, field_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# a Qualisys file gives intrinsics in sub-pixel units: 64 to the pixel
QUALISYS_SUBPIXELS = 64.0
ROTATION_TOLERANCE = 1e-3  # |R R^T - I| and |det R - 1| a rotation matrix may miss by (rounded files)


class CalibrationError(ValueError):
    """A calibration that cannot be used, with the reason (the API answers it as a 4xx)."""


class CameraCalibration(BaseModel):
    """One camera as the config and the API give it: OpenCV's pinhole model, the world-to-camera pose."""

    size: tuple[int, int] = Field(description="image width, height in pixels the intrinsics are for")
    matrix: list[list[float]] = Field(description="3x3 intrinsic matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (px)")
    distortions: list[float] = Field(
        default_factory=lambda: [0.0, 0.0, 0.0, 0.0],
        description="OpenCV's k1, k2, p1, p2[, k3, ...] (4, 5, 8, 12 or 14)",
    )
    rotation: list[float] | list[list[float]] = Field(
        description="world-to-camera rotation: a Rodrigues vector [3] or a 3x3 matrix"
    )
    translation: tuple[float, float, float] = Field(description="world-to-camera translation in metres")

    @field_validator("size")
    @classmethod
    def _size(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 1:
            raise ValueError(f"size {list(size)}: width and height must be positive")
        return size


@dataclass(frozen=True)
class Camera:
    """A calibrated camera: ``x_cam = R @ X_world + t``, pixels through ``K`` and ``dist`` (OpenCV's model)."""

    name: str
    size: tuple[int, int]  # width, height
    K: np.ndarray
    dist: np.ndarray
    R: np.ndarray
    t: np.ndarray

    @cached_property
    def rvec(self) -> np.ndarray:
        return cv2.Rodrigues(self.R)[0].ravel()

    @property
    def center(self) -> np.ndarray:
        """The camera's position in the world."""
        return -self.R.T @ self.t

    @cached_property
    def extrinsic(self) -> np.ndarray:
        """``[R | t]``: the projection of normalised (undistorted) image coordinates."""
        return np.hstack([self.R, self.t[:, None]])

    @property
    def focal(self) -> float:
        return float((self.K[0, 0] + self.K[1, 1]) / 2)

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points ``[N, 3]`` to distorted pixels ``[N, 2]``."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 3)
        if not len(pts):
            return np.zeros((0, 2))
        px, _ = cv2.projectPoints(pts, self.rvec, self.t, self.K, self.dist)
        return px.reshape(-1, 2)

    def to_model(self) -> CameraCalibration:
        return CameraCalibration(
            size=self.size,
            matrix=self.K.tolist(),
            distortions=self.dist.tolist(),
            rotation=self.rvec.tolist(),
            translation=tuple(self.t.tolist()),
        )


def camera_from_model(name: str, model: CameraCalibration) -> Camera:
    """A checked :class:`Camera` from its config/API form; :class:`CalibrationError` says what is wrong."""
    K = np.asarray(model.matrix, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise CalibrationError(f"camera {name}: matrix must be 3x3 finite numbers")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if (
        fx <= 0
        or fy <= 0
        or abs(np.linalg.det(K)) < 1e-9
        or not np.allclose(K[2], [0, 0, 1])
        or K[1, 0]
        or K[2, :2].any()
    ):
        raise CalibrationError(f"camera {name}: singular or malformed intrinsic matrix (fx {fx:g}, fy {fy:g})")
    w, h = model.size
    if not (-w <= cx <= 2 * w and -h <= cy <= 2 * h):
        raise CalibrationError(f"camera {name}: principal point ({cx:g}, {cy:g}) far outside its {w}x{h} image")
    dist = np.asarray(model.distortions, dtype=np.float64)
    if len(dist) not in (4, 5, 8, 12, 14) or not np.isfinite(dist).all():
        raise CalibrationError(f"camera {name}: distortions take 4, 5, 8, 12 or 14 finite numbers, not {len(dist)}")
    R = np.asarray(model.rotation, dtype=np.float64)
    if R.shape == (3,) and np.isfinite(R).all():
        R = cv2.Rodrigues(R)[0]
    elif R.shape != (3, 3) or not np.isfinite(R).all():
        raise CalibrationError(f"camera {name}: rotation must be a Rodrigues vector [3] or a 3x3 matrix")
    if np.abs(R @ R.T - np.eye(3)).max() > ROTATION_TOLERANCE or abs(np.linalg.det(R) - 1) > ROTATION_TOLERANCE:
        raise CalibrationError(f"camera {name}: rotation is not a rotation matrix (orthonormal, det +1)")
    t = np.asarray(model.translation, dtype=np.float64)
    if not np.isfinite(t).all():
        raise CalibrationError(f"camera {name}: translation must be finite")
    return Camera(name, (int(w), int(h)), K, dist, R, t)


def check_rig(cameras: dict[str, Camera]) -> None:
    """A group of calibrated cameras that can triangulate: no two at the same place (no baseline)."""
    names = list(cameras)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if np.linalg.norm(cameras[a].center - cameras[b].center) < 0.01:
                raise CalibrationError(f"cameras {a} and {b} stand at the same place: no baseline to triangulate")


def check_size(camera: Camera, width: int, height: int) -> None:
    """Frames of another size than the calibration's would put every point in the wrong place."""
    if (width, height) != camera.size:
        w, h = camera.size
        raise CalibrationError(f"camera {camera.name}: calibrated for {w}x{h} images, frames are {width}x{height}")


def reprojection_errors(camera: Camera, world: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Pixel distance between ``image`` points and the projections of their ``world`` points."""
    world, image = np.asarray(world, dtype=np.float64), np.asarray(image, dtype=np.float64)
    if world.ndim != 2 or world.shape[1] != 3 or image.shape != (len(world), 2):
        raise CalibrationError("check points need as many [x, y, z] world points as [u, v] image points")
    return np.linalg.norm(camera.project(world) - image, axis=1)


# -- the files users have ---------------------------------------------------------------------------------------


def load_calibration(*paths: str | Path) -> dict[str, Camera]:
    """Cameras by name from Qualisys ``.qca.txt``, Pose2Sim/Anipose ``.toml`` or OpenCV FileStorage
    (``.yml``/``.yaml``/``.json``/``.xml``; intrinsics and extrinsics may be two files, as EasyMocap writes them)."""
    models: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise CalibrationError(f"{path}: no such calibration file")
        name = path.name.lower()
        try:
            if name.endswith(".qca.txt") or name.endswith(".qca"):
                found = read_qca(path.read_text())
            elif name.endswith(".toml"):
                found = read_toml(path.read_text())
            elif name.endswith((".yml", ".yaml", ".json", ".xml")):
                found = read_opencv(path)
            else:
                raise CalibrationError(f"{path}: unknown calibration format (.qca.txt, .toml, .yml, .json, .xml)")
        except CalibrationError:
            raise
        except (ValueError, KeyError, TypeError, ET.ParseError, tomllib.TOMLDecodeError, cv2.error) as exc:
            raise CalibrationError(f"{path}: cannot read it as a calibration: {exc}") from exc
        for cam, fields in found.items():
            models.setdefault(cam, {}).update(fields)
    if not models:
        raise CalibrationError(f"{', '.join(map(str, paths))}: no camera found")
    cameras = {}
    for cam, fields in models.items():
        missing = {"size", "matrix", "rotation", "translation"} - set(fields)
        if missing:
            raise CalibrationError(f"camera {cam}: no {', '.join(sorted(missing))} in {', '.join(map(str, paths))}")
        try:
            model = CameraCalibration(**fields)
        except ValueError as exc:
            raise CalibrationError(f"camera {cam}: {exc}") from exc
        cameras[cam] = camera_from_model(cam, model)
    return cameras


def read_qca(text: str) -> dict[str, dict[str, Any]]:
    """Qualisys' XML: the camera-to-world pose in mm, intrinsics (and, as Pose2Sim's converter writes them,
    distortions) in sub-pixels. Converted to OpenCV's world-to-camera pose in metres with Pose2Sim's reading:
    ``t = -R @ position``, then a half turn about the camera's x axis (Qualisys' image y points up)."""
    root = ET.fromstring(text)
    out: dict[str, dict[str, Any]] = {}
    for cam in root.iter("camera"):
        if cam.get("active", "1") == "0":
            continue
        name = cam.get("serial") or f"cam{len(out) + 1:02d}"
        fov, intr, tr = cam.find("fov_video"), cam.find("intrinsic"), cam.find("transform")
        if fov is None or intr is None or tr is None:
            raise CalibrationError(f"camera {name}: needs fov_video, intrinsic and transform elements")
        left, top = float(fov.get("left", 0)), float(fov.get("top", 0))
        size = (int(float(fov.get("right")) - left + 1), int(float(fov.get("bottom")) - top + 1))
        sub = QUALISYS_SUBPIXELS
        fu, fv = float(intr.get("focalLengthU")) / sub, float(intr.get("focalLengthV")) / sub
        cu, cv = float(intr.get("centerPointU")) / sub - left, float(intr.get("centerPointV")) / sub - top
        dist = [float(intr.get(k, 0)) / sub for k in
                ("radialDistortion1", "radialDistortion2", "tangentalDistortion1", "tangentalDistortion2")]  # fmt: skip
        R = np.array([float(tr.get(f"r{i}{j}")) for i in (1, 2, 3) for j in (1, 2, 3)]).reshape(3, 3)
        pos = np.array([float(tr.get(k)) for k in "xyz"]) / 1000.0  # the camera's position, mm
        t = -R @ pos
        flip = np.diag([1.0, -1.0, -1.0])  # a half turn about x
        out[name] = {"size": size, "matrix": [[fu, 0, cu], [0, fv, cv], [0, 0, 1]], "distortions": dist,
                     "rotation": (flip @ R).tolist(), "translation": tuple(flip @ t)}  # fmt: skip
    return out


def read_toml(text: str) -> dict[str, dict[str, Any]]:
    """Pose2Sim's and Anipose's calibration TOML: one table a camera (name, size, matrix, distortions,
    rotation as Rodrigues, translation in metres)."""
    data = tomllib.loads(text)
    out = {}
    for key, cam in data.items():
        if not isinstance(cam, dict) or key in ("metadata", "capture_volume", "charuco", "checkerboard"):
            continue
        if cam.get("fisheye"):
            raise CalibrationError(f"camera {key}: fisheye calibrations are not supported")
        out[str(cam.get("name", key))] = {k: cam[k] for k in ("size", "matrix", "distortions", "rotation",
                                                               "translation") if k in cam}  # fmt: skip
    return out


_OPENCV_KEYS = {
    "matrix": ("K", "camera_matrix", "cameraMatrix", "intrinsic"),
    "distortions": ("dist", "D", "distortion_coefficients", "distCoeffs"),
    "rotation": ("Rot", "R", "rvec", "rotation"),
    "translation": ("T", "tvec", "translation"),
}


def read_opencv(path: Path) -> dict[str, dict[str, Any]]:
    """OpenCV FileStorage: one camera (``camera_matrix``/``K``, ``distortion_coefficients``, ``R``/``rvec``,
    ``T``/``tvec``, ``image_width``/``image_height``), or several named in ``names`` with suffixed keys
    (``K_cam1``, ``dist_cam1``, ``Rot_cam1`` or ``R_cam1``, ``T_cam1``, ``W_cam1``/``H_cam1``) as EasyMocap writes."""
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    if not fs.isOpened():
        raise CalibrationError(f"{path}: OpenCV cannot open it")
    try:
        names_node = fs.getNode("names")
        if names_node.isSeq():
            names = [names_node.at(i).string() for i in range(names_node.size())]
            return {n: _opencv_camera(fs, f"_{n}") for n in names}
        return {path.stem.split(".")[0]: _opencv_camera(fs, "")}
    finally:
        fs.release()


def _opencv_camera(fs: cv2.FileStorage, suffix: str) -> dict[str, Any]:
    def node(key: str) -> Any:
        n = fs.getNode(key + suffix)
        if n.empty():
            return None
        if n.isMap():  # an opencv-matrix
            return n.mat()
        if n.isSeq():
            return np.array([n.at(i).real() for i in range(n.size())])
        return n.real() if n.isReal() or n.isInt() else None

    out: dict[str, Any] = {}
    for field, keys in _OPENCV_KEYS.items():
        for key in keys:
            value = node(key)
            if value is not None:
                arr = np.asarray(value, dtype=np.float64)
                out[field] = (
                    arr.ravel().tolist() if field != "matrix" and arr.size in (3, 4, 5, 8, 12, 14) else arr.tolist()
                )
                break
    if "rotation" in out and np.asarray(out["rotation"]).size == 9:
        out["rotation"] = np.asarray(out["rotation"]).reshape(3, 3).tolist()
    w = next((node(k) for k in ("image_width", "W", "width") if node(k) is not None), None)
    h = next((node(k) for k in ("image_height", "H", "height") if node(k) is not None), None)
    if w is not None and h is not None:
        out["size"] = (int(w), int(h))
    if "translation" in out:
        out["translation"] = tuple(np.asarray(out["translation"]).ravel()[:3].tolist())
    return out


def write_toml(cameras: dict[str, Camera], path: str | Path) -> None:
    """The cameras as a Pose2Sim/Anipose TOML (what Pose2Sim reads; the bench hands it one)."""
    lines = []
    for name, cam in cameras.items():
        K = cam.K.tolist()
        lines += [
            f"[{name}]", f'name = "{name}"', f"size = [ {cam.size[0]:.1f}, {cam.size[1]:.1f}]",
            f"matrix = [ [ {K[0][0]!r}, 0.0, {K[0][2]!r}], [ 0.0, {K[1][1]!r}, {K[1][2]!r}], [ 0.0, 0.0, 1.0]]",
            f"distortions = {json.dumps(cam.dist[:4].tolist())}", f"rotation = {json.dumps(cam.rvec.tolist())}",
            f"translation = {json.dumps(cam.t.tolist())}", "fisheye = false", "",
        ]  # fmt: skip
    lines += ["[metadata]", "adjusted = false", "error = 0.0", ""]
    Path(path).write_text("\n".join(lines))


def natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]
