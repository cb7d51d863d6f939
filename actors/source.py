"""Cameras the cluster pulls itself: a source actor per camera, and the deploy's registry of them.

A :class:`SourceActor` runs a :class:`~posefleet.camera.CameraReader` (decode where the camera is read,
once) and hands each decoded frame to its stream's holder in one Ray call, through its own
:class:`~posefleet.actors.router.FrameRouter`: the same path a POSTed frame takes from an ingress replica
(results, sinks, viewer, metrics alike); no JPEG, no HTTP, no ingress in between. Where the ingress
replicas hold the streams themselves (``serving.workers: 0``), the holder is an ingress replica, reached by
a Serve handle call. One frame a source is in flight: a newer frame replaces the one waiting, as the
``drop_oldest`` policy does for POSTed frames, so latency stays bounded when the pipeline is behind. Ray
restarts a dead source actor, which reconnects; its frames take the stream's next indices, so the stream
goes on.

The :class:`SourceRegistry` (one per deploy, removed with it by the deploy's owner) holds what was asked
for, creates the source actors spread over the nodes, and answers the source endpoints.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from posefleet.actors import FAULTS
from posefleet.actors.owner import ON_HEAD, actor_name
from posefleet.actors.router import FrameRouter
from posefleet.allowlist import check_source_url, redact
from posefleet.camera import CameraReader
from posefleet.errors import Conflict, OverCap, UnknownStream
from posefleet.serving_config import AppConfig

log = logging.getLogger("posefleet.source")
STOP_WAIT_S = 15.0  # a stopping source waits this long at most for its frame in flight


@ray.remote(max_restarts=-1, max_task_retries=0)
class SourceActor:
    """Reads its camera from the moment it exists (also after Ray restarted it) until stopped."""

    def __init__(self, spec: dict[str, Any], app_cfg: AppConfig, deploy_id: str, app_name: str,
                 models: tuple[Any, Any] | None = None):  # fmt: skip
        """``models``: the model deployments' handles, as the deploy's ingress has them (None: models run in
        the workers)."""
        self.spec = spec
        self.stream_id, self.group = spec["stream_id"], spec.get("group")
        self.settings: dict[str, Any] | None = spec.get("settings")  # the stream's own, with every frame
        self.router: FrameRouter | None = None
        self.handle = None
        self.ingress_calls = 0  # frames sent to the ingress (serving.workers: 0)
        if app_cfg.serving.workers > 0:  # straight to the stream's worker, from an event loop of its own
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name=f"router {self.stream_id}", daemon=True).start()
            self.router = self._on_loop(self._make_router(app_cfg, deploy_id, models), 60)
        else:  # the ingress replicas hold the streams
            self.handle = serve.get_deployment_handle("Ingress", app_name=app_name)
        self.slot = threading.Condition()
        self.pending: tuple[np.ndarray, float] | None = None
        self.stopped = False
        self.dropped = self.errors = 0
        self.last_result: dict[str, Any] | None = None
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=300)  # capture to result
        self.reader = CameraReader(spec["resolved"], app_cfg.serving.sources, self._offer, spec.get("max_fps"))
        self.sender = threading.Thread(target=self._send_loop, name=f"send {self.stream_id}", daemon=True)
        self.reader.start()
        self.sender.start()

    @staticmethod
    async def _make_router(app_cfg: AppConfig, deploy_id: str, models: tuple[Any, Any] | None) -> FrameRouter:
        return FrameRouter(app_cfg, deploy_id, models)  # on its loop: its feeds start their tasks there

    def _on_loop(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout_s)

    def _offer(self, image: np.ndarray, index: int, ts: float) -> None:
        """From the reader's thread: the newest frame waits to be sent, replacing one not sent yet."""
        with self.slot:
            if self.pending is not None:
                self.dropped += 1
            self.pending = (image, ts)
            self.slot.notify()

    def _serve(self, image: np.ndarray, ts: float) -> dict[str, Any]:
        """One frame to its holder; frame_index None: the stream's next, so a restarted source goes on where
        the stream was."""
        if self.router is None:
            self.ingress_calls += 1
            call = self.handle.source_frame.remote(self.stream_id, image, None, ts, self.group, self.settings)
            return call.result(timeout_s=60)
        result = self._on_loop(self.router.frame(self.stream_id, image, None, ts, "drop_oldest", "source",
                                                 self.group, self.settings), 60)  # fmt: skip
        return {"frame_index": result.frame_index, "people": result.people, "dropped": result.dropped}

    def _send_loop(self) -> None:
        while True:
            with self.slot:
                while self.pending is None and not self.stopped:
                    self.slot.wait(0.5)
                if self.stopped:
                    return
                (image, ts), self.pending = self.pending, None  # type: ignore[misc]
            try:
                result = self._serve(image, ts)
                self.latency_ms.append((time.time() - ts) * 1000.0)
                self.last_result = {"frame_index": result["frame_index"], "people": len(result["people"]),
                                    "dropped": result["dropped"]}  # fmt: skip
            except Exception as exc:
                self.errors += 1
                log.warning("source %s: a frame was not served: %s", self.stream_id, type(exc).__name__)
                time.sleep(0.2)

    def get_spec(self) -> dict[str, Any]:
        return self.spec

    def status(self) -> dict[str, Any]:
        node = ray.get_runtime_context().get_node_id()[:12]
        lat = sorted(self.latency_ms)
        p50, p99 = (
            (round(lat[len(lat) // 2], 1), round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1))
            if lat
            else (None, None)
        )
        hook = self.router.webhook if self.router is not None else None  # this source's own, when it has one
        return asdict(self.reader.status) | {"dropped": self.dropped, "errors": self.errors, "node": node,
                                              "last_result": self.last_result, "latency_p50_ms": p50,
                                              "latency_p99_ms": p99,
                                              "webhook": hook.snapshot() if hook is not None else None}  # fmt: skip

    def ray_calls(self) -> dict[str, int]:
        """Ray calls this source's frames made (to the worker, placement, viewer hub)."""
        return self.router.ray_calls() if self.router is not None else {"ingress": self.ingress_calls}

    def stop(self) -> None:
        self.reader.stop()
        with self.slot:
            self.stopped = True
            self.slot.notify()
        # the frame in flight is answered first (bounded), so its result reaches the webhook as well as the sink
        self.sender.join(timeout=STOP_WAIT_S)
        if self.router is not None:
            with contextlib.suppress(Exception):
                self.router.close()  # what its sinks and webhook still hold


class SourceRegistry:
    """What sources were asked for, and their actors (get or create by name, so a restart finds them)."""

    def __init__(self, app_cfg: AppConfig, deploy_id: str, app_name: str, models: tuple[Any, Any] | None = None):
        self.app_cfg, self.deploy_id, self.app_name, self.models = app_cfg, deploy_id, app_name, models
        self.namespace, self.cfg = app_cfg.serving.namespace, app_cfg.serving.sources
        self.specs: dict[str, dict[str, Any]] = {}
        self.actors: dict[str, ray.actor.ActorHandle] = {}
        self.recovered = False
        self.state_file = Path(self.cfg.state_file).expanduser() if self.cfg.state_file else None
        if self.state_file is not None and self.state_file.is_file():  # a new deploy, or a head restart
            for spec in json.loads(self.state_file.read_text()):
                self.specs[spec["stream_id"]] = spec
                self._actor(spec["stream_id"], spec)  # reads from the moment it exists
            log.info("started %d sources kept in %s", len(self.specs), self.state_file)

    def _save(self) -> None:
        """Keep the sources asked for, atomically, readable by this user only (URLs may hold credentials)."""
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(list(self.specs.values()), f)
        os.replace(tmp, self.state_file)

    async def _recover(self) -> None:
        """After Ray restarted this registry: the source actors ran on; take their specs back from them."""
        if self.recovered:
            return
        self.recovered = True
        prefix = actor_name(self.deploy_id, "source-")
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == self.namespace and entry["name"].startswith(prefix):
                with contextlib.suppress(ValueError, *FAULTS):
                    spec = await ray.get_actor(entry["name"], namespace=self.namespace).get_spec.remote()
                    self.specs.setdefault(spec["stream_id"], spec)

    def _actor(self, stream_id: str, spec: dict[str, Any]) -> ray.actor.ActorHandle:
        """The stream's source actor: created (or found by name) once, then its handle is kept."""
        if stream_id not in self.actors:
            self.actors[stream_id] = self._create(stream_id, spec)
        return self.actors[stream_id]

    def _create(self, stream_id: str, spec: dict[str, Any]) -> ray.actor.ActorHandle:
        node = spec.get("node")
        placement = NodeAffinitySchedulingStrategy(node, soft=True) if node else "SPREAD"  # soft: its node may die
        return SourceActor.options(  # type: ignore[attr-defined]
            name=actor_name(self.deploy_id, f"source-{stream_id}"), namespace=self.namespace, get_if_exists=True,
            lifetime="detached", scheduling_strategy=placement, num_cpus=self.cfg.num_cpus,
        ).remote(spec, self.app_cfg, self.deploy_id, self.app_name, self.models)  # fmt: skip

    def _place(self) -> str:
        """The alive node running the fewest sources, under ``max_per_node``: sources spread over the cluster."""
        load = {n["NodeID"]: 0 for n in ray.nodes() if n.get("Alive")}
        for spec in self.specs.values():
            if spec.get("node") in load:
                load[spec["node"]] += 1
        node, count = min(load.items(), key=lambda kv: (kv[1], kv[0]))
        if count >= self.cfg.max_per_node:
            raise OverCap(f"every node runs {self.cfg.max_per_node} sources (serving.sources.max_per_node)")
        return node

    async def add(self, stream_id: str, url: str, max_fps: float | None = None,
                  group: str | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Start a source; Forbidden / InvalidRequest for a URL the allowlist refuses, Conflict, OverCap."""
        await self._recover()
        if stream_id in self.specs:
            raise Conflict(f"source {stream_id!r} exists; DELETE it first")
        if len(self.specs) >= self.cfg.max_sources:
            raise OverCap(f"{len(self.specs)} sources run (serving.sources.max_sources)")
        resolved = check_source_url(url, self.cfg)  # before anything is fetched
        spec = {"stream_id": stream_id, "url": redact(url), "resolved": resolved, "max_fps": max_fps,
                "group": group, "settings": settings, "created": time.time(), "node": self._place()}  # fmt: skip
        self.specs[stream_id] = spec
        self._save()
        self._actor(stream_id, spec)  # reads from the moment it exists
        return await self.describe(stream_id)

    async def describe(self, stream_id: str) -> dict[str, Any]:
        await self._recover()
        spec = self.specs.get(stream_id)
        if spec is None:
            raise UnknownStream(f"no source {stream_id!r}")
        try:
            status = await self._actor(stream_id, spec).status.remote()
        except FAULTS as exc:  # restarting: Ray brings it back
            status = {"state": "reconnecting", "last_error": f"source actor restarting ({type(exc).__name__})"}
        public = {k: v for k, v in spec.items() if k not in ("resolved", "node")}
        return public | status

    async def list(self) -> list[dict[str, Any]]:
        await self._recover()
        return list(await asyncio.gather(*(self.describe(sid) for sid in sorted(self.specs))))

    async def remove(self, stream_id: str) -> None:
        await self._recover()
        spec = self.specs.pop(stream_id, None)
        if spec is None:
            raise UnknownStream(f"no source {stream_id!r}")
        self._save()
        actor = self.actors.pop(stream_id, None) or self._create(stream_id, spec)
        with contextlib.suppress(*FAULTS):
            await actor.stop.remote()
        ray.kill(actor, no_restart=True)


RegistryActor = ray.remote(num_cpus=0, max_restarts=-1)(SourceRegistry)


def source_registry(app_cfg: AppConfig, deploy_id: str, app_name: str,
                    models: tuple[Any, Any] | None = None) -> ray.actor.ActorHandle:  # fmt: skip
    return RegistryActor.options(  # type: ignore[attr-defined]
        name=actor_name(deploy_id, "sources"), **ON_HEAD, namespace=app_cfg.serving.namespace, get_if_exists=True,
        lifetime="detached",
    ).remote(app_cfg, deploy_id, app_name, models)  # fmt: skip
