"""Court fusion served: the Pose2Sim demo's four cameras posted to a real Serve app as one group, its fused people
read back over HTTP (latest and as events), calibrations set and refused over the API, and the group's fuser
killed mid-stream coming back with its group ids."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest
import ray
from test_webhook import Receiver

from conftest import DATA, wait_until
from posefleet.config import deep_merge
from posefleet.court.calibration import load_calibration
from posefleet.image_io import encode_jpeg
from posefleet.serve.app import load_serve_config
from posefleet.serve.launcher import free_port, local_app
from posefleet.serving_config import AppConfig

pytestmark = pytest.mark.slow  # a real Ray and Serve

DEMO = DATA / "pose2sim"
CAMS = ["cam01", "cam02", "cam03", "cam04"]
FRAMES = 40


@pytest.fixture(scope="module")
def frames() -> dict[str, list[bytes]]:
    out = {}
    for cam in CAMS:
        cap = cv2.VideoCapture(str(DEMO / f"{cam}.mp4"))
        out[cam] = [encode_jpeg(cap.read()[1], 90) for _ in range(FRAMES)]
        cap.release()
    return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


@pytest.fixture(scope="module")
def sink_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sink")


@pytest.fixture(scope="module")
def server(receiver: Receiver, sink_dir: Path) -> Iterator[str]:
    """The embedded default with the demo room as a group known in advance (its calibrations in the config),
    results to a JSONL sink and a webhook."""
    args = load_serve_config()["applications"][0]["args"]
    calibrated = load_calibration(DEMO / "Calib.qca.txt")
    cameras = {name: cam.to_model().model_dump(mode="json") for name, cam in calibrated.items()}
    sink = {"directory": str(sink_dir), "webhook": {"url": f"http://127.0.0.1:{receiver.port}/hook", "interval_s": 0.2}}
    # the fuser checkpoints its ids on every fused frame: the test waits for the one it needs, no guessed time
    serving = {"groups": {"courts": {"room": {"cameras": cameras}}, "checkpoint_s": 0.001}, "sink": sink}
    with local_app(AppConfig.model_validate(deep_merge(args, {"serving": serving}))) as url:
        yield url


def post_round(url: str, frames: dict[str, list[bytes]], i: int, group: str = "room") -> list[dict]:
    """Frame ``i`` of every camera; their answers."""
    answers = []
    for cam in CAMS:
        r = httpx.post(f"{url}/v1/streams/{cam}/frames", content=frames[cam][i % FRAMES], timeout=60,
                       params={"frame_index": i, "timestamp": i / 60.0, "group": group},
                       headers={"content-type": "image/jpeg"})  # fmt: skip
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


def fused_at(url: str, index: int, group: str = "room", timeout_s: float = 20.0) -> dict:
    """The group's latest fused frame once it has reached frame ``index`` of every camera."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/groups/{group}/people", timeout=10)
        if r.status_code == 200 and min(r.json()["frames"].values(), default=-1) >= index:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"no fused frame of {group} at frame {index}: {r.status_code} {r.text[:300]}")


def test_served_group_gives_two_people_with_3d_and_keeps_their_ids_through_a_fuser_restart(
    server, frames, sink_dir, receiver
):
    url = server
    ids_seen: set[int] = set()
    answers = [a for i in range(FRAMES // 2) for a in post_round(url, frames, i)]
    # each camera's answer places its people on the court, from the first frame on, as the fused frames do
    people = [p for a in answers for p in a["people"]]
    assert people and all(p["court_xy"] is not None for p in people), people[:2]
    assert all(abs(x) < 10 for p in people for x in p["court_xy"])  # metres in the room
    first = fused_at(url, FRAMES // 2 - 1)
    assert first["group"] == "room" and len(first["people"]) == 2
    for person in first["people"]:
        assert len(person["keypoints3d"]) == 17 and len(person["views"]) >= 2 and person["court_xy"] is not None
    ids_seen |= {p["group_id"] for p in first["people"]}
    views = {p["group_id"]: p["views"] for p in first["people"]}

    # the fuser dies mid-stream (Ray restarts it): it comes back with its group ids from the checkpoint store
    named = ray.util.list_named_actors(all_namespaces=True)
    fuser = next(a for a in named if a["name"].endswith("-group-room"))
    store = next(a for a in named if a["name"].endswith("-checkpoints"))
    store = ray.get_actor(store["name"], namespace=store["namespace"])
    checkpointed = lambda: (ray.get(store.group_state.remote("room")) or {}).get("version", -1)  # noqa: E731
    assert wait_until(lambda: checkpointed() >= first["version"], 10)  # the first half's ids are in the store
    post_round(url, frames, FRAMES // 2)
    fused_at(url, FRAMES // 2)
    ray.kill(ray.get_actor(fuser["name"], namespace=fuser["namespace"]), no_restart=False)
    for i in range(FRAMES // 2 + 1, FRAMES):
        post_round(url, frames, i)
    last = fused_at(url, FRAMES - 1)
    assert {p["group_id"] for p in last["people"]} == ids_seen, (ids_seen, last["people"])
    for p in last["people"]:  # each player still seen through the same cameras' tracks
        assert set(p["views"].items()) & set(views[p["group_id"]].items())

    # the server-sent events give the same frames
    with httpx.stream("GET", f"{url}/v1/groups/room/people/events", timeout=30) as events:
        line = next(x for x in events.iter_lines() if x.startswith("data: "))
    event = json.loads(line.removeprefix("data: "))
    assert event["version"] >= last["version"] and {p["group_id"] for p in event["people"]} == ids_seen

    # the group's JSONL sink and the webhook have its fused frames too (the fuser's restart lost none of the sink)
    lines = [json.loads(x) for f in sorted((sink_dir / "_groups" / "room").glob("*.jsonl")) for x in f.open()]
    assert {p["group_id"] for x in lines for p in x["people"]} == ids_seen
    assert max(min(x["frames"].values()) for x in lines) == FRAMES - 1
    assert all(set(x) >= {"group", "timestamp", "people"} and x["group"] == "room" for x in lines)
    def at_the_end() -> bool:
        return any(min(x["frames"].values()) == FRAMES - 1 for x in receiver.group_frames)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not at_the_end():
        time.sleep(0.2)
    assert at_the_end() and {p["group_id"] for x in receiver.group_frames for p in x["people"]} == ids_seen
    assert all(x["stream_id"] in CAMS for x in receiver.results())  # the streams' own results beside them
    assert all(p["court_xy"] is not None for x in receiver.results() for p in x["people"])


def test_calibrations_over_the_api_are_checked_with_the_reason(server):
    url = server
    base = f"{url}/v1/groups/court-b/cameras/cam09/calibration"
    good = {"size": [1920, 1080], "matrix": [[1400, 0, 960], [0, 1400, 540], [0, 0, 1]],
            "distortions": [0, 0, 0, 0], "rotation": [0, 0, 0], "translation": [0, 0, 10]}  # fmt: skip
    bad = {**good, "matrix": [[0, 0, 960], [0, 1400, 540], [0, 0, 1]]}
    r = httpx.put(base, json={"camera": bad})
    assert r.status_code == 422 and "singular" in r.json()["detail"], r.text
    r = httpx.put(base, json={"camera": {**good, "rotation": [[1, 0, 0], [0, 1, 0], [0, 0, -1]]}})
    assert r.status_code == 422 and "not a rotation" in r.json()["detail"], r.text
    r = httpx.put(base, json={"court_points": {"template": "volleyball", "points": [
        {"name": "end_a_side1", "image": [300, 560]}, {"name": "attack_a_side1", "image": [800, 562]},
        {"name": "attack_b_side1", "image": [1300, 564]}, {"name": "end_b_side1", "image": [1800, 566]}]}})  # fmt: skip
    assert r.status_code == 422 and "one line" in r.json()["detail"], r.text
    assert httpx.get(base).status_code == 404
    # a good one: the reprojection error of its check point is answered (the origin is on the optical axis)
    r = httpx.put(base, json={"camera": good, "check_points": [{"world": [0, 0, 0], "image": [961, 540]}]})
    assert r.status_code == 200 and r.json()["reprojection_px"] == [1.0], r.text
    assert httpx.get(base).json()["calibration"]["translation"] == [0.0, 0.0, 10.0]
    # a second camera where the first stands: no baseline, refused; the first is kept
    r = httpx.put(f"{url}/v1/groups/court-b/cameras/cam10/calibration", json={"camera": good})
    assert r.status_code == 422 and "same place" in r.json()["detail"], r.text
    # the camera's answers carry court positions from its calibration over the API, and none once it is deleted
    photo = encode_jpeg(cv2.resize(cv2.imread(str(DATA / "000000000785.jpg")), (1920, 1080)))
    index = itertools.count()

    def placed() -> list:
        r = httpx.post(f"{url}/v1/streams/cam09/frames", params={"group": "court-b", "frame_index": next(index)},
                       content=photo, headers={"content-type": "image/jpeg"}, timeout=60)  # fmt: skip
        assert r.status_code == 200 and r.json()["people"], r.text
        return [p["court_xy"] for p in r.json()["people"]]

    assert all(xy is not None for xy in placed())  # the first frame of the group here waited for them
    assert httpx.delete(base).status_code == 204
    assert wait_until(lambda: all(xy is None for xy in placed()), 10)  # the next push tells the feed of the change
    assert httpx.get(base).status_code == 404 and httpx.delete(base).status_code == 404
    # the config's cameras are read back too, and the config says where they came from
    got = httpx.get(f"{url}/v1/groups/room/cameras/cam02/calibration").json()
    assert got["source"] == "config" and got["calibration"]["size"] == [1088, 1920]
    # a group nobody calibrated has no fuser: reading it, or sending it frames, makes no actor
    photo = (DATA / "000000000785.jpg").read_bytes()
    r = httpx.post(f"{url}/v1/streams/plain-cam/frames", params={"group": "plain"}, timeout=60, content=photo,
                   headers={"content-type": "image/jpeg"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = httpx.get(f"{url}/v1/groups/plain/people")
    assert r.status_code == 404 and "no calibrated camera" in r.json()["detail"], r.text
    assert httpx.get(f"{url}/v1/groups/plain/cameras/plain-cam/calibration").status_code == 404
    fusers = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "-group-" in a["name"]]
    assert not any(name.endswith(("-group-plain", "-group-nobody")) for name in fusers), fusers
    assert any(name.endswith("-group-court-b") for name in fusers)  # made by its calibration


def test_the_viewer_shows_the_groups_players_top_down(server, frames, tmp_path):
    """The live page in headless Chromium: the room's court view has a dot a player, with its group id and the
    cameras that see it, the same as GET /v1/groups/room/people."""
    from test_viewer import Feeder, viewer_page  # skips where Chromium is missing

    rounds = itertools.count(FRAMES)  # the cameras go on (their clips again, frame indices on) while the page looks
    feeder = Feeder(lambda: post_round(server, frames, next(rounds)))
    shot = tmp_path / "court.png"
    try:
        with viewer_page(f"{server}/viewer", 900) as page:
            page.wait_for_selector('.group[data-group="room"] section.court[data-players="2"]', timeout=60_000)
            page.wait_for_timeout(1000)
            shown = page.eval_on_selector_all(
                'section.court[data-group="room"] li',
                "els => els.map(e => ({gid: parseInt(e.dataset.gid), cameras: e.dataset.cameras.split(',')}))",
            )
            page.screenshot(path=str(shot))
    finally:
        feeder.close()
    fused = httpx.get(f"{server}/v1/groups/room/people", timeout=10).json()
    assert sorted(x["gid"] for x in shown) == sorted(p["group_id"] for p in fused["people"]), (shown, fused)
    for x in shown:
        assert len(x["cameras"]) >= 2 and set(x["cameras"]) <= set(CAMS), shown
    assert shot.stat().st_size > 20_000
    if out := os.environ.get("POSEFLEET_COURT_SCREENSHOT"):
        shutil.copyfile(shot, out)
