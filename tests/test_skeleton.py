"""A player's bone lengths held in 3D (posefleet/court/skeleton.py), in plain numpy."""

from __future__ import annotations

import numpy as np

from posefleet.court.skeleton import BONES, BoneLengths, bone_lengths, hold_lengths


def _pose(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(1, 17, 3))


def test_each_child_lands_at_its_length_along_the_direction_it_was_seen_in():
    rng = np.random.default_rng(0)
    points = _pose(rng)
    target = np.full((1, len(BONES)), 0.3)
    held = hold_lengths(points, target)
    np.testing.assert_allclose(bone_lengths(held), target, atol=1e-9)
    for parent, child in BONES:  # each bone points where its parent -> the seen child pointed
        seen, now = points[0, child] - held[0, parent], held[0, child] - held[0, parent]
        np.testing.assert_allclose(now / np.linalg.norm(now), seen / np.linalg.norm(seen), atol=1e-9)
    untouched = [j for j in range(17) if j not in {c for _, c in BONES}]
    np.testing.assert_array_equal(held[0, untouched], points[0, untouched])


def test_a_bone_within_the_tolerance_is_left_alone_and_one_beyond_it_is_brought_to_its_edge():
    points = np.zeros((2, 17, 3))
    points[:, 7] = [[0.31, 0, 0], [0.5, 0, 0]]  # left elbow 0.31 and 0.5 from the left shoulder (0, 0, 0)
    target = np.full((2, len(BONES)), np.nan)
    target[:, 0] = 0.3  # upper arm L held at 0.3 +- 5%; the other bones unknown
    held = hold_lengths(points, target, tolerance=0.05)
    np.testing.assert_allclose(held[:, 7, 0], [0.31, 0.315])
    np.testing.assert_array_equal(np.delete(held, 7, axis=1), np.delete(points, 7, axis=1))


def test_lengths_are_held_once_enough_are_measured_from_their_median_over_a_window():
    bones = BoneLengths(window=4, min_samples=3)
    assert np.isnan(bones.estimate([1, None])).all()
    for length in (0.30, 0.50, 0.32):  # an outlier among them: the median ignores it
        bones.add([1], np.full((1, len(BONES)), length))
        got = bones.estimate([1])
    np.testing.assert_allclose(got, 0.32)
    for length in (0.40, 0.41, 0.42):  # the window moves on: the old samples go
        bones.add([1], np.full((1, len(BONES)), length))
    np.testing.assert_allclose(bones.estimate([1]), 0.405)  # 0.32, 0.40, 0.41, 0.42
    bones.keep({2})
    assert np.isnan(bones.estimate([1])).all()
