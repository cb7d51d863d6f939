"""Model files shipped inside the package, and the one place that finds and verifies them.

A model is named either by a key of :data:`SHIPPED` or by a path to an ONNX file a user brings
(RTMPose, RTMDet, YOLOX, ...). Bytes are checked against a sha256 when one is known, so a
truncated copy or a wrong file fails at load with a clear message instead of producing garbage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ShippedModel:
    filename: str
    sha256: str
    description: str


SHIPPED: dict[str, ShippedModel] = {
    "movenet_multipose_lightning": ShippedModel(
        "movenet_multipose_lightning_fp16.onnx",
        "b34197d69006a371fc72afa30c38bed735289f65f7388bdd62e3deba55537f76",
        "MoveNet MultiPose Lightning: boxes + COCO-17 keypoints, 6 people a pass",
    ),
    "movenet_thunder": ShippedModel(
        "movenet_thunder.onnx",
        "374f3da76930d94895caa3325c381a427d84f3547fc24435e0644da3d94b903f",
        "MoveNet Thunder: single person, COCO-17 keypoints per 256x256 crop, one crop a call",
    ),
    "blazepose_landmark_full": ShippedModel(
        "pose_landmark_full_dynbatch.onnx",
        "baf176a25966a249733bd3c059572d2bf9571118cf869942e963617734bcd671",
        "BlazePose landmark (full): 33 landmarks per 256x256 person crop, dynamic batch",
    ),
}


class ModelFileError(RuntimeError):
    """A configured model file is missing, unreadable or not the expected bytes."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    path: Path
    data: bytes
    sha256: str


def resolve(model: str) -> tuple[Path, str | None]:
    """Map a model name or path to a file path and its expected sha256 (None if unknown)."""
    if model in SHIPPED:
        entry = SHIPPED[model]
        return MODEL_DIR / entry.filename, entry.sha256
    return Path(model).expanduser(), None


def load(model: str, sha256: str | None = None) -> LoadedModel:
    """Read a model's bytes and verify them; raise :class:`ModelFileError` with the reason."""
    path, known = resolve(model)
    expected = (sha256 or known or "").lower() or None
    if not path.is_file():
        hint = "" if model in SHIPPED else f" (not a shipped model either: {', '.join(SHIPPED)})"
        raise ModelFileError(f"model file not found: {path}{hint}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ModelFileError(
            f"model file {path} is corrupt or not the configured model: sha256 {digest}, "
            f"expected {expected} ({len(data)} bytes read)"
        )
    return LoadedModel(name=model, path=path, data=data, sha256=digest)
