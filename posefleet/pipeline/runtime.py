"""ONNX Runtime in one place: provider choice (TensorRT, then CUDA, then CPU), session options,
and a thin model wrapper that batches inputs into as few ``session.run`` calls as the model allows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

import numpy as np
import onnxruntime as ort

from posefleet import models
from posefleet.config import CPU, CUDA, TENSORRT, OrtConfig

log = logging.getLogger("posefleet.runtime")

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def choose_providers(available: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """The preferred providers that this build offers, in preference order, always ending on CPU."""
    chain = [p for p in preferred if p in available and p != CPU]
    return [*chain, CPU]


def gpu_build_conflict() -> str | None:
    """Explain the silent CPU fallback when both onnxruntime wheels are installed."""
    try:
        metadata.version("onnxruntime-gpu")
        metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return None
    if CUDA in ort.get_available_providers():
        return None
    return (
        "both onnxruntime and onnxruntime-gpu are installed and the CPU build won; run "
        "'pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu'"
    )


def _provider_options(name: str, cfg: OrtConfig) -> dict[str, Any]:
    if name == TENSORRT:
        opts: dict[str, Any] = {"device_id": cfg.device_id, "trt_fp16_enable": cfg.trt_fp16}
        if cfg.trt_engine_cache_dir:
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=cfg.trt_engine_cache_dir)
        return opts
    if name == CUDA:
        return {"device_id": cfg.device_id}
    return {}


def session_options(cfg: OrtConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = _GRAPH_LEVELS[cfg.graph_optimization_level]
    so.intra_op_num_threads = cfg.intra_op_num_threads
    so.inter_op_num_threads = cfg.inter_op_num_threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if cfg.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.log_severity_level = 3
    return so


def create_session(
    model: str, cfg: OrtConfig, sha256: str | None = None, available: Sequence[str] | None = None
) -> ort.InferenceSession:
    """Load and verify a model, then open a session on the best provider that actually starts.

    ``available`` overrides what the installed build reports (for tests and for forcing a chain).
    """
    loaded = models.load(model, sha256)
    conflict = gpu_build_conflict()
    if conflict:
        log.warning(conflict)
    chain = choose_providers(ort.get_available_providers() if available is None else available, cfg.providers)
    so = session_options(cfg)
    try:
        session = ort.InferenceSession(loaded.data, so, providers=[(p, _provider_options(p, cfg)) for p in chain])
    except Exception as exc:  # a GPU provider that is listed but cannot start (driver, libs)
        if chain == [CPU]:
            raise
        log.warning("providers %s failed for %s (%s); falling back to CPU", chain, loaded.path.name, exc)
        session = ort.InferenceSession(loaded.data, so, providers=[CPU])
    active = session.get_providers()
    if active[0] != chain[0]:  # ONNX Runtime drops a provider it cannot start with only a warning of its own
        log.warning("%s: %s did not start (missing libraries or driver?); running on %s",
                    loaded.path.name, chain[0], active[0])  # fmt: skip
    log.info("%s runs on %s (asked for %s)", loaded.path.name, active[0], " > ".join(chain))
    return session


class OnnxModel:
    """One ONNX Runtime session and the knowledge of whether its batch axis is dynamic."""

    def __init__(self, model: str, cfg: OrtConfig, sha256: str | None = None, outputs: list[str] | None = None):
        self.session = create_session(model, cfg, sha256)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        self.output_names = outputs or [o.name for o in self.session.get_outputs()]
        self.dynamic_batch = not isinstance(self.input_shape[0], int)
        self.provider = self.session.get_providers()[0]
        self.pool = ThreadPoolExecutor(cfg.parallel_runs, "posefleet-ort") if cfg.parallel_runs > 1 else None

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """One ``session.run`` on a ready batch."""
        return self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch)})

    def run_many(self, tensors: Sequence[np.ndarray], max_batch: int = 64) -> list[list[np.ndarray]]:
        """Run single-item tensors ``[1, ...]``, concatenating same-shaped ones into shared calls.

        Returns, per input tensor, its outputs with the batch axis kept (length 1).
        """
        results: list[list[np.ndarray] | None] = [None] * len(tensors)
        if not self.dynamic_batch:
            if self.pool is not None and len(tensors) > 1:  # ORT releases the GIL: runs overlap on the cores
                return list(self.pool.map(self.run, tensors))
            return [self.run(t) for t in tensors]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape[1:]), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), max_batch):
                part = idx[start : start + max_batch]
                outs = self.run(np.concatenate([tensors[i] for i in part]))
                offset = 0
                for i in part:
                    n = tensors[i].shape[0]
                    results[i] = [o[offset : offset + n] for o in outs]
                    offset += n
        return results  # type: ignore[return-value]
