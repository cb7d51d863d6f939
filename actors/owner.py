"""Who removes the app's actors: one owner actor per deployed application.

``build_app`` gives every deploy an id of its own. The ingress replicas of that deploy create the app's
actors (stream workers, checkpoint store, viewer hub) under names carrying that id, and join the
deploy's owner; a replica leaving (Serve stops it: the app is deleted, redeployed or scaled down)
says so, and when the last one leaves the owner removes every actor of the deploy, then itself.
So a redeploy, with another config or the same, never leaves the previous deploy's actors running.
The actors are detached only so that a single replica's crash does not take them with it.
"""

from __future__ import annotations

import contextlib
import logging

import ray

log = logging.getLogger("posefleet.owner")


def actor_name(deploy_id: str, role: str) -> str:
    return f"posefleet-{deploy_id}-{role}"


@ray.remote(num_cpus=0, max_restarts=-1)
class AppOwner:
    def __init__(self, deploy_id: str, namespace: str):
        self.deploy_id, self.namespace = deploy_id, namespace
        self.members: set[str] = set()

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


def app_owner(deploy_id: str, namespace: str) -> ray.actor.ActorHandle:
    return AppOwner.options(  # type: ignore[attr-defined]
        name=actor_name(deploy_id, "owner"), namespace=namespace, get_if_exists=True, lifetime="detached"
    ).remote(deploy_id, namespace)
