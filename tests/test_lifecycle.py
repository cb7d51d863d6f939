"""Every actor the app needs belongs to its deploy: a redeploy with another config, and deleting the
app, leave no actor of the previous deploy running (a real Ray, a real Serve)."""

from __future__ import annotations

import time

import httpx
import pytest
import ray
from ray import serve

from bench.local import local_app
from conftest import video_frames
from posefleet.config import AppConfig
from posefleet.image_io import encode_jpeg
from posefleet.serve.app import build_app

pytestmark = pytest.mark.slow  # a real Ray and Serve: the fast subset (-m 'not slow') leaves it out

ONE_THREAD = {"detector": {"ort": {"intra_op_num_threads": 1}}}


def posefleet_actors() -> set[str]:
    """Names of the live named actors that are the app's own (not Serve's replicas or controller)."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("posefleet-")}


def wait_for(check, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def test_redeploy_and_delete_leave_no_orphans() -> None:
    first = AppConfig.model_validate({"pipeline": ONE_THREAD, "serving": {"workers": 2, "ingress": {"num_cpus": 0.25},
                                                                         "worker_num_cpus": 0.25}})  # fmt: skip
    second = AppConfig.model_validate({"preset": "fast", "pipeline": ONE_THREAD,
                                       "serving": {"workers": 1, "ingress": {"num_cpus": 0.25},
                                                   "worker_num_cpus": 0.25}})  # fmt: skip
    frame = encode_jpeg(video_frames("test_video_structuralize.mp4", 1)[0])
    with local_app(first) as url:
        post = lambda: httpx.post(f"{url}/v1/streams/s/frames", content=frame,  # noqa: E731
                                  headers={"content-type": "image/jpeg"}, timeout=60)  # fmt: skip
        assert post().status_code == 200
        before = posefleet_actors()
        assert sum("-worker-" in n for n in before) == 2 and any("-checkpoints" in n for n in before), before

        serve.run(build_app(second), name="posefleet", route_prefix="/")  # another config, same app
        assert post().status_code == 200
        assert wait_for(lambda: not (posefleet_actors() & before)), posefleet_actors() & before
        after = posefleet_actors()
        assert sum("-worker-" in n for n in after) == 1, after

        serve.delete("posefleet")
        assert wait_for(lambda: not posefleet_actors()), posefleet_actors()
