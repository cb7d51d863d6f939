"""One-Euro filter (Casiez et al., 2012) for keypoints, one state per track."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from posefleet.config import SmoothingConfig


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Smooths an array signal: little lag when it moves fast, little jitter when it is still."""

    def __init__(self, cfg: SmoothingConfig):
        self.cfg = cfg
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: float | None = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        if self.x is None or self.t is None or t <= self.t:
            self.x, self.dx, self.t = x.astype(np.float64), np.zeros_like(x, np.float64), t
            return x
        dt = t - self.t
        dx = (x - self.x) / dt
        a_d = _alpha(self.cfg.d_cutoff, dt)
        self.dx = a_d * dx + (1 - a_d) * self.dx
        cutoff = self.cfg.min_cutoff + self.cfg.beta * np.abs(self.dx)
        a = _alpha(cutoff, dt)
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x.astype(x.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"x": None if self.x is None else self.x.tolist(),
                "dx": None if self.dx is None else self.dx.tolist(), "t": self.t}  # fmt: skip

    @classmethod
    def from_state(cls, cfg: SmoothingConfig, state: dict[str, Any]) -> OneEuroFilter:
        f = cls(cfg)
        f.x = None if state["x"] is None else np.array(state["x"])
        f.dx = None if state["dx"] is None else np.array(state["dx"])
        f.t = state["t"]
        return f
