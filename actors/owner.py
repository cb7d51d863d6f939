"""Who removes the app's actors: one owner actor per deployed application.

``build_app`` gives every deploy an id of its own. The ingress replicas of that deploy create the app's
actors (stream workers, checkpoint store, viewer hub) under names carrying that id, and join the
deploy's owner; a replica leaving (Serve stops it: the app is deleted, redeployed or scaled down)
says so, and when the last one leaves the owner removes every actor of the deploy, then itself.
It also samples the cluster (nodes by type, replicas per deployment) for ``/v1/stats`` and the metrics.
So a redeploy, with another config or the same, never leaves the previous deploy's actors running.
The actors are detached only so that a single replica's crash does not take them with it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque

import ray
from ray.util import metrics

log = logging.getLogger("posefleet.owner")


def actor_name(deploy_id: str, role: str) -> str:
    return f"posefleet-{deploy_id}-{role}"


# The deploy's bookkeeping actors (this owner, the checkpoint store, the viewer hub, the source registry)
# run on the head node (Ray's head-node resource): a lost worker node takes no stream's state with it, and
# losing the head ends the cluster anyway.
ON_HEAD: dict = {"resources": {"node:__internal_head__": 0.001}}


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4)
class AppOwner:
    def __init__(self, deploy_id: str, namespace: str, sample_s: float = 5.0):
        self.deploy_id, self.namespace = deploy_id, namespace
        self.members: set[str] = set()
        self.history: deque[dict] = deque(maxlen=HISTORY)
        self.sample_s = sample_s
        self.gauges = (
            metrics.Gauge("posefleet_cluster_nodes", "alive Ray nodes", tag_keys=("node_type",)),
            metrics.Gauge("posefleet_serve_replicas", "running replicas", tag_keys=("deployment",)),
        )
        threading.Thread(target=self._sample_forever, name="cluster sampler", daemon=True).start()

    def cluster(self) -> dict:
        """Nodes and replicas now, and their recent history (one sample every ``sample_s``)."""
        return {**(self.history[-1] if self.history else sample()), "history": list(self.history)}

    def _sample_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a controller restarting: the next sample will do
                now = sample()
                self.history.append(now)
                nodes, replicas = self.gauges
                for kind, count in now["nodes"]["by_type"].items():
                    nodes.set(count, tags={"node_type": kind})
                for name, count in now["replicas"].items():
                    replicas.set(count, tags={"deployment": name})
            time.sleep(self.sample_s)

    def join(self, member: str) -> None:
        self.members.add(member)

    def leave(self, member: str) -> None:
        """A replica stops; the last one out removes the deploy's actors, then the owner ends itself."""
        self.members.discard(member)
        if self.members:
            return
        prefix = actor_name(self.deploy_id, "")
        own = actor_name(self.deploy_id, "owner")
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == self.namespace and entry["name"].startswith(prefix) and entry["name"] != own:
                with contextlib.suppress(ValueError):  # gone meanwhile
                    ray.kill(ray.get_actor(entry["name"], namespace=self.namespace), no_restart=True)
        log.info("removed the actors of deploy %s", self.deploy_id)
        ray.actor.exit_actor()


HISTORY = 720  # an hour at one sample every 5 s


def node_type(node: dict) -> str:
    """The autoscaler's node type where Ray labels it, else head / gpu / cpu."""
    labels, resources = node.get("Labels") or {}, node.get("Resources") or {}
    if labels.get("ray.io/node-type-name"):
        return labels["ray.io/node-type-name"]
    return "head" if "node:__internal_head__" in resources else ("gpu" if resources.get("GPU") else "cpu")


REPLICA_PREFIX = "SERVE_REPLICA::"  # Serve names each replica actor SERVE_REPLICA::app#deployment#id


def sample() -> dict:
    """Alive nodes (in all, with GPUs, by type) and live replicas per deployment.

    Replicas are counted from Ray's named actors (one GCS call, ~0.3 CPU-ms) rather than
    ``serve.status()`` (~20 CPU-ms here, and as much again in Serve's controller), so sampling every
    few seconds costs the models nothing measurable."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    by_type: dict[str, int] = {}
    for n in alive:
        kind = node_type(n)
        by_type[kind] = by_type.get(kind, 0) + 1
    replicas: dict[str, int] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == "serve" and entry["name"].startswith(REPLICA_PREFIX):
            parts = entry["name"][len(REPLICA_PREFIX) :].split("#")
            if len(parts) == 3:
                replicas[parts[1]] = replicas.get(parts[1], 0) + 1
    gpus = sum(1 for n in alive if (n.get("Resources") or {}).get("GPU"))
    return {"time": time.time(), "nodes": {"total": len(alive), "gpu": gpus, "by_type": by_type}, "replicas": replicas}


def app_owner(deploy_id: str, namespace: str) -> ray.actor.ActorHandle:
    return AppOwner.options(  # type: ignore[attr-defined]
        name=actor_name(deploy_id, "owner"), namespace=namespace, get_if_exists=True, lifetime="detached", **ON_HEAD
    ).remote(deploy_id, namespace)
