"""Two Ray nodes on this machine: model replicas spread over both, streams served from both.

Runs the GPU-cluster layout (``serving.models: deployments``: workers call the batched Detector
and Pose deployments) with the top-down preset, so that path is served end to end here too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from conftest import DATA, video_frames
from posefleet.image_io import encode_jpeg
from posefleet.serve.client import submit
from posefleet.serve.launcher import HAPROXY_ENABLE, environment, free_port, local_app
from posefleet.serving_config import AppConfig

pytestmark = pytest.mark.slow  # a real Ray and Serve: the fast subset (-m 'not slow') leaves it out

CLIP = str(DATA / "test_video_structuralize.mp4")
ONE_THREAD = {"intra_op_num_threads": 1}


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[dict]:
    # One machine means one HTTP port, so one proxy (HeadOnly, Serve's own: nodes on one machine cannot each
    # run an HAProxy); it would keep requests on its own node's ingress replica, so local-node preference
    # is turned off for this cluster (set before it starts).
    env = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", HAPROXY_ENABLE: "0"}
    # the dashboard serves the state API (list_actors) used to see where actors run
    head = {"num_cpus": 1, "include_dashboard": True, "dashboard_port": free_port()}
    with environment(env):
        cluster = Cluster(initialize_head=True, head_node_args=head)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    spread = {"num_replicas": 2, "max_replicas_per_node": 1, "num_cpus": 0.25}
    cfg = AppConfig.model_validate(
        {
            "preset": "top-down",
            "pipeline": {"detector": {"ort": ONE_THREAD}, "pose": {"ort": ONE_THREAD}},
            "serving": {
                "ingress": spread,
                "detector": spread,
                "pose": spread,
                "workers": 2,
                "worker_num_cpus": 0.25,
                "models": "deployments",
            },
        }
    )
    try:
        with local_app(cfg, address=cluster.address) as url:
            yield {"url": url, "nodes": {n["NodeID"] for n in ray.nodes() if n["Alive"]}}
    finally:
        cluster.shutdown()


def nodes_of(class_fragment: str) -> set[str]:
    alive = list_actors(filters=[("state", "=", "ALIVE")])
    return {a.node_id for a in alive if class_fragment in a.class_name}


def test_replicas_and_workers_spread_over_both_nodes_and_serve(two_nodes: dict) -> None:
    assert len(two_nodes["nodes"]) == 2
    assert set(serve.status().applications["posefleet"].deployments) == {"Ingress", "DetectorModel", "PoseModel"}
    for deployment in ("Ingress", "DetectorModel", "PoseModel"):
        assert nodes_of(f"ServeReplica:posefleet:{deployment}") == two_nodes["nodes"], deployment
    # four streams at once: each new one goes to the stream worker holding the fewest
    jobs = [(f"node-test-{i}", CLIP) for i in range(4)]
    reports = asyncio.run(submit(two_nodes["url"], jobs, max_rate=True, max_frames=15, progress=False))
    assert all(r.frames == 15 and not r.errors for r in reports), [r.line() for r in reports]
    # one stream worker on each node (each node has room for exactly one beside its three replicas)
    assert nodes_of("StreamWorkerActor") == two_nodes["nodes"]
    assert all(sum(len(p.keypoints) == 17 for p in x.people) for r in reports for x in r.results[2:])
    stats = httpx.get(f"{two_nodes['url']}/v1/stats").json()
    assert stats["models"] == "deployments" and stats["pose"]["batches"] > 0 and stats["detector"]["batches"] > 0
    # frames are served by ingress replicas on both nodes (concurrent requests spread over them)
    frame = encode_jpeg(video_frames("test_video_structuralize.mp4", 1)[0])

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            posts = [client.post(f"{two_nodes['url']}/v1/streams/burst-{i}/frames", content=frame,
                                 headers={"content-type": "image/jpeg"}) for i in range(24)]  # fmt: skip
            return await asyncio.gather(*posts)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    served_by = {r.headers["x-served-by"] for r in responses}
    assert served_by == {n[:12] for n in two_nodes["nodes"]}
    streams = httpx.get(f"{two_nodes['url']}/v1/streams").json()["streams"]
    assert {s["stream_id"] for s in streams} >= {name for name, _ in jobs}
    # each stream worker (one per node) holds two of them
    holders = []
    for actor in list_actors(filters=[("state", "=", "ALIVE")]):
        if "StreamWorkerActor" in actor.class_name:
            handle = ray.get_actor(actor.name, namespace="posefleet")
            held = ray.get(handle.list_streams.remote())
            holders.append(sum(s["stream_id"].startswith("node-test") for s in held))
    assert sorted(holders) == [2, 2]
