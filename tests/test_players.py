"""Every player on the court: no cap on people a frame, track-guided crops, a region of interest, box recall.

Real models on real photos: a court-like frame is eight real people side by side (the four one-person photos
of tests/data, twice), more than MoveNet MultiPose returns in one call (6).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DATA, read, video_frames
from posefleet.boxes import evaluate_frames, match, read_volleyball
from posefleet.config import GuidedConfig, ScanConfig, StreamSettings, load_pipeline_config
from posefleet.pipeline.detector import Detector
from posefleet.pipeline.engine import Pipeline
from posefleet.pipeline.frames import LocalModels
from posefleet.pipeline.regions import crop_regions, scan_regions, split
from posefleet.pipeline.roi import Roi, check_polygon, ground_points

PHOTOS = ["astronaut.png", "grace.jpg", "camera.png", "000000000785.jpg"]


@pytest.fixture(scope="module")
def court() -> np.ndarray:
    """Two rows of the four photos (the second mirrored), 240 px tall each: eight real people."""
    panels = [read(n) for n in PHOTOS]
    row = np.concatenate([cv2.resize(p, (round(p.shape[1] * 240 / p.shape[0]), 240)) for p in panels], axis=1)
    return np.ascontiguousarray(np.concatenate([row, row[:, ::-1]], axis=0))


def detector(**scan: object) -> Detector:
    return Detector(load_pipeline_config("balanced", overrides={"detector": {"scan": scan}}).detector)


def test_a_full_model_call_is_split_so_a_frame_returns_more_than_six(court: np.ndarray) -> None:
    """One region only (no tiles): MoveNet's call comes back full (6), the region is split and looked at again."""
    capped = detector(adaptive=False, split_full=False)(court)
    assert len(capped) == 6  # the model's own cap, what every frame returned before
    split_dets = detector(adaptive=False)(court)
    assert len(split_dets) > 6
    edges = np.cumsum([0] + [round(read(n).shape[1] * 240 / read(n).shape[0]) for n in PHOTOS])
    centres = (split_dets.boxes[:, :2] + split_dets.boxes[:, 2:]) / 2
    # the photo each box lies in (the second row is mirrored): one person a photo, so different people
    panels = {(int(np.searchsorted(edges, x if y < 240 else court.shape[1] - x)), int(y // 240)) for x, y in centres}
    assert len(panels) == len(split_dets)


def test_the_default_pipeline_returns_more_than_six_people(court: np.ndarray, engine: LocalModels) -> None:
    pipeline = Pipeline(load_pipeline_config("balanced"), engine)
    people = pipeline.process("court", court, 0).people
    assert len(people) > 6
    assert len({p.track_id for p in people}) == len(people)


def test_a_track_guided_frame_keeps_the_ids_of_the_scanned_one(engine: LocalModels) -> None:
    """Frame 0 is scanned; the frames after look only at crops around the tracks (and a tenth of the scan):
    the same players, the same ids."""
    cfg = load_pipeline_config("balanced", overrides={"detect_every": 1, "detector": {"guided": {"warmup_frames": 1}}})
    pipeline = Pipeline(cfg, engine)
    frames = video_frames("test_video_structuralize.mp4", 8)
    scanned = pipeline.process("clip", frames[0], 0)
    assert len(scanned.people) >= 2
    looked: list[int] = []
    for i, frame in enumerate(frames[1:], 1):
        result = pipeline.process("clip", frame, i)
        looked.append(pipeline.streams["clip"].frames_since_scan)
        assert {p.track_id for p in result.people} == {p.track_id for p in scanned.people}
    assert all(n > 0 for n in looked)  # every frame after the first was a crop frame, none a whole scan


def test_crops_hold_at_most_max_people_and_cover_every_track() -> None:
    cfg = GuidedConfig(enabled=True, max_people=2, min_person_px=80, margin=0.3)
    boxes = np.array([[100, 100, 140, 200], [150, 100, 190, 200], [200, 100, 240, 200], [900, 500, 950, 620]], float)
    regions = crop_regions(boxes, 1280, 720, cfg)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for r in regions:
        inside = (centres[:, 0] >= r.x0) & (centres[:, 0] < r.x1) & (centres[:, 1] >= r.y0) & (centres[:, 1] < r.y1)
        assert inside.sum() <= 2
        assert r.long_side() <= cfg.max_input
    covered = [any(r.x0 <= b[0] and b[2] <= r.x1 and r.y0 <= b[1] and b[3] <= r.y1 for r in regions) for b in boxes]
    assert all(covered)
    assert len(regions) < len(boxes)  # neighbours share a crop
    assert max(r.scale for r in regions) == pytest.approx(0.8)  # 100 px people -> 80 px in the input


def _crops_one_pair_at_a_time(boxes: np.ndarray, w: int, h: int, cfg: GuidedConfig) -> list[tuple]:
    """The crop merging as the rule says it, a pair at a time in plain Python: grow each box by its margin; while
    some pair of crops saves input pixels (within max_input and max_people), merge the best pair (ties: the pair
    that became possible first); each crop seen at the scale that makes its smallest person min_person_px."""
    boxes = boxes.astype(np.float32)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2

    def cost(c: tuple) -> tuple[float, float]:
        (x0, y0, x1, y1), small = c
        s = min(cfg.max_upscale, cfg.min_person_px / max(small, 1.0))
        return max(32.0, (x1 - x0) * s) * max(32.0, (y1 - y0) * s) + cfg.call_px, max(x1 - x0, y1 - y0) * s

    def gain(a: tuple, b: tuple) -> tuple[float, tuple] | None:
        (ra, sa), (rb, sb) = a, b
        rect = (min(ra[0], rb[0]), min(ra[1], rb[1]), max(ra[2], rb[2]), max(ra[3], rb[3]))
        merged = (rect, min(sa, sb))
        people = sum(rect[0] <= x < rect[2] and rect[1] <= y < rect[3] for x, y in centres.tolist())
        saved = cost(a)[0] + cost(b)[0] - cost(merged)[0]
        ok = cost(merged)[1] <= cfg.max_input and people <= cfg.max_people and saved > 0
        return (saved, merged) if ok else None

    live: dict[int, tuple] = {}
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        bh = max(float(y1 - y0), 1.0)
        m = cfg.margin * bh
        rect = (max(0, math.floor(x0 - m)), max(0, math.floor(y0 - m)),
                min(w, math.ceil(x1 + m)), min(h, math.ceil(y1 + m)))  # fmt: skip
        if rect[2] - rect[0] >= 2 and rect[3] - rect[1] >= 2:  # a crop with no area in the frame: none
            live[i] = (tuple(float(v) for v in rect), bh)
    pairs = {(i, j): g for i in live for j in live if i < j and (g := gain(live[i], live[j]))}
    nxt = len(boxes)
    while pairs:
        (i, j), (_, merged) = max(pairs.items(), key=lambda item: item[1][0])
        del live[i], live[j]
        pairs = {k: v for k, v in pairs.items() if i not in k and j not in k}
        pairs |= {(k, nxt): g for k in live if (g := gain(live[k], merged))}
        live[nxt], nxt = merged, nxt + 1
    return sorted((tuple(math.floor(v) for v in rect), small) for rect, small in live.values())


@pytest.mark.parametrize("seed", range(4))
def test_crops_merge_as_the_rule_says_ties_included(seed: int) -> None:
    """crop_regions does the greedy merging in arrays: the same crops as the rule done a pair at a time, on rows of
    equal people (every pair ties with its neighbours) and on scattered ones."""
    rng = np.random.default_rng(seed)
    cfg = GuidedConfig(enabled=True, max_people=int(rng.integers(2, 5)), min_person_px=80, margin=0.3)
    for trial in range(40):
        n = int(rng.integers(1, 14))
        if trial % 2:
            k, tall = int(rng.integers(1, 6)), float(rng.choice([60, 100, 140]))
            x, y = 100 + 60 * (np.arange(n) % k), 150 + 170 * (np.arange(n) // k)
            boxes = np.c_[x, y, x + 40, y + tall].astype(float)
        else:
            xy = np.c_[rng.uniform(0, 1700, n), rng.uniform(0, 900, n)]
            boxes = np.c_[xy, xy + rng.uniform(20, 200, (n, 2))]
        got = sorted(((r.x0, r.y0, r.x1, r.y1), r.scale) for r in crop_regions(boxes, 1920, 1080, cfg))
        want = _crops_one_pair_at_a_time(boxes, 1920, 1080, cfg)
        assert [rect for rect, _ in got] == [rect for rect, _ in want]


def test_scan_tiles_grow_finer_for_smaller_people_and_splits_keep_the_scale() -> None:
    cfg = ScanConfig(adaptive=True, min_person_px=64, max_tiles=12)
    coarse = scan_regions(1920, 1080, 320, cfg, smallest=400.0)
    fine = scan_regions(1920, 1080, 320, cfg, smallest=120.0)
    assert len(coarse) < len(fine) <= 13
    assert all(r.scale >= 64 / 120 * 0.999 for r in fine[1:])
    halves = split(fine[1], 0.25)
    assert [h.scale for h in halves] == [fine[1].scale] * 2 and halves[0].split_depth == 1
    assert scan_regions(426, 240, 320, cfg, smallest=150.0) == scan_regions(426, 240, 320, cfg, smallest=150.0)[:1]


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        ([[0, 0], [10, 0]], "at least 3 points"),
        ([[0, 0], [100, 100], [0, 100], [120, 10]], "cross"),
        ([[0, 0], [50, 0], [100, 0]], "no area"),
        ([[0, 0], [float("nan"), 0], [0, 10]], "finite"),
        ([[0, 0], ["a", 0], [0, 10]], "numbers"),
    ],
)
def test_a_bad_polygon_is_refused_with_its_reason(points: list, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_polygon(points)


def test_a_polygon_off_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="off the 640x480 image"):
        check_polygon([[0, 0], [700, 0], [0, 400]], (640, 480))
    check_polygon([[0, 0], [640, 0], [0, 480]], (640, 480))


def test_ground_point_between_the_ankles_else_the_box_bottom() -> None:
    kps = np.zeros((2, 17, 3), np.float32)
    kps[0, 15] = [10, 90, 0.9]
    kps[0, 16] = [30, 94, 0.9]
    pts = ground_points(np.array([[0, 0, 40, 100], [100, 0, 140, 80]], np.float32), kps, 0.3)
    assert pts.tolist() == [[20, 92], [120, 80]]
    roi = Roi([[0, 50], [60, 50], [60, 120], [0, 120]])
    assert roi.contains(pts).tolist() == [True, False]


def test_a_region_of_interest_drops_the_people_outside_it(court: np.ndarray, engine: LocalModels) -> None:
    """The region of interest is the court but its top-right quarter (the stands, say): the people standing
    there go, and are not even tracked; kept by setting, they come back flagged."""
    h, w = court.shape[:2]
    roi = [[0, 0], [w / 2, 0], [w / 2, h / 2], [w, h / 2], [w, h], [0, h]]

    def in_stands(box: tuple | np.ndarray) -> bool:
        return (box[0] + box[2]) / 2 > w / 2 and box[3] < h / 2 + 10  # standing (box bottom) in the top right

    every = Pipeline(load_pipeline_config("balanced"), engine).process("all", court, 0).people
    assert any(in_stands(p.box) for p in every)
    kept = Pipeline(load_pipeline_config("balanced", overrides={"stream": {"roi": roi}}), engine)
    inside = kept.process("court", court, 0).people
    assert inside and not any(in_stands(p.box) for p in inside) and not any(p.outside_roi for p in inside)
    assert not any(in_stands(t.box) for t in kept.streams["court"].tracker.tracked)
    flag_cfg = load_pipeline_config("balanced", overrides={"stream": {"roi": roi, "keep_outside_roi": True}})
    flagged = Pipeline(flag_cfg, engine).process("flag", court, 0).people
    assert any(p.outside_roi for p in flagged) and all(p.outside_roi == in_stands(p.box) for p in flagged)


def test_stream_settings_by_id_apply_to_that_stream_only(court: np.ndarray, engine: LocalModels) -> None:
    h, w = court.shape[:2]
    cfg = load_pipeline_config("balanced", overrides={"streams": {"cam-left": {"roi": [[0, 0], [w / 2, 0], [0, h]]}}})
    pipeline = Pipeline(cfg, engine)
    assert len(pipeline.process("cam-left", court, 0).people) < len(pipeline.process("other", court, 0).people)
    state = pipeline.streams["cam-left"]
    with pytest.raises(ValueError, match="off the"):
        state.configure(StreamSettings(roi=[[0, 0], [w + 100, 0], [0, h]]))
    assert state.roi is not None and state.roi.points[1, 0] == w / 2  # a refused polygon leaves the old one


def test_volleyball_annotations_are_read_and_scored(tmp_path: Path, engine: LocalModels) -> None:
    """The Volleyball dataset's layout (``annotations.txt`` beside ``<frame>/<frame>.jpg``), on a real frame."""
    frame = read("000000000785.jpg")
    (tmp_path / "785").mkdir()
    cv2.imwrite(str(tmp_path / "785" / "785.jpg"), frame)
    # COCO 785's one person (x, y, w, h from its annotation), then a box where nobody is
    (tmp_path / "annotations.txt").write_text("785.jpg r_set 281 45 219 347 standing 10 10 20 30 waiting\n")
    frames = read_volleyball(tmp_path / "annotations.txt")
    assert len(frames) == 1 and frames[0].boxes.tolist()[0] == [281, 45, 500, 392]
    result = evaluate_frames(Pipeline(load_pipeline_config("balanced"), engine), frames, "vb")
    assert result["recall"] == 0.5 and result["precision"] == 1.0 and result["returned_per_frame"] == 1
    with pytest.raises(ValueError, match="x y w h"):
        (tmp_path / "bad.txt").write_text("785.jpg r_set 1 2 3\n")
        read_volleyball(tmp_path / "bad.txt")


def test_matching_is_one_to_one() -> None:
    truth = np.array([[0, 0, 10, 20], [1, 0, 11, 20]], np.float32)
    hit, used = match(truth, np.array([[0, 0, 10, 20]], np.float32))
    assert hit == 1 and used.tolist() == [True]


def test_shared_volleyball_frame_is_evaluated_when_present() -> None:
    ann = Path(DATA).resolve().parents[2] / "shared" / "data" / "volleyball" / "deepactrec_vb_39_29885"
    if not (ann / "annotations.txt").is_file():
        pytest.skip("no ../shared/data/volleyball (benchmark data, not in the repo)")
    frames = read_volleyball(ann / "annotations.txt")
    assert len(frames) == 1 and len(frames[0].boxes) == 12 and len(frames[0].context) == 5


def test_new_settings_keep_the_tracks_and_their_carried_keypoints(engine: LocalModels) -> None:
    """A region of interest set on a live stream (PUT settings) applies from its next frame and forgets
    nothing: tracks, smoothers and the keypoints carried frames move."""
    pipeline = Pipeline(load_pipeline_config("balanced"), engine)  # detect every 2: keypoints carried
    frames = video_frames("test_video_structuralize.mp4", 2)
    for i, frame in enumerate(frames):
        pipeline.process("clip", frame, i)
    state = pipeline.streams["clip"]
    carried = dict(state.keypoints)
    assert carried and state.tracker.active()
    state.configure(StreamSettings(roi=[[0, 0], [426, 0], [426, 240], [0, 240]]))
    assert state.keypoints.keys() == carried.keys() and state.keypoint_boxes and state.roi is not None


def test_a_person_seen_by_several_regions_keeps_the_sharpest_copy_and_the_best_score() -> None:
    """The whole frame (coarse) and a tile (sharp) both see one person; the coarse copy scores higher. The
    merge keeps the tile's box and keypoints with the better score, and a second person apart from them."""
    from posefleet.pipeline.detector import Detections

    decoder = detector().decoder
    person = np.array([[100, 100, 160, 260]], np.float32)
    kps_coarse, kps_sharp = np.full((1, 17, 3), 0.5, np.float32), np.full((1, 17, 3), 0.6, np.float32)
    kps_coarse[..., :2], kps_sharp[..., :2] = 120.0, 130.0
    boxes, kps = np.concatenate([person + 4, [[400, 100, 460, 260]]]), np.concatenate([kps_coarse, kps_coarse + 300])
    coarse = Detections(boxes, np.array([0.6, 0.3], np.float32), kps, detail=np.full(2, 0.25, np.float32))
    sharp = Detections(person, np.array([0.4], np.float32), kps_sharp, detail=np.full(1, 1.0, np.float32))
    merged = decoder.merge([coarse, sharp], 640, 480)
    assert len(merged) == 2
    assert merged.boxes[0].tolist() == person[0].tolist()
    assert merged.keypoints is not None and merged.keypoints[0, 0, 0] == 130.0
    assert merged.scores.tolist() == pytest.approx([0.6, 0.3])
