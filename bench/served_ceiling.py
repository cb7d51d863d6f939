"""The served model-free ceiling (bench only): how many 1080p frames a second the serving path itself moves.

The GPU layout (``serving.models: deployments``: one ingress replica, one stream worker, the detector as a
Serve deployment behind ``@serve.batch``) with a detector deployment that replays raw outputs the real model
gave for inputs of the same shape, at zero model cost. Every other part is the product's: HTTP/WebSocket,
the ingress, the worker's decode, regions and letterbox, the Serve handle call and its batching, decoding
the outputs, tracking, JSON. The people are those the real model found in the same places, so tracking and
answers stay real. Nothing in the product can select this: the replaying deployment is bound here.

    python -m bench.served_ceiling [--frames 60] [--streams 1 8]   (also a section of ``python -m bench.camera``)
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from bench.inprocess import LIMITS
from posefleet.actors.deployments import _BatchStats, _items
from posefleet.config import PipelineConfig, deep_merge
from posefleet.image_io import Picture, check_image
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels, ModelCall
from posefleet.serving_config import AppConfig

LAYOUT = {"models": "deployments", "workers": 1, "detector": {"num_cpus": 0.0}, "worker_num_cpus": 0.5}


class Recorder:
    """The real models, keeping each detector input's raw outputs by the input's shape."""

    def __init__(self, models: LocalModels):
        self.models = models
        self.by_shape: dict[tuple[int, ...], list[list[np.ndarray]]] = collections.defaultdict(list)

    def __call__(self, call: ModelCall) -> list:
        out = self.models(call)
        if call.model == "detector":
            for tensor, raw in zip(call.inputs, out, strict=True):
                self.by_shape[tuple(tensor.shape)].append(raw)
        return out


def record(cfg: PipelineConfig, frames: list[bytes]) -> dict[tuple[int, ...], list[list[np.ndarray]]]:
    """One stream of ``frames`` in process with the real models: what the detector returned, by input shape."""
    if cfg.needs_pose_model:
        raise ValueError("the served ceiling replays the detector only: use a single-stage preset")
    recorder = Recorder(LocalModels(cfg))
    pipeline = Pipeline(cfg, recorder)  # type: ignore[arg-type]
    for i, data in enumerate(frames):
        picture = Picture.encoded(data, *check_image(data, LIMITS["max_pixels"], LIMITS["max_side"]))
        pipeline.process_many([("cam", picture, i, None)])
    return dict(recorder.by_shape)


@serve.deployment(name="DetectorModel")
class ReplayDetector:
    """A detector deployment whose outputs are recorded ones (the input's shape's, in turn; the nearest shape's
    for a shape never recorded), batched as the real one is."""

    def __init__(self, recorded: dict[tuple[int, ...], list[list[np.ndarray]]], max_batch_size: int):
        self.recorded = recorded
        self.shapes = list(recorded)
        self.turn: collections.Counter = collections.Counter()
        self.stats = _BatchStats("detector")
        self.detect.set_max_batch_size(max_batch_size)

    def _output(self, tensor: np.ndarray) -> list[np.ndarray]:
        shape = tuple(tensor.shape)
        if shape not in self.recorded:
            size = int(np.prod(shape))
            shape = min(self.shapes, key=lambda s: abs(int(np.prod(s)) - size))
        outs = self.recorded[shape]
        self.turn[shape] += 1
        return outs[self.turn[shape] % len(outs)]

    @serve.batch(batch_size_fn=_items)
    async def detect(self, requests: list[list[np.ndarray]]) -> list[list[list[np.ndarray]]]:
        self.stats.record(_items(requests), len(requests))
        return [[self._output(t) for t in tensors] for tensors in requests]

    async def __call__(self, tensors: list[np.ndarray]) -> list[list[np.ndarray]]:
        return await self.detect(tensors)

    def batch_stats(self, reset: bool = False) -> dict[str, Any]:
        return self.stats.summary(reset) | {"provider": "replayed: no model"}


def replay_app(cfg: AppConfig, recorded: dict[tuple[int, ...], list[list[np.ndarray]]]) -> serve.Application:
    """The product's app (``build_app``'s ingress and options) with the replaying detector bound in."""
    from posefleet.serve.app import deployment_options
    from posefleet.serve.ingress import Ingress

    s = cfg.serving
    replay = ReplayDetector.options(**deployment_options(s.detector, s))
    detector = replay.bind(recorded, s.detector.batch.max_batch_size)
    return Ingress.options(**deployment_options(s.ingress, s)).bind(cfg, uuid.uuid4().hex[:12], detector, None)


def served_ceiling(frames: list[bytes], streams: list[int], total: int,
                   serving: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """WebSocket rows (each stream sends ``total`` frames cycled from ``frames``) at each stream count;
    ``serving``: settings over the layout's."""
    from bench.served import run_transport
    from posefleet.serve.app import load_serve_config
    from posefleet.serve.launcher import local_app

    args = deep_merge(load_serve_config()["applications"][0]["args"], {"serving": deep_merge(LAYOUT, serving or {})})
    cfg = AppConfig.model_validate(args)
    recorded = record(cfg.pipeline_config(), frames)
    with tempfile.TemporaryDirectory() as folder:
        for i, d in enumerate(frames):
            (Path(folder) / f"{i:05d}.jpg").write_bytes(d)
        with local_app(cfg, app=replay_app(cfg, recorded)) as url:
            rows = run_transport(url, "ws", folder, streams, total)
    return [r | {"mode": "served-ws, model-free ceiling", "size": f"{_size(frames[0])}"} for r in rows]


def _size(jpeg: bytes) -> str:
    _, w, h = check_image(jpeg, LIMITS["max_pixels"], LIMITS["max_side"])
    return f"{w}x{h}"


def main() -> None:
    from bench.camera import court_like

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    rows = served_ceiling(court_like((1920, 1080), args.frames), args.streams, args.frames)
    print(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
