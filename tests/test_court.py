"""Court-level fusion on the real Pose2Sim demo (four calibrated cameras, two people; tests/data/pose2sim): the
calibration formats, triangulation, association, group ids, court homography and the refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DATA, SHARED_DATA
from posefleet.court.calibration import CalibrationError, CameraCalibration, camera_from_model, load_calibration
from posefleet.court.fusion import GroupFuser
from posefleet.court.homography import HomographyCalibration, fit_homography
from posefleet.court.settings import GroupSettings
from posefleet.court.skeleton import BONES
from posefleet.court.triangulate import Rig, project_all, triangulate, triangulate_people
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.schema import FrameResult

DEMO = DATA / "pose2sim"
CALIB = DEMO / "Calib.qca.txt"
CAMS = ["cam01", "cam02", "cam03", "cam04"]
DEMO_FRAMES = 40
NOSE, LEFT_ANKLE, RIGHT_ANKLE = 0, 15, 16


@pytest.fixture(scope="module")
def cameras():
    return load_calibration(CALIB)


@pytest.fixture(scope="module")
def demo_results(cfg, engine) -> list[dict[str, FrameResult]]:
    """The real default pipeline on the first frames of the four cameras, round by round."""
    pipeline = Pipeline(cfg, engine)
    caps = {c: cv2.VideoCapture(str(DEMO / f"{c}.mp4")) for c in CAMS}
    rounds = []
    for i in range(DEMO_FRAMES):
        items = []
        for cam, cap in caps.items():
            ok, image = cap.read()
            assert ok, (cam, i)
            items.append((cam, image, i, i / 60.0))
        rounds.append({r.stream_id: r for r in pipeline.process_many(items)})
    for cap in caps.values():
        cap.release()
    return rounds


def _shuffled(result: FrameResult) -> FrameResult:
    """A copy with its people in another order in two of the cameras: the fusion must not pair people by order."""
    copy = result.model_copy(deep=True)
    if copy.stream_id in ("cam02", "cam04"):
        copy.people.reverse()
    return copy


def _fused(cameras, rounds, fuser=None, start=0):
    fuser = fuser or GroupFuser("room", GroupSettings(), cameras)
    return fuser, [fuser.fuse({s: _shuffled(r) for s, r in results.items()}, i / 60.0)
                   for i, results in enumerate(rounds, start)]  # fmt: skip


def _skeleton() -> np.ndarray:
    """A standing person's 17 COCO keypoints (metres) in the demo room, z up."""
    return np.array([
        [0, 0, 1.65], [0.03, 0.03, 1.68], [-0.03, 0.03, 1.68], [0.08, 0.0, 1.66], [-0.08, 0.0, 1.66],
        [0.2, 0, 1.45], [-0.2, 0, 1.45], [0.25, 0, 1.15], [-0.25, 0, 1.15], [0.27, 0, 0.9], [-0.27, 0, 0.9],
        [0.1, 0, 0.95], [-0.1, 0, 0.95], [0.1, 0, 0.5], [-0.1, 0, 0.5], [0.1, 0, 0.08], [-0.1, 0, 0.08],
    ]) + np.array([-0.5, 0.2, 0.0])  # fmt: skip


def test_qualisys_file_reads_as_the_demo_rig(cameras):
    assert sorted(cameras) == CAMS
    cam1 = cameras["cam01"]
    assert cam1.size == (1088, 1920)
    assert cam1.K[0, 0] == pytest.approx(107599.671875 / 64)  # sub-pixels to pixels
    assert cam1.center == pytest.approx([1.4602, -1.9092, 1.8965], abs=1e-3)  # the file's position, mm to m
    for cam in cameras.values():  # every camera looks at the room's middle, above the floor
        ((u, v),) = cam.project(np.array([[0.0, 0.0, 1.0]]))
        assert 0 < u < cam.size[0] and 0 < v < cam.size[1], cam.name
        assert cam.center[2] > 1.0  # mounted above the floor (z up)


def test_every_format_reads_the_same_cameras(cameras, tmp_path):
    """Pose2Sim TOML, OpenCV FileStorage in EasyMocap's two files, and one camera's OpenCV JSON all give the
    cameras the Qualisys file does: the same pixels for the same world points."""
    from posefleet.court.calibration import write_toml

    write_toml(cameras, tmp_path / "calib.toml")
    intri = cv2.FileStorage(str(tmp_path / "intri.yml"), cv2.FILE_STORAGE_WRITE)
    extri = cv2.FileStorage(str(tmp_path / "extri.yml"), cv2.FILE_STORAGE_WRITE)
    for fs in (intri, extri):
        fs.startWriteStruct("names", cv2.FileNode_SEQ)
        for name in cameras:
            fs.write("", name)
        fs.endWriteStruct()
    for name, cam in cameras.items():
        intri.write(f"K_{name}", cam.K)
        intri.write(f"dist_{name}", cam.dist.reshape(1, -1))
        intri.write(f"W_{name}", cam.size[0])
        intri.write(f"H_{name}", cam.size[1])
        extri.write(f"R_{name}", cam.rvec.reshape(3, 1))
        extri.write(f"T_{name}", cam.t.reshape(3, 1))
    intri.release()
    extri.release()
    one = cv2.FileStorage(str(tmp_path / "cam03.json"), cv2.FILE_STORAGE_WRITE)
    c3 = cameras["cam03"]
    for key, value in (("camera_matrix", c3.K), ("distortion_coefficients", c3.dist.reshape(1, -1)),
                       ("R", c3.R), ("T", c3.t.reshape(3, 1))):  # fmt: skip
        one.write(key, value)
    one.write("image_width", c3.size[0])
    one.write("image_height", c3.size[1])
    one.release()

    world = np.random.default_rng(0).uniform([-1.5, -1.5, 0], [1.5, 1.5, 2], (50, 3))
    for loaded in (load_calibration(tmp_path / "calib.toml"),
                   load_calibration(tmp_path / "intri.yml", tmp_path / "extri.yml"),
                   load_calibration(tmp_path / "cam03.json")):  # fmt: skip
        assert loaded
        for name, cam in loaded.items():
            assert cam.size == cameras[name].size
            np.testing.assert_allclose(cam.project(world), cameras[name].project(world), atol=1e-6)


def test_triangulation_recovers_a_known_skeleton_and_drops_a_wrong_view(cameras):
    cams = [cameras[c] for c in CAMS]
    X = _skeleton()
    kp = np.stack([np.c_[c.project(X), np.full(17, 0.9)] for c in cams])
    tri = triangulate(cams, kp)
    np.testing.assert_allclose(tri.points, X, atol=1e-6)
    assert np.nanmax(tri.reprojection_px) < 1e-5
    assert (tri.n_views == 4).all()
    # one camera's keypoints 60 px off (another person's, say): that view is dropped, the point stays put
    kp[1, :, 0] += 60
    tri = triangulate(cams, kp)
    assert (tri.n_views == 3).all() and not tri.views[:, 1].any()
    np.testing.assert_allclose(tri.points, X, atol=1e-6)


@pytest.mark.parametrize("n", [4, 5, 8, 12, 14])
def test_the_compiled_projection_is_opencvs_in_every_distortion_model(cameras, n):
    """The triangulation projects through its own compiled copy of OpenCV's camera model (radial k1-k6,
    tangential, thin prism, tilted sensor): each model's coefficients give the pixels cv2.projectPoints gives."""
    rng = np.random.default_rng(n)
    coefficients = [-0.2, 0.05, 0.001, -0.002, 0.01, 0.02, -0.01, 0.005, 0.001, -0.002, 0.002, 0.001, 0.02, -0.03]
    cams = [replace(cameras[c], dist=np.array(coefficients[:n]) * rng.uniform(0.5, 1.5, n)) for c in CAMS]
    X = _skeleton() + rng.normal(0, 0.3, (17, 3))
    px, depth = project_all(cams, X)
    for v, cam in enumerate(cams):
        np.testing.assert_allclose(px[v], cam.project(X), atol=1e-6)
        assert (depth[v] > 0).all()


@pytest.mark.parametrize("n", [4, 5, 8, 12, 14])
def test_the_compiled_undistortion_is_opencvs_in_every_distortion_model(cameras, n):
    """The fuser undistorts every camera's keypoints in one compiled call: each model's coefficients give the
    normalised points cv2.undistortPoints gives, over the whole picture (corners, where distortion is largest)."""
    rng = np.random.default_rng(n)
    coefficients = [-0.2, 0.05, 0.001, -0.002, 0.01, 0.02, -0.01, 0.005, 0.001, -0.002, 0.002, 0.001, 0.02, -0.03]
    cams = [replace(cameras[c], dist=np.array(coefficients[:n]) * rng.uniform(0.5, 1.5, n)) for c in CAMS]
    pixels = np.stack([rng.uniform(0, 1, (50, 2)) * c.size for c in cams])  # [V, 50, 2]
    got = Rig.of(cams).normalise(np.array([2, -1, 0, 3, 1]), pixels[[2, 0, 0, 3, 1]])
    assert np.isnan(got[1]).all()  # a row no calibrated camera saw
    for row, v in [(0, 2), (2, 0), (3, 3), (4, 1)]:
        want = cv2.undistortPoints(pixels[v].reshape(-1, 1, 2), cams[v].K, cams[v].dist).reshape(-1, 2)
        np.testing.assert_allclose(got[row], want, atol=1e-12)


def test_a_view_of_another_person_leaves_the_person_it_was_joined_to(cameras):
    """Whole people: a camera whose view was another person (1 m away) is dropped from the person, which is solved
    from the other three as if it had never been there."""
    cams = [cameras[c] for c in CAMS]
    X = _skeleton()
    other = X + np.array([1.0, 0.0, 0.0])
    seen = [other if v == 2 else X for v in range(4)]
    pixels = np.stack([c.project(p) for c, p in zip(cams, seen, strict=True)], axis=1)[None]  # [1, J, V, 2]
    norm = Rig.of(cams).normalise(np.arange(4), pixels[0].transpose(1, 0, 2)).transpose(1, 0, 2)
    tri, dropped = triangulate_people(Rig.of(cams), pixels, np.full((1, 17, 4), 0.9), norm[None], 0.3, 15.0, 60.0)
    assert dropped.tolist() == [[False, False, True, False]]
    assert not tri.views[0, :, 2].any() and (tri.views[0].sum(axis=1) == 3).all()
    np.testing.assert_allclose(tri.points[0], X, atol=1e-6)


def test_the_demos_two_people_stay_apart_with_one_group_id_each(cameras, demo_results):
    _, frames = _fused(cameras, demo_results)
    ids = {p.group_id for f in frames for p in f.people}
    assert len(ids) == 2
    owner: dict[tuple[str, int], int] = {}
    for f in frames:
        assert len(f.people) <= 2
        for p in f.people:
            for stream_track in p.views.items():
                # a camera's track is one person: it never moves to the other group id
                assert owner.setdefault(stream_track, p.group_id) == p.group_id
    both = [f for f in frames if len(f.people) == 2]
    assert len(both) >= 0.9 * len(frames)
    errors = []
    for f in both:
        a, b = (np.array(p.keypoints3d) for p in f.people)
        assert np.linalg.norm(a[:, :2].mean(axis=0) - b[:, :2].mean(axis=0)) > 0.5  # two bodies, not one
        for p in f.people:
            k = np.array(p.keypoints3d)
            seen = k[:, 3] > 0
            assert seen.sum() >= 12
            if seen[[LEFT_ANKLE, RIGHT_ANKLE]].all():
                assert k[[LEFT_ANKLE, RIGHT_ANKLE], 2].max() < 0.35  # feet on the floor
            if seen[NOSE]:
                assert k[NOSE, 2] > 1.2  # standing
            errors += [e for e in p.reprojection_px if e is not None]
    assert np.median(errors) < 12.0


def test_each_persons_court_xy_is_set_from_its_camera(cameras, demo_results):
    """One camera places a person on the floor through the ray under its ankles: near where the triangulated
    feet of all four cameras put it (a single view's 2D error at a shallow angle costs tens of cm)."""
    fuser, frames = _fused(cameras, demo_results[:10])
    gaps = []
    for results, frame in zip(demo_results, frames, strict=False):
        for person in frame.people:
            assert person.court_xy is not None
            for stream, track in person.views.items():
                placed = fuser.place(results[stream].model_copy(deep=True))
                one = next(p for p in placed.people if p.track_id == track)
                gaps.append(np.linalg.norm(np.subtract(one.court_xy, person.court_xy)))
    assert len(gaps) > 40
    assert np.median(gaps) < 0.25 and max(gaps) < 0.8


def test_a_restarted_fuser_keeps_its_group_ids(cameras, demo_results):
    def fuser_with_history() -> GroupFuser:
        """A fuser that saw someone long ago: the demo's people get ids 2 and 3, not a fresh fuser's 1 and 2."""
        fuser = GroupFuser("room", GroupSettings(), cameras)
        fuser.fuse({s: r.model_copy(deep=True) for s, r in demo_results[0].items()}, -100.0)
        fuser.fuse({s: r.model_copy(update={"people": []}) for s, r in demo_results[0].items()}, -99.0)
        return fuser

    _, whole = _fused(cameras, demo_results, fuser_with_history())
    first, _ = _fused(cameras, demo_results[:20], fuser_with_history())
    state = json.loads(json.dumps(first.tracker.state()))  # what a checkpoint keeps
    again = GroupFuser("room", GroupSettings(), cameras)
    again.tracker.restore(state)
    _, rest = _fused(cameras, demo_results[20:], again, start=20)
    assert {p.group_id for f in rest for p in f.people} == {3, 4}
    for a, b in zip(whole[20:], rest, strict=True):
        assert {p.group_id: p.views for p in a.people} == {p.group_id: p.views for p in b.people}


def test_the_group_ids_survive_a_camera_taken_out_of_the_group(cameras, demo_results):
    """A camera's calibration deleted over the API rebuilds the fuser without it; the players' state moves over by
    stream name (what the fuser actor does), so the people keep their ids from the three cameras left."""
    first, before = _fused(cameras, demo_results[:20])
    three = {c: cameras[c] for c in CAMS[:3]}
    again = GroupFuser("room", GroupSettings(), three)
    again.tracker.restore(first.tracker.state())
    held = [first.tracker.views_of(v) for v in first.tracker.views]
    assert [again.tracker.views_of(v) for v in again.tracker.views] == [
        {s: t for s, t in v.items() if s != "cam04"} for v in held
    ]  # each camera's track kept under its own stream's name
    rounds = [{s: r for s, r in results.items() if s != "cam04"} for results in demo_results[20:]]
    _, after = _fused(three, rounds, again, start=20)
    ids = {p.group_id for f in before for p in f.people}
    assert len(ids) == 2 and {p.group_id for f in after for p in f.people} == ids
    assert all(set(p.views) <= set(CAMS[:3]) for f in after for p in f.people)


def _model(**change) -> CameraCalibration:
    base = {"size": (1920, 1080), "matrix": [[1000, 0, 960], [0, 1000, 540], [0, 0, 1]],
            "distortions": [0, 0, 0, 0], "rotation": [0, 0, 0], "translation": (0, 0, 5)}  # fmt: skip
    return CameraCalibration(**{**base, **change})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"matrix": [[0, 0, 960], [0, 1000, 540], [0, 0, 1]]}, "singular"),
        ({"matrix": [[1000, 0, 960], [0, 1000, 540]]}, "3x3"),
        ({"rotation": [[1, 0, 0], [0, 2, 0], [0, 0, 1]]}, "not a rotation"),
        ({"rotation": [[1, 0, 0], [0, 1, 0], [0, 0, -1]]}, "not a rotation"),  # a mirror
        ({"distortions": [0.1, 0.0, 0.0]}, "distortions"),
        ({"matrix": [[1000, 0, 9600], [0, 1000, 540], [0, 0, 1]]}, "principal point"),
        ({"translation": (0, float("nan"), 5)}, "finite"),
    ],
)
def test_a_bad_camera_is_refused_with_the_reason(change, reason):
    with pytest.raises(CalibrationError, match=reason):
        camera_from_model("c", _model(**change))


def test_a_degenerate_rig_and_mismatched_frames_are_refused(cameras, demo_results):
    twin = {"a": camera_from_model("a", _model()), "b": camera_from_model("b", _model())}
    with pytest.raises(CalibrationError, match="same place"):
        GroupFuser("g", GroupSettings(), twin)
    fuser = GroupFuser("room", GroupSettings(), cameras)
    small = demo_results[0]["cam01"].model_copy(update={"width": 540, "height": 960})
    with pytest.raises(CalibrationError, match="calibrated for 1088x1920 images, frames are 540x960"):
        fuser.place(small)


def _court_points() -> dict:
    return json.loads((DATA / "volleyball_court_points.json").read_text())


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        ([{"name": "end_a_side1", "image": [300, 560]}, {"name": "attack_a_side1", "image": [800, 562]},
          {"name": "attack_b_side1", "image": [1300, 564]}, {"name": "end_b_side1", "image": [1800, 566]}], "one line"),
        ([{"name": "end_a_side1", "image": [309, 560]}, {"name": "end_a_side2", "image": [80, 879]},
          {"name": "attack_a_side1", "image": [811, 562]}, {"name": "corner_x", "image": [745, 877]}], "no point"),
        ([{"name": "end_a_side1", "image": [309, 560]}, {"name": "end_a_side2", "image": [80, 879]},
          {"name": "attack_a_side1", "image": [811, 562]}, {"name": "attack_a_side2", "image": [2745, 877]}],
         "off the"),
        # two points swapped: no plane fits them all
        ([{"name": "end_a_side1", "image": [309, 560]}, {"name": "end_a_side2", "image": [80, 879]},
          {"name": "attack_a_side1", "image": [811, 562]}, {"name": "attack_a_side2", "image": [745, 877]},
          {"name": "attack_b_side1", "image": [1380, 881]}, {"name": "attack_b_side2", "image": [1296, 564]}],
         "do not fit one plane|horizon"),
    ],
)  # fmt: skip
def test_bad_court_points_are_refused_with_the_reason(points, reason):
    with pytest.raises(CalibrationError, match=reason):
        fit_homography(HomographyCalibration(template="volleyball", points=points), (1920, 1080))


def test_hand_marked_court_points_fit_the_broadcast_frame():
    d = _court_points()
    hom = fit_homography(HomographyCalibration(template=d["template"], points=d["points"]), tuple(d["size"]))
    assert hom.errors_px.max() < 12 and hom.errors_m.max() < 0.15
    # the centre line, never marked (hidden by the net posts), falls under the net in the frame
    (x0, y0), (x1, y1) = d["net_image_line"]
    np.testing.assert_allclose(hom.to_image([[9.0, 0.0], [9.0, 9.0]]), [[x0, y0], [x1, y1]], atol=10)


VOLLEYBALL = SHARED_DATA / "volleyball" / "deepactrec_vb_39_29885" / "annotations.txt"


@pytest.mark.skipif(not VOLLEYBALL.is_file(), reason="the Volleyball sample is in shared/data only (non-commercial)")
def test_annotated_players_stand_inside_the_court_on_their_side_of_the_net():
    d = _court_points()
    hom = fit_homography(HomographyCalibration(template=d["template"], points=d["points"]), tuple(d["size"]))
    line = next(row for row in VOLLEYBALL.read_text().splitlines() if row.startswith(d["frame"]))
    values = line.split()[2:]
    boxes = np.array([list(map(float, values[i : i + 4])) for i in range(0, len(values), 5)])
    feet = np.c_[boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3]]
    court = hom.to_court(feet)
    assert len(court) == 12
    assert hom.template.inside(court, margin=1.0).all()
    (x0, y0), (x1, y1) = d["net_image_line"]
    net_x = x0 + (feet[:, 1] - y0) * (x1 - x0) / (y1 - y0)  # the net's line in the image at each foot's row
    assert ((court[:, 0] < 9.0) == (feet[:, 0] < net_x)).all()


def test_posefleet_run_writes_the_group_jsonl(tmp_path):
    from posefleet.cli import main

    videos = [str(DEMO / f"{c}.mp4") for c in CAMS]
    rc = main(["run", *videos, "--group", "room", "--calibration", str(CALIB), "--out", str(tmp_path),
               "--max-frames", "30", "-q"])  # fmt: skip
    assert rc == 0
    lines = [json.loads(x) for x in (tmp_path / "room.group.jsonl").read_text().splitlines()]
    assert len(lines) == 30
    assert {p["group_id"] for f in lines for p in f["people"]} == {1, 2}
    person = lines[-1]["people"][0]
    assert set(person) >= {"group_id", "views", "court_xy", "keypoints3d", "reprojection_px", "n_views"}
    assert len(person["keypoints3d"]) == 17 and len(person["keypoints3d"][0]) == 4
    cam = [json.loads(x) for x in (tmp_path / "cam01.jsonl").read_text().splitlines()]
    assert cam[0]["people"][0]["court_xy"] is not None


def test_posefleet_run_names_a_calibration_that_fits_no_stream(tmp_path, capsys):
    from posefleet.cli import main

    videos = [str(DEMO / f"{c}.mp4") for c in CAMS[:2]]
    rc = main(["run", *videos, "--stream", "a", "--stream", "b", "--group", "room", "--calibration", str(CALIB),
               "--out", str(tmp_path), "-q"])  # fmt: skip
    assert rc != 0
    assert "calibration names cam01, cam02, cam03, cam04; the streams are a, b" in capsys.readouterr().err


def test_court_template_points_are_data():
    from posefleet.court.homography import court_template

    court = court_template("volleyball")
    assert (court.length, court.width, court.net_x) == (18.0, 9.0, 9.0)
    with pytest.raises(CalibrationError, match="unknown court template 'tennis'"):
        court_template("tennis")
    assert Path(court.model_dump()["name"]) == Path("volleyball")


@pytest.mark.slow  # ~15 s of 2D on four cameras
def test_court_bench_quick_writes_its_table(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "bench.court", "--quick", "--out", str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "court.json").read_text())
    multi = res["demos"]["MultiPerson"]
    assert multi["fusion"]["group_ids"] == 2 and multi["fusion"]["reproj_median_px"] < 12
    assert set(multi["sync"]) == set(CAMS) and multi["sync"]["cam01"]["lag_frames"] == 0
    assert res["replay_12"]["people_per_frame"] >= 11.5 and res["replay_12"]["group_ids"] == 12
    assert "| MultiPerson | 30 | 2 |" in (tmp_path / "court.md").read_text()


def test_a_group_placed_by_court_points_alone_fuses_with_no_calibrated_camera():
    """A court camera with only court points (no full calibration) makes an empty rig: the fuser still builds,
    places people on the court and fuses them (the served API made such a fuser on its first PUT)."""
    d = _court_points()
    points = HomographyCalibration(template=d["template"], points=d["points"])
    fuser = GroupFuser("court", GroupSettings(court_points={"broadcast": points}))
    (x0, y0), (x1, y1) = d["net_image_line"]
    foot = [(x0 + x1) / 2 - 200, (y0 + y1) / 2]  # a player on side A, left of the net
    kp = [(foot[0], foot[1] - 150, 0.9)] * 15 + [(foot[0] - 5, foot[1], 0.9), (foot[0] + 5, foot[1], 0.9)]
    person = {"track_id": 3, "box": (foot[0] - 40, foot[1] - 180, foot[0] + 40, foot[1]), "score": 0.9,
              "keypoints": kp}  # fmt: skip
    result = FrameResult(stream_id="broadcast", frame_index=0, width=1920, height=1080, people=[person])
    frame = fuser.fuse({"broadcast": result}, timestamp=0.0)
    assert len(frame.people) == 1 and frame.people[0].court_xy is not None
    x, y = frame.people[0].court_xy
    assert 0 < x < 9 and 0 <= y <= 9, frame.people[0].court_xy


def test_each_players_limbs_keep_their_length_in_3d(cameras, demo_results):
    """Bones held (fusion.bones): each limb's length over the demo varies less than as triangulated, under 10%."""

    def worst_cv(bones: bool) -> float:
        settings = GroupSettings.model_validate({"fusion": {"bones": {"enabled": bones}}})
        _, frames = _fused(cameras, demo_results, GroupFuser("room", settings, cameras))
        cvs = []
        for gid in {p.group_id for f in frames for p in f.people}:
            k = np.array([p.keypoints3d for f in frames for p in f.people if p.group_id == gid and p.keypoints3d])
            for a, b in BONES:
                seen = (k[:, a, 3] > 0) & (k[:, b, 3] > 0)
                lengths = np.linalg.norm(k[seen, a, :3] - k[seen, b, :3], axis=1)
                cvs.append(lengths.std() / lengths.mean())
        return max(cvs)

    raw, held = worst_cv(False), worst_cv(True)
    assert held < 0.10 and held < 0.6 * raw, (raw, held)
