"""Constant-velocity Kalman filter on (cx, cy, aspect, height), as ByteTrack (after DeepSORT) uses it."""

from __future__ import annotations

import numpy as np
import scipy.linalg

STD_WEIGHT_POSITION = 1.0 / 20
STD_WEIGHT_VELOCITY = 1.0 / 160


class KalmanFilterXYAH:
    """State ``[cx, cy, a, h, vcx, vcy, va, vh]``; measurement ``[cx, cy, a, h]``."""

    def __init__(self) -> None:
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)
        self.observe = np.eye(4, 8)

    @staticmethod
    def _pos_std(h: np.ndarray | float, pos: float, aspect: float) -> np.ndarray:
        return np.array([pos * h, pos * h, aspect * np.ones_like(h), pos * h])

    def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = measurement[3]
        mean = np.r_[measurement, np.zeros(4)]
        std = np.r_[
            self._pos_std(h, 2 * STD_WEIGHT_POSITION, 1e-2),
            10 * STD_WEIGHT_VELOCITY * h,
            10 * STD_WEIGHT_VELOCITY * h,
            1e-5,
            10 * STD_WEIGHT_VELOCITY * h,
        ]
        return mean, np.diag(np.square(std))

    def multi_predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predict ``mean[N, 8]`` and ``cov[N, 8, 8]`` one step ahead."""
        h = mean[:, 3]
        std_pos = self._pos_std(h, STD_WEIGHT_POSITION, 1e-2)
        std_vel = np.array([STD_WEIGHT_VELOCITY * h, STD_WEIGHT_VELOCITY * h, 1e-5 * np.ones_like(h),
                            STD_WEIGHT_VELOCITY * h])  # fmt: skip
        sqr = np.square(np.r_[std_pos, std_vel]).T
        noise = np.zeros((len(mean), 8, 8))
        idx = np.arange(8)
        noise[:, idx, idx] = sqr
        mean = mean @ self.motion.T
        cov = self.motion @ cov @ self.motion.T + noise
        return mean, cov

    def update(self, mean: np.ndarray, cov: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        innovation_cov = np.diag(np.square(self._pos_std(h, STD_WEIGHT_POSITION, 1e-1)))
        proj_mean = self.observe @ mean
        proj_cov = self.observe @ cov @ self.observe.T + innovation_cov
        chol = scipy.linalg.cho_factor(proj_cov, lower=True, check_finite=False)
        gain = scipy.linalg.cho_solve(chol, (cov @ self.observe.T).T, check_finite=False).T
        new_mean = mean + (measurement - proj_mean) @ gain.T
        new_cov = cov - gain @ proj_cov @ gain.T
        return new_mean, new_cov


def tlbr_to_xyah(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], max(box[3] - box[1], 1e-6)
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, w / h, h], dtype=np.float64)


def xyah_to_tlbr(mean: np.ndarray) -> np.ndarray:
    cx, cy, a, h = mean[..., 0], mean[..., 1], mean[..., 2], mean[..., 3]
    w = a * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1).astype(np.float32)
