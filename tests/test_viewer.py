"""The live viewer end to end: two real streams served, the page in headless Chromium shows both."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import DATA, video_frames
from posefleet.image_io import encode_jpeg
from posefleet.serve.client import submit
from posefleet.serve.launcher import local_app
from posefleet.serving_config import AppConfig

pytestmark = pytest.mark.slow  # a real Ray and Serve: the fast subset (-m 'not slow') leaves it out

CHROMIUM = os.environ.get("POSEFLEET_CHROMIUM", "/usr/bin/chromium")
TOKEN = "viewer-token-81"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
]  # fmt: skip



def chromium_or_skip():
    """Playwright's sync API, or a skip saying what is missing."""
    api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install-test-tools.sh", allow_module_level=True)
    return api


playwright_api = chromium_or_skip()


class Feeder:
    """``step`` called again and again on a thread of its own until closed: cameras that go on sending while a
    page looks."""

    def __init__(self, step: Callable[[], object]) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(step,), daemon=True)
        self.thread.start()

    def _run(self, step: Callable[[], object]) -> None:
        while not self.stop.is_set():
            step()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@contextlib.contextmanager
def viewer_page(url: str, height: int) -> Iterator[Any]:
    """A headless Chromium page, 1280 px wide, opened on ``url``."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    one = {"intra_op_num_threads": 1}
    cfg = AppConfig.model_validate(
        {
            "preset": "fast",
            "pipeline": {"detector": {"ort": one}, "pose": {"ort": one}},
            "serving": {
                "ingress": {"num_cpus": 0.25}, "detector": {"num_cpus": 0.25}, "pose": {"num_cpus": 0.25},
                "security": {"auth_token": TOKEN}, "viewer": {"thumbnail_interval_s": 0.3, "ended_after_s": 3},
            },
        }
    )  # fmt: skip
    with local_app(cfg) as url:
        yield url


def test_viewer_shows_both_streams_live(server: str, tmp_path: Path) -> None:
    assert httpx.get(f"{server}/v1/events", timeout=5).status_code == 401  # same auth as the API
    assert httpx.get(f"{server}/viewer").status_code == 200  # the page itself holds no data
    jobs = [
        ("court-1-cam-a", str(DATA / "test_video_structuralize.mp4")),
        ("hall-cam-b", str(DATA / "demo.mp4")),
    ]

    def feed() -> None:  # both streams live while the browser looks
        asyncio.run(submit(server, jobs, fps=6, max_inflight=2, max_frames=30, cycle=True, progress=False,
                           token=TOKEN))  # fmt: skip
        for name, _ in jobs:
            httpx.post(f"{server}/v1/streams/{name}/reset", headers={"authorization": f"Bearer {TOKEN}"})

    feeder = Feeder(feed)
    shot = tmp_path / "viewer.png"
    try:
        with viewer_page(f"{server}/viewer#token={TOKEN}", 560) as page:
            for name, _ in jobs:
                page.wait_for_selector(f'section.tile[data-stream="{name}"]', timeout=60_000)
            page.wait_for_function(
                """() => {
                    const t = [...document.querySelectorAll('section.tile')];
                    return t.length >= 2 && t.every(e => parseFloat(e.dataset.fps) > 0)
                        && t.some(e => parseInt(e.dataset.people || '0') > 0);
                }""",
                timeout=60_000,
            )
            tiles = page.eval_on_selector_all(
                "section.tile",
                "els => els.map(e => ({name: e.dataset.stream, fps: parseFloat(e.dataset.fps),"
                " people: parseInt(e.dataset.people || '0'), stats: e.querySelector('.stats').textContent}))",
            )
            # a camera of a court: its tile moves under the court's name, beside none of the others
            frame = (DATA / "000000000785.jpg").read_bytes()
            court = {"content-type": "image/jpeg", "authorization": f"Bearer {TOKEN}"}
            httpx.post(f"{server}/v1/streams/court-1-cam-a/frames", params={"group": "court-1"}, content=frame,
                       headers=court, timeout=60)  # fmt: skip
            page.wait_for_selector('.group[data-group="court-1"] section.tile[data-stream="court-1-cam-a"]',
                                   timeout=30_000)  # fmt: skip
            grouped = page.eval_on_selector_all(".group section.tile", "els => els.map(e => e.dataset.stream)")
            # the court's camera marked on a volleyball court (made-up points on this clip): its players top-down
            corners = {"end_a_side1": [60, 120], "end_b_side1": [370, 120], "end_b_side2": [420, 235],
                       "end_a_side2": [10, 235]}  # fmt: skip
            marked = {"size": [426, 240], "court_points": {"template": "volleyball", "points": [
                {"name": k, "image": v} for k, v in corners.items()]}}  # fmt: skip
            r = httpx.put(f"{server}/v1/groups/court-1/cameras/court-1-cam-v/calibration", json=marked,
                          headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
            assert r.status_code == 200 and max(r.json()["reprojection_px"]) < 0.5, r.text
            for i, image in enumerate(video_frames("test_video_structuralize.mp4", 12)):
                httpx.post(f"{server}/v1/streams/court-1-cam-v/frames", params={"group": "court-1", "frame_index": i},
                           content=encode_jpeg(image, 90), headers=court, timeout=60)  # fmt: skip
            page.wait_for_selector('section.court[data-group="court-1"][data-court="volleyball"]', timeout=30_000)
            top_down = page.eval_on_selector(
                'section.court[data-group="court-1"]',
                "e => ({players: parseInt(e.dataset.players), n: e.querySelectorAll('li').length})",
            )
            page.wait_for_timeout(1500)  # let a thumbnail land under the skeletons
            page.screenshot(path=str(shot))
            feeder.close()  # the clips end; the streams stay listed
            # an ended stream keeps its tile, marked ended, with its last picture under its last skeletons
            page.wait_for_selector('section.tile.ended[data-stream="hall-cam-b"][data-picture="1"]', timeout=30_000)
            ended = page.eval_on_selector('section.tile[data-stream="hall-cam-b"]',
                                          "e => e.querySelector('.stats').textContent")  # fmt: skip
    finally:
        feeder.close()
    by_name = {t["name"]: t for t in tiles}
    assert set(by_name) >= {name for name, _ in jobs}
    assert all(by_name[name]["fps"] > 0 and "FPS" in by_name[name]["stats"] for name, _ in jobs)
    assert any(by_name[name]["people"] > 0 for name, _ in jobs)
    assert grouped == ["court-1-cam-a"]
    assert top_down["players"] > 0 and top_down["n"] >= top_down["players"], top_down
    assert ended.startswith("ended ") and "people" in ended, ended
    assert shot.stat().st_size > 20_000
    if out := os.environ.get("POSEFLEET_VIEWER_SCREENSHOT"):
        shutil.copyfile(shot, out)
