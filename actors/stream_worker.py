"""Stream workers: a fixed pool of Ray actors, each holding the state of many streams and applying
their frames (:class:`~posefleet.pipeline.worker.StreamWorker`); and the checkpoint actor.

A stream stays on the worker the checkpoint actor placed it on (the one holding the fewest streams when
it began; ingress replicas remember where), so a frame reaches its stream's state in one Ray call,
carrying its encoded bytes; decoding and the rest of its CPU work run there.
Models run inside the worker (``serving.models: local``, ONNX Runtime, concurrent frames of its
streams batched into one inference) or in the Serve model deployments (``deployments``, for GPU
nodes: ``@serve.batch`` across every worker's frames).
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from typing import Any

import numpy as np
import ray
from ray.serve.exceptions import BackPressureError

from posefleet import metrics
from posefleet.actors import FAULTS
from posefleet.actors.owner import ON_HEAD, actor_name
from posefleet.config import PipelineConfig
from posefleet.errors import Unavailable
from posefleet.pipeline.checkpoints import CheckpointStore
from posefleet.pipeline.frames import LocalModels, ModelCall
from posefleet.pipeline.model_queue import QueuedModels
from posefleet.pipeline.worker import StreamWorker
from posefleet.serving_config import ServingConfig

log = logging.getLogger("posefleet.worker")


async def with_retry(call: Any, what: str, retry_s: float) -> Any:
    """Await a remote call; on a dead replica or actor retry for ``retry_s``, then Unavailable (503)."""
    deadline = time.monotonic() + retry_s
    delay = 0.1
    while True:
        try:
            return await call()
        except BackPressureError as exc:
            raise Unavailable(f"{what} is overloaded") from exc
        except FAULTS as exc:
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"{what} is restarting after a failure") from exc
            log.warning("%s failed (%s); retrying", what, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class DeploymentModels:
    """Model calls through the Serve model deployments' handles (batched there by ``@serve.batch``)."""

    def __init__(self, detector: Any, pose: Any, retry_s: float, max_items: dict[str, int] | None = None):
        """``max_items``: each model's ``max_batch_size``; a call with more items (a 1080p frame's many regions)
        goes as several requests, since ``@serve.batch`` refuses a request larger than a whole batch."""
        self.handles = {"detector": detector, "pose": pose}
        self.retry_s = retry_s
        self.max_items = max_items or {}
        self.calls = {"detector": 0, "pose": 0}

    async def __call__(self, call: ModelCall) -> list:
        handle = self.handles[call.model]
        step = self.max_items.get(call.model) or len(call.inputs) or 1
        parts = [call.inputs[i : i + step] for i in range(0, len(call.inputs), step)] or [call.inputs]
        self.calls[call.model] += len(parts)
        what = f"{call.model} model"
        outs = await asyncio.gather(*(with_retry(lambda p=p: handle.remote(p), what, self.retry_s) for p in parts))
        if len(outs) == 1:
            return outs[0]
        if call.model == "detector":  # one output list per input tensor
            return [o for out in outs for o in out]
        return [np.concatenate([out[k] for out in outs]) for k in range(len(outs[0]))]  # pose: arrays per output


class _RemoteCheckpoints:
    """Checkpoints over a :class:`CheckpointStore` actor handle for worker ``shard`` of ``shards``: states
    gathered here and sent together in one fire-and-forget call every ``flush_s``, so checkpoints cost a
    few Ray calls a second in all, not one per stream (a worker lost between flushes loses at most
    ``flush_s`` of its streams' states); a new stream's claim is one call (none with a single holder)."""

    def __init__(self, handle: ray.actor.ActorHandle, flush_s: float, shard: int = 0, shards: int = 1):
        self.handle, self.flush_s, self.shard, self.shards = handle, flush_s, shard, shards
        self.pending: dict[str, dict[str, Any] | None] = {}  # None: delete the stream's
        self.sending = False  # a send is due at the event loop's next turn
        self.flusher: asyncio.Task | None = None
        self.puts = 0  # Ray calls made
        self.claims = 0

    async def put(self, stream_id: str, state: dict[str, Any] | None) -> None:
        self.pending[stream_id] = state
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_s)
        self._send()

    def _send(self) -> None:
        states, self.pending, self.sending = self.pending, {}, False
        if states:
            self.handle.put_many.remote(states, self.shard)  # fire and forget: never slows a frame
            self.puts += 1

    async def claim(self, stream_id: str) -> int:
        """The stream's holder, which is this worker unless the store says otherwise; what is pending goes
        first (Ray runs one caller's calls in order), so a stream forgotten here just now is free again."""
        if self.shards == 1:
            return 0
        self._send()
        self.claims += 1
        return await self.handle.claim.remote(stream_id, self.shard, self.shards)

    async def delete(self, stream_id: str) -> None:
        """Sent at once, not with the next flush: until the store hears of it the stream still counts
        where new streams are placed (a camera deleted and a new one started just after went to the other
        worker). Deletes made together (an eviction sweep) still go in one call: the send waits for the
        event loop's next turn."""
        self.pending[stream_id] = None
        if not self.sending:
            self.sending = True
            asyncio.get_running_loop().call_soon(self._send)


class WorkerHost(StreamWorker):
    """A :class:`StreamWorker` with its models and checkpoints made for it: the body of a stream worker actor,
    or of an ingress replica that holds its streams itself (``serving.workers: 0``)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        serving: ServingConfig,
        store: ray.actor.ActorHandle | None,
        models: tuple[Any, Any] | None = None,
        restored: dict[str, dict[str, Any]] | None = None,
        shard: int = 0,
    ):
        """``models``: the model deployments' handles (None: the models run here); ``restored``: the states of
        this holder's streams after a restart (None: a first start); ``shard``: which of ``serving.workers``."""
        self.queued: QueuedModels | None = None
        batch_items = {"detector": serving.detector.batch.max_batch_size, "pose": serving.pose.batch.max_batch_size}
        if models is None:
            batch_size = metrics.get().batch_size
            self.queued = QueuedModels(
                LocalModels(cfg), batch_items,
                on_batch=lambda model, items: batch_size.observe(items, tags={"model": model}),
            )  # fmt: skip
        runs: Any = self.queued if self.queued is not None else DeploymentModels(
            *models, serving.fault_retry_s, batch_items
        )
        checkpoints = (
            _RemoteCheckpoints(store, serving.checkpoints.flush_s, shard, max(serving.workers, 1))
            if store is not None else None
        )  # fmt: skip
        super().__init__(
            cfg, serving.admission, runs, checkpoints, restored, serving.checkpoints, serving.viewer, shard=shard
        )

    def batch_stats(self, reset: bool = False) -> dict[str, Any]:
        """Frames and items per inference of this worker's local models (none: models are deployments),
        and the Ray calls it made."""
        cp = self.checkpoints
        calls = {"checkpoint": cp.puts if cp is not None else 0, "placement": cp.claims if cp is not None else 0}
        if isinstance(self.models, DeploymentModels):
            calls |= self.models.calls
        models = {} if self.queued is None else {name: s.summary(reset) for name, s in self.queued.stats.items()}
        return models | {"ray_calls": calls, "frames": sum(s.frames for s in self.streams.values())}


@ray.remote
class StreamWorkerActor(WorkerHost):
    """A :class:`WorkerHost` as a Ray actor, worker ``shard`` of ``serving.workers``; when Ray restarts it,
    it takes back its streams from the checkpoint actor."""

    def __init__(self, cfg: PipelineConfig, serving: ServingConfig, store: ray.actor.ActorHandle | None,
                 models: tuple[Any, Any] | None = None, shard: int = 0):  # fmt: skip
        with warnings.catch_warnings():  # Ray's own body of this public call uses a deprecated property
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        restored = ray.get(store.share.remote(shard, serving.workers)) if restarted and store is not None else None
        super().__init__(cfg, serving, store, models, restored, shard)


CheckpointActor = ray.remote(CheckpointStore)


def checkpoint_store(deploy_id: str, serving: ServingConfig) -> ray.actor.ActorHandle:
    """The deploy's checkpoint actor (get or create)."""
    return CheckpointActor.options(  # type: ignore[attr-defined]
        name=actor_name(deploy_id, "checkpoints"), namespace=serving.namespace, get_if_exists=True,
        lifetime="detached", num_cpus=0, max_restarts=-1, **ON_HEAD,
    ).remote(serving.checkpoints.active_s)  # fmt: skip


def worker_pool(
    cfg: PipelineConfig, serving: ServingConfig, deploy_id: str, models: tuple[Any, Any] | None = None
) -> list[ray.actor.ActorHandle]:
    """Get or create the deploy's named stream workers, so every ingress replica shares the same pool.

    Workers are spread over the nodes with room (Ray's SPREAD; a worker that fits nowhere is a demand
    the autoscaler sees). Ray restarts a dead worker (``max_restarts=-1``), on another node if its own
    is gone; it restores its streams from the checkpoint actor on the head.
    """
    store = checkpoint_store(deploy_id, serving)
    return [
        StreamWorkerActor.options(  # type: ignore[attr-defined]
            name=actor_name(deploy_id, f"worker-{i}"),
            namespace=serving.namespace,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=serving.worker_num_cpus,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=1000,
            scheduling_strategy="SPREAD",
        ).remote(cfg, serving, store, models, i)
        for i in range(serving.workers)
    ]
