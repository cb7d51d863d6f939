"""Camera sources without Ray: the allowlist (nothing off it is fetched), credentials redacted, a camera
read from a real file, a real MJPEG camera (Debian's ffmpeg) and a real RTSP server (GStreamer's),
reconnects, a URL that never works, and the JSONL sink across a crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cameras import mjpeg_camera, rtsp_available, rtsp_camera

from conftest import DATA, wait_until
from posefleet.allowlist import check_source_url, redact
from posefleet.camera import CameraReader
from posefleet.errors import Forbidden, InvalidRequest
from posefleet.serve.launcher import free_port, port_in_use
from posefleet.serving_config import SinkConfig, SourcesConfig
from posefleet.sink import JsonlSink

CLIP = DATA / "test_video_structuralize.mp4"
FAST = {"open_timeout_s": 2.0, "stall_s": 1.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.4}


def test_only_what_the_allowlist_names_is_accepted(tmp_path: Path) -> None:
    cfg = SourcesConfig(allow_hosts=["cam.local", "10.1.0.0/16", "127.0.0.1"], allow_dirs=[str(DATA)],
                        allow_schemes=["rtsp", "http", "file"])  # fmt: skip
    assert check_source_url("rtsp://10.1.2.3:554/stream", cfg) == "rtsp://10.1.2.3:554/stream"
    assert check_source_url("rtsp://127.0.0.1/cam", cfg)
    assert check_source_url(str(CLIP), cfg) == str(CLIP.resolve())
    assert check_source_url(f"file://{CLIP}", cfg) == str(CLIP.resolve())
    for url in ("rtsp://10.2.0.1/x", "http://169.254.169.254/latest/meta-data", "https://10.1.2.3/x",
                "rtsp://localhost.evil.example/x", f"file://{tmp_path}/x.mp4", "/etc/passwd",
                f"{DATA}/../../../etc/passwd", "gopher://10.1.2.3/"):  # fmt: skip
        with pytest.raises(Forbidden):
            check_source_url(url, cfg)
    with pytest.raises(ValueError, match="no host"):
        check_source_url("rtsp:///nohost", cfg)
    for malformed in ("rtsp://127.0.0.1:99999/cam", "rtsp://[::1/cam", "http://127.0.0.1:port/x"):
        with pytest.raises(InvalidRequest):  # 422, before anything is started
            check_source_url(malformed, cfg)
    with pytest.raises(Forbidden):  # the default allows no host at all
        check_source_url("rtsp://10.1.2.3/x", SourcesConfig())


def test_credentials_never_leave_in_answers() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.7:554/h264") == "rtsp://***@10.0.0.7:554/h264"
    assert redact("rtsp://10.0.0.7/h264") == "rtsp://10.0.0.7/h264"
    with pytest.raises(Forbidden) as refused:
        check_source_url("rtsp://admin:s3cret@10.9.9.9/x", SourcesConfig(allow_hosts=["10.1.0.0/16"]))
    assert "s3cret" not in str(refused.value)


def collect(url: str, seconds: float, **cfg: object) -> tuple[list[tuple[int, tuple]], CameraReader]:
    got: list[tuple[int, tuple]] = []
    reader = CameraReader(url, SourcesConfig(**(FAST | cfg)), lambda image, index, ts: got.append((index, image.shape)))
    reader.start()
    time.sleep(seconds)
    reader.stop()
    return got, reader


def test_a_file_plays_at_its_own_rate_with_increasing_indices() -> None:
    got, reader = collect(str(CLIP), 1.5)
    assert 25 <= len(got) <= 60  # ~30 FPS, not as fast as it decodes
    assert reader.status.skipped <= 5  # paced by the file's rate, not read flat out and thinned by max_fps
    assert [i for i, _ in got] == list(range(len(got)))
    assert got[0][1] == (240, 426, 3) and reader.status.state == "stopped"


def test_max_fps_thins_the_frames() -> None:
    got, reader = collect(str(CLIP), 1.5, max_fps=10.0)
    assert 10 <= len(got) <= 17 and reader.status.skipped > 0


def test_a_url_that_never_works_ends_failed_with_the_reason() -> None:
    port = free_port()  # nothing listens there
    reader = CameraReader(f"rtsp://127.0.0.1:{port}/none", SourcesConfig(**(FAST | {"max_failed_connects": 2})),
                          lambda *a: None)  # fmt: skip
    reader.start()
    deadline = time.monotonic() + 30
    while reader.status.state != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reader.status.state == "failed" and "cannot open" in (reader.status.last_error or "")
    reader.stop()


def camera_server(port: int, kind: str, workdir: Path) -> subprocess.Popen:
    """A real network camera playing the clip at its own rate, listening on ``port`` when this returns:
    ``mjpeg``, Debian's ffmpeg serving MJPEG over HTTP in a loop to one client (``/cam.mjpg``), or ``rtsp``,
    GStreamer's RTSP server (``scripts/rtsp_camera.py``) sending the clip's H.264 unchanged (``/cam``)."""
    return rtsp_camera(port, CLIP, workdir) if kind == "rtsp" else mjpeg_camera(port, CLIP)


def camera_url(port: int, kind: str) -> str:
    return f"rtsp://127.0.0.1:{port}/cam" if kind == "rtsp" else f"http://127.0.0.1:{port}/cam.mjpg"


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg (apt-get install ffmpeg)")
needs_rtsp = pytest.mark.skipif(
    not rtsp_available(), reason="no RTSP server (scripts/install-test-tools.sh: gir1.2-gst-rtsp-server-1.0)"
)
CAMERAS = [pytest.param("mjpeg", marks=needs_ffmpeg), pytest.param("rtsp", marks=needs_rtsp)]


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
@pytest.mark.parametrize("kind", CAMERAS)
def test_a_network_camera_is_read_and_a_restarted_camera_reconnected(kind: str, tmp_path: Path) -> None:
    port = free_port()
    server = camera_server(port, kind, tmp_path)
    got: list[int] = []
    reader = CameraReader(camera_url(port, kind), SourcesConfig(**FAST), lambda im, i, ts: got.append(i))
    try:
        reader.start()
        assert wait_until(lambda: len(got) >= 20, 20) and reader.status.state == "running"
        server.kill()  # the camera goes away...
        server.wait()
        assert wait_until(lambda: reader.status.state != "running", 20)
        assert reader.status.state in ("reconnecting", "connecting")
        before = len(got)
        server = camera_server(port, kind, tmp_path)  # ...and comes back
        assert wait_until(lambda: len(got) >= before + 20, 30) and reader.status.reconnects >= 1
        assert got == sorted(set(got))  # indices went on increasing across the reconnect
    finally:
        reader.stop()
        server.kill()


def test_jsonl_sink_rotates_and_heals_a_torn_line(tmp_path: Path) -> None:
    sink = JsonlSink(SinkConfig(directory=str(tmp_path), rotate_mb=0.001))  # 1 KB files
    for i in range(30):
        sink.write("cam-1", json.dumps({"frame_index": i, "pad": "x" * 80}))
    sink.close()
    files = sorted((tmp_path / "cam-1").glob("*.jsonl"), key=lambda p: (len(p.name), p.name))
    assert len(files) >= 3 and all(f.stat().st_size <= 1000 for f in files)
    last = files[-1]
    with open(last, "ab") as f:  # a crash in the middle of a line
        f.write(b'{"frame_index": 30, "pa')
    sink = JsonlSink(SinkConfig(directory=str(tmp_path), rotate_mb=0.001))
    sink.write("cam-1", json.dumps({"frame_index": 31}))
    sink.close()
    lines = [json.loads(x) for f in sorted((tmp_path / "cam-1").glob("*.jsonl"), key=os.path.getmtime)
             for x in f.read_text().splitlines()]  # fmt: skip
    assert [r["frame_index"] for r in lines] == [*range(30), 31]  # every line whole, none twice


def test_a_groups_cameras_are_aligned_by_capture_time() -> None:
    from posefleet.actors.viewer_hub import StreamUpdate, ViewerHub

    hub = ViewerHub()
    for t in (10.0, 10.1, 10.2, 10.3):  # cam-a runs ahead, cam-b behind; cam-c is in another group
        hub.publish({"cam-a": StreamUpdate(latest={"frame_index": int(t * 10), "timestamp": t + 0.2}, group="court-1"),
                     "cam-b": StreamUpdate(latest={"frame_index": int(t * 10), "timestamp": t}, group="court-1"),
                     "cam-c": StreamUpdate(latest={"frame_index": 1, "timestamp": t}, group="court-2")})  # fmt: skip
    view = hub.group("court-1")
    assert view is not None and view["time"] == pytest.approx(10.3)  # the oldest of the newest
    by = {c["stream_id"]: c for c in view["cameras"]}
    assert sorted(by) == ["cam-a", "cam-b"]
    assert by["cam-b"]["result"]["timestamp"] == pytest.approx(10.3) and by["cam-b"]["skew_ms"] == 0
    assert by["cam-a"]["result"]["timestamp"] == pytest.approx(10.3)  # its frame of that moment, not its newest
    assert hub.group("court-9") is None


def wait_failed(reader: CameraReader, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while reader.status.state != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_server_that_is_no_camera_ends_failed_with_the_reason(tmp_path: Path) -> None:
    """A URL that answers, but not with video: a web page (a .txt would not do: FFmpeg renders text files
    as video)."""
    (tmp_path / "index.html").write_text("<html><body>" + "not a camera " * 200 + "</body></html>")
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_until(lambda: port_in_use("127.0.0.1", port), 20)
        cfg = SourcesConfig(**(FAST | {"max_failed_connects": 2}))
        reader = CameraReader(f"http://127.0.0.1:{port}/index.html", cfg, lambda *a: None)
        reader.start()
        try:
            wait_failed(reader)
            assert reader.status.state == "failed" and reader.status.frames == 0, reader.status
            assert reader.status.last_error
        finally:
            reader.stop()
    finally:
        web.kill()


@needs_rtsp
def test_a_wrong_path_on_a_live_rtsp_server_ends_failed(tmp_path: Path) -> None:
    port = free_port()
    server = camera_server(port, "rtsp", tmp_path)
    try:
        reader = CameraReader(f"rtsp://127.0.0.1:{port}/no-such-camera",
                              SourcesConfig(**(FAST | {"max_failed_connects": 2})), lambda *a: None)  # fmt: skip
        reader.start()
        try:
            wait_failed(reader)
            assert reader.status.state == "failed" and reader.status.frames == 0
        finally:
            reader.stop()
    finally:
        server.kill()
