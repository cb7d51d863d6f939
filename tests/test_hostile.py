"""Hostile and unlucky clients against a real server (the embedded default, with small caps), each while
an honest camera sends 10 frames a second: the attacker gets a clear 4xx/503, the victim keeps being
served (no error, bounded latency), and nothing the attacker holds outlives its bounds."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Iterator

import httpx
import pytest
import websockets

from conftest import wait_until
from posefleet.config import deep_merge
from posefleet.serve import attacks
from posefleet.serve.app import load_serve_config
from posefleet.serve.launcher import free_port, local_app
from posefleet.serving_config import AppConfig

pytestmark = pytest.mark.slow  # a real Ray and Serve

VICTIM, ATTACKER = "victim-token-1", "attacker-token-2"
METRICS = free_port()
LIMITS = {
    "max_viewers": 6, "max_viewers_per_client": 4,
    "max_sockets": 6, "max_sockets_per_client": 4,
    "max_uploads": 24, "max_uploads_per_client": 12,
    "body_timeout_s": 2.0, "socket_idle_s": 3.0,
    "page_size": 25,
}  # fmt: skip
HOLDER = {"max_streams": 40, "max_streams_per_client": 30, "stream_idle_s": 8.0}
# CI machines are small and shared: the bench holds the 500 ms target (README); here, a bound that
# still fails when the attack reaches the victim (a stall was seconds beyond it, an error is an error).
# A new stream's first frame is a whole scan (on the 426x240 flood frame the frame and 2 tiles, 3 model
# calls), so a POST of 30 new streams put about 90 calls ahead of the victim's frame: 2.8-3.1 s here, 3.2 s
# in CI. A client's batch frames now take turns (limits.batch_frames_per_client, 8): 1.1-1.2 s here.
VICTIM_P99_MS = 3000.0


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    args = load_serve_config()["applications"][0]["args"]
    serving = {"security": {"auth_token": f"{VICTIM},{ATTACKER}"}, "limits": LIMITS, "admission": HOLDER}
    with local_app(AppConfig.model_validate(deep_merge(args, {"serving": serving})), metrics_port=METRICS) as url:
        yield url


def metric(name: str) -> float:
    """The sum of a metric's series on the metrics port (0 where it has none yet)."""
    text = httpx.get(f"http://127.0.0.1:{METRICS}/metrics", timeout=10).text
    names = (name + "{", "ray_" + name + "{")  # (Ray may prefix its exported names)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(names))


@pytest.fixture(scope="module")
def frame() -> bytes:
    return attacks.victim_frame()


def beside_victim(url: str, frame: bytes, name: str, attack: Awaitable) -> tuple[dict, object]:
    """Run ``attack`` while a victim camera streams; the victim's summary and what the attack returned."""

    async def scenario() -> tuple[dict, object]:
        stop = asyncio.Event()
        victim = attacks.Victim(url, frame, stream=f"victim-{name}", token=VICTIM)
        task = asyncio.create_task(victim.run(stop))
        await asyncio.sleep(1.0)
        got = await attack
        await asyncio.sleep(1.0)
        stop.set()
        await task
        return victim.summary(), got

    return asyncio.run(scenario())


def assert_served(victim: dict) -> None:
    assert victim["frames"] >= 10 and victim["errors"] == 0, victim
    assert victim["p99_ms"] <= VICTIM_P99_MS, victim


def test_viewers_beyond_the_caps_get_503_and_frames_flow(server: str, frame: bytes) -> None:
    async def attack() -> tuple:
        mine = asyncio.create_task(attacks.viewers(server, 2, 4.0, VICTIM))
        await asyncio.sleep(0.5)
        theirs = await attacks.viewers(server, 12, 4.0, ATTACKER)
        return await mine, theirs

    victim, (mine, theirs) = beside_victim(server, frame, "viewers", attack())
    assert_served(victim)
    assert mine == {200: 2}  # the victim's client still gets its own viewers
    assert theirs == {200: 4, 503: 8}  # its per-client cap, then 503 at once (not a hang)
    assert held(server)["viewers"]["open"] == 0  # closed viewers gave their slots back


def held(url: str) -> dict:
    """What the ingress holds now (viewers, sockets, uploads), once the last ones have been let go."""
    for _ in range(20):
        out = httpx.get(f"{url}/v1/stats", headers=attacks.auth(VICTIM), timeout=10).json()["held"]
        if not any(v["open"] for v in out.values()):
            break
        time.sleep(0.5)
    return out


def test_slow_and_lying_uploads_time_out_without_taking_frame_slots(server: str, frame: bytes) -> None:
    async def attack() -> tuple:
        return await asyncio.gather(
            attacks.slow_uploaders(server, 16, 6.0, ATTACKER), attacks.lying_lengths(server, 2, ATTACKER)
        )

    t0 = time.perf_counter()
    victim, (slow, lying) = beside_victim(server, frame, "uploads", attack())
    assert_served(victim)
    # 18 uploads of one client: its 12 slots taken (the 13th on gets 503 at once), each cut at body_timeout_s
    assert slow + lying == {408: 12, 503: 6}, (slow, lying)
    assert time.perf_counter() - t0 < 30  # nothing waited for the body that never came
    assert held(server)["uploads"]["open"] == 0


def test_pathological_bodies_are_refused_cheaply(server: str, frame: bytes) -> None:
    victim, got = beside_victim(server, frame, "bodies", attacks.pathological(server, 4, 8.0, ATTACKER))
    assert_served(victim)
    assert set(got) == {400, 413}, got  # each refused, by its first bytes or its header


def test_extreme_indexes_and_timestamps_are_refused_on_every_transport(server: str, frame: bytes) -> None:
    url, headers = server, attacks.auth(ATTACKER)

    def post(**params: object) -> httpx.Response:
        return httpx.post(f"{url}/v1/streams/extreme/frames", content=frame, params=params,
                          headers={"content-type": "image/jpeg", **headers}, timeout=60)  # fmt: skip

    for params in ({"frame_index": 2**53}, {"frame_index": "1" + "0" * 400}, {"frame_index": -1},
                   {"timestamp": "nan"}, {"timestamp": "inf"}, {"timestamp": "1e13"}):  # fmt: skip
        assert post(**params).status_code == 422, params
    bad_header = httpx.post(f"{url}/v1/streams/extreme/frames", content=frame, timeout=60,
                            headers={"content-type": "image/jpeg", "x-timestamp": "-inf", **headers})  # fmt: skip
    assert bad_header.status_code == 422
    batch = httpx.post(f"{url}/v1/frames", headers={**headers}, timeout=60,
                       files=[("extreme", ("a.jpg", frame, "image/jpeg"))] * 1,
                       params={"policy": "drop_oldest"})  # fmt: skip
    assert batch.status_code == 200

    async def socket() -> list[dict]:
        ws_url = url.replace("http://", "ws://") + "/v1/streams/extreme-ws/ws"
        async with websockets.connect(ws_url, additional_headers=headers, max_size=None) as ws:
            answers = []
            for meta in ({"frame_index": 2**53}, {"timestamp": float("1e13")}, {"frame_index": 3}):
                await ws.send(json.dumps(meta).encode() + b"\n" + frame)
                answers.append(json.loads(await ws.recv()))
            return answers

    too_big, too_far, ok = asyncio.run(socket())
    assert too_big["error"]["status"] == 422 and too_far["error"]["status"] == 422 and ok["frame_index"] == 3
    # a representable jump far ahead, then the camera's own count again: the stream recovers by itself
    assert post(frame_index=10).status_code == 200
    assert post(frame_index=2**53 - 1).status_code == 200
    back = post(frame_index=11).json()
    assert not back["dropped"] and "restarted at 11" in back["note"]
    assert post(frame_index=12).json()["frame_index"] == 12


def listed_streams(url: str) -> list[str]:
    page = httpx.get(f"{url}/v1/streams", params={"limit": 25}, headers=attacks.auth(VICTIM), timeout=10).json()
    return [s["stream_id"] for s in page["streams"]]


def test_many_stream_ids_are_capped_paged_and_evicted(server: str, frame: bytes) -> None:
    evicted = HOLDER["stream_idle_s"] * 3  # idle, then the sweeper's round (a quarter of it)
    assert wait_until(lambda: not listed_streams(server), evicted)  # the streams of the tests before are gone
    victim, got = beside_victim(server, frame, "flood", attacks.many_streams(server, 45, frame, ATTACKER))
    assert_served(victim)
    assert got == {200: 30, 503: 15}, got  # the attacker's share of streams, then 503
    auth = attacks.auth(VICTIM)
    pages, after = [], None
    while True:
        params = {"limit": 10} | ({"after": after} if after else {})
        page = httpx.get(f"{server}/v1/streams", params=params, headers=auth, timeout=10).json()
        pages.append([s["stream_id"] for s in page["streams"]])
        after = page["next_after"]
        if after is None:
            break
    listed = [sid for page in pages for sid in page]
    assert listed == sorted(set(listed)) and all(len(p) <= 10 for p in pages)
    assert sum(sid.startswith("flood-") for sid in listed) == 30, listed
    full = httpx.get(f"{server}/v1/streams", params={"limit": 10_000}, headers=auth, timeout=10).json()
    assert len(full["streams"]) <= LIMITS["page_size"]  # a page never exceeds the configured size
    # idle: evicted (also with no frame arriving)
    assert wait_until(lambda: not any(sid.startswith("flood-") for sid in listed_streams(server)), evicted)
    again = asyncio.run(attacks.many_streams(server, 5, frame, ATTACKER, prefix="later"))
    assert again == {200: 5}  # room again


def test_sockets_are_capped_and_idle_ones_closed(server: str, frame: bytes) -> None:
    ws_base = server.replace("http://", "ws://")
    headers = attacks.auth(ATTACKER)

    async def scenario() -> tuple[list, float]:
        held = [await websockets.connect(f"{ws_base}/v1/streams/sock-{i}/ws", additional_headers=headers)
                for i in range(4)]  # fmt: skip
        extra = await websockets.connect(f"{ws_base}/v1/streams/sock-x/ws", additional_headers=headers)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await extra.recv()
        t0 = time.perf_counter()
        with pytest.raises(websockets.ConnectionClosed):  # silent: closed after socket_idle_s
            await asyncio.wait_for(held[0].recv(), 30)
        idle_s = time.perf_counter() - t0
        for ws in held:
            await ws.close()
        return [closed.value.rcvd.code, closed.value.rcvd.reason], idle_s

    (code, reason), idle_s = asyncio.run(scenario())
    assert code == 1013 and "too many sockets" in reason
    assert idle_s < LIMITS["socket_idle_s"] + 5


def test_a_request_head_too_long_gets_a_clear_refusal(server: str, frame: bytes) -> None:
    """A head beyond what the front proxy buffers (a 40 KB path) is refused with a 4xx, then the server
    answers as before (the fuzz keeps its heads under that bound to reach the handlers)."""
    host, port = server.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET /v1/streams/{'a' * 40_000} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = s.recv(64).split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 4"), status
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_a_fuzz_of_every_parameter_finds_no_server_error(server: str, frame: bytes) -> None:
    got, errors = asyncio.run(attacks.fuzz(server, 1500, frame, VICTIM))
    assert sum(got.values()) == 1500 and not got[0]
    assert not errors, errors
    assert {200, 400, 404, 413, 415, 422} <= set(got), got  # it reached the handlers, not only validation


def test_clients_that_go_away_mid_frame_leave_no_stray_errors(server: str, frame: bytes) -> None:
    victim, gone = beside_victim(server, frame, "quitters", attacks.quitters(server, 24, frame, ATTACKER))
    assert_served(victim)
    assert gone == 48
    assert wait_until(lambda: held(server)["sockets"]["open"] == 0, 30)  # what they left in flight ended
    # an exception nobody retrieved is logged by asyncio in the process that owned it, and posefleet's
    # processes count those (posefleet_async_errors): none may be counted. Read once an export taken after
    # a later frame is out, so it holds everything the quitters left.
    before = metric("posefleet_frames_total")
    after = httpx.post(f"{server}/v1/streams/after-quitters/frames", content=frame, timeout=60,
                       headers={"content-type": "image/jpeg", **attacks.auth(VICTIM)})  # fmt: skip
    assert after.status_code == 200
    assert wait_until(lambda: metric("posefleet_frames_total") > before, 60)
    assert metric("posefleet_async_errors_total") == 0
