"""Ray actors and Serve deployments around the plain-Python pipeline (``posefleet.pipeline``)."""

import ray

# what a call to a dead or restarting actor/replica raises: retried, then answered 503
FAULTS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
