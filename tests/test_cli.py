"""``posefleet run`` end to end on real files, and its messages on bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import av
import cv2
import pytest

from conftest import DATA


def posefleet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "posefleet.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_run_video_writes_results_and_annotated_video(tmp_path: Path) -> None:
    out, video = tmp_path / "r.jsonl", tmp_path / "a.mp4"
    clip = str(DATA / "test_video_structuralize.mp4")
    args = ["--max-frames", "12", "--out", str(out), "--annotate", str(video), "--preset", "fast", "-q"]
    proc = posefleet("run", clip, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["frame_index"] for r in lines] == list(range(12))
    assert any(r["people"] for r in lines)
    assert set(lines[0]["timings"]) == {"decode_ms", "detect_ms", "track_ms", "pose_ms", "total_ms"}
    with av.open(str(video)) as played:  # an H.264 MP4, as browsers play it, decoded back whole
        assert played.streams.video[0].codec_context.name == "h264"
        frames = [f.to_ndarray(format="bgr24") for f in played.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (240, 426, 3)
    assert "FPS" in proc.stderr
    assert "pose" not in proc.stderr.split("mean ms:")[1].split("\n")[0]  # single-stage: no pose stage to time


def test_run_image_writes_annotated_picture_and_coco(tmp_path: Path) -> None:
    pic, coco = tmp_path / "a.jpg", tmp_path / "coco.json"
    args = ["--annotate", str(pic), "--coco", str(coco), "-q"]
    proc = posefleet("run", str(DATA / "000000000785.jpg"), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    original = cv2.imread(str(DATA / "000000000785.jpg"))
    drawn = cv2.imread(str(pic))
    assert drawn.shape == original.shape and (cv2.absdiff(drawn, original) > 60).any()
    results = json.loads(coco.read_text())
    assert len(results) == 1 and len(results[0]["keypoints"]) == 51 and results[0]["category_id"] == 1


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
def test_missing_and_unreadable_sources_are_one_line_errors(tmp_path: Path) -> None:
    proc = posefleet("run", str(tmp_path / "nope.mp4"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    proc = posefleet("run", str(junk), cwd=tmp_path)
    assert proc.returncode == 2 and "posefleet: error" in proc.stderr and "Traceback" not in proc.stderr
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"not a png")
    proc = posefleet("run", str(bad_png), cwd=tmp_path)
    assert proc.returncode == 2 and "not an image" in proc.stderr


def test_unknown_preset_is_an_error(capsys) -> None:
    from posefleet.cli import main

    assert main(["run", str(DATA / "grace.jpg"), "--preset", "turbo"]) == 2
    assert "unknown preset" in capsys.readouterr().err


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
def test_serve_on_a_taken_port_says_so_before_starting_ray(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = posefleet("serve", "--port", str(port), "--once", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in proc.stderr and "Traceback" not in proc.stderr


def test_submit_to_an_address_with_no_server_says_so(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = posefleet("submit", str(DATA / "demo.mp4"), "--url", f"http://127.0.0.1:{port}", "-q", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot reach" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
def test_run_several_sources_batches_them_into_one_results_file_each(tmp_path: Path) -> None:
    clip, demo = str(DATA / "test_video_structuralize.mp4"), str(DATA / "demo.mp4")
    proc = posefleet("run", clip, demo, clip, "--max-frames", "6", "--out", str(tmp_path / "runs"), "-q",
                     cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert files == ["demo.jsonl", "test_video_structuralize-1.jsonl", "test_video_structuralize-2.jsonl"]
    one, two = ([json.loads(x) for x in (tmp_path / "runs" / f).read_text().splitlines()] for f in files[1:])
    assert [r["people"] for r in one] == [r["people"] for r in two]  # same frames, same people, own ids
    assert len((tmp_path / "runs" / "demo.jsonl").read_text().splitlines()) == 5


@pytest.mark.slow  # seconds of work: in the full run, out of the fast subset (under a minute)
def test_a_bad_configuration_is_one_line_naming_the_field(tmp_path: Path) -> None:
    clip = str(DATA / "demo.mp4")
    proc = posefleet("run", clip, "--detect-every=-1", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "detect_every: Input should be greater than or equal to 1" in proc.stderr and "pydantic" not in proc.stderr
    (tmp_path / "bad.yaml").write_text("pipeline:\n  detector: {input_size: 250}\n")
    proc = posefleet("run", clip, "--config", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "detector: movenet input_size must be a multiple of 32" in proc.stderr


def test_submit_exit_status_says_when_a_promised_frame_was_lost() -> None:
    from posefleet.cli import submit_status
    from posefleet.serve.client import StreamReport

    whole, refused = StreamReport("a", frames=5), StreamReport("b", frames=4, errors={503: 1})
    assert submit_status([whole], max_rate=True) == 0
    assert submit_status([whole, refused], max_rate=True) == 1  # --max-rate promises every frame
    assert submit_status([whole, refused], max_rate=False) == 0  # real time: refusals are counted, not fatal
    assert submit_status([whole, StreamReport("c")], max_rate=False) == 1  # a stream with no result at all


def test_evaluate_without_its_extra_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """pycocotools and motmetrics are not in the default install: without them, one line says what to install."""
    for module, command in (("pycocotools", ["evaluate", str(DATA / "coco_785.json")]),
                            ("motmetrics", ["evaluate-mot", str(tmp_path)])):  # fmt: skip
        hide = (f"import sys; sys.modules[{module!r}] = None; from posefleet.cli import main; "
                f"sys.exit(main({command!r}))")
        proc = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert f"needs {module}" in proc.stderr and 'pip install "posefleet[eval]"' in proc.stderr, proc.stderr
