"""Known-answer tests of the per-case metrics (overlap, surface distances, volumes, conventions)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from delineo.evaluate.metrics import METRICS, score_binary, score_case, surface_distances


def _cube(shape, lo, hi):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def _ellipsoid(shape, centre, radius_mm, spacing):
    """A physical sphere of ``radius_mm`` on an anisotropic voxel grid."""
    idx = np.indices(shape, dtype=float)
    r2 = sum(((idx[i] - centre[i]) * spacing[i]) ** 2 for i in range(len(shape)))
    return r2 <= radius_mm**2


def _brute_force_distances(a, b, spacing):
    """Reference implementation: all-pairs distances between surface voxels (no EDT, no cropping)."""
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    surf_a = a & ~ndimage.binary_erosion(a, structure, border_value=0)
    surf_b = b & ~ndimage.binary_erosion(b, structure, border_value=0)
    pa = np.argwhere(surf_a) * np.asarray(spacing)
    pb = np.argwhere(surf_b) * np.asarray(spacing)
    d = cdist(pa, pb)
    return np.concatenate([d.min(axis=1), d.min(axis=0)])


def test_two_cubes_overlap_by_hand():
    ref = _cube((10, 10, 10), (2, 2, 2), (6, 6, 6))  # 4^3 = 64 voxels
    pred = _cube((10, 10, 10), (3, 3, 3), (7, 7, 7))  # 64 voxels, overlap 3^3 = 27
    m = score_binary(pred, ref, (1, 1, 1))
    assert (m["tp"], m["fp"], m["fn"]) == (27, 37, 37)
    assert m["dice"] == pytest.approx(2 * 27 / 128)
    assert m["iou"] == pytest.approx(27 / 101)
    assert m["precision"] == pytest.approx(27 / 64)
    assert m["recall"] == pytest.approx(27 / 64)
    assert m["rvd"] == 0.0
    assert set(m) == set(METRICS)


def test_identical_masks_are_perfect():
    ref = _ellipsoid((20, 20, 12), (10, 10, 6), 5.0, (1.0, 1.0, 2.0))
    m = score_binary(ref, ref, (1.0, 1.0, 2.0))
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == 1.0
    assert m["hd95"] == 0.0 and m["assd"] == 0.0


@pytest.mark.parametrize("axis", [0, 2])
def test_shifted_sphere_hd95_matches_analytic(axis):
    spacing = (0.8, 1.0, 2.5)
    shape, centre, radius, shift = (40, 36, 16), (19.5, 17.5, 7.5), 10.0, 2
    ref = _ellipsoid(shape, centre, radius, spacing)
    pred = np.roll(ref, shift, axis=axis)
    m = score_binary(pred, ref, spacing)
    # Two spheres of radius R with centres d apart: a surface point at polar angle t (cos t uniform
    # in [-1, 1] by area) lies |sqrt(R^2 - 2Rd cos t + d^2) - R| from the other sphere.
    d = shift * spacing[axis]
    cos_t = np.linspace(-1, 1, 200_001)
    dist = np.abs(np.sqrt(radius**2 - 2 * radius * d * cos_t + d**2) - radius)
    voxel = max(spacing)
    assert abs(m["hd95"] - np.percentile(dist, 95)) < voxel
    assert abs(m["assd"] - dist.mean()) < voxel
    assert m["hd95"] <= d + 1e-9  # the Hausdorff distance itself is d


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_and_assd_match_brute_force(ndim):
    rng = np.random.default_rng(ndim)
    shape = (24, 20) if ndim == 2 else (14, 12, 10)
    spacing = (0.7, 1.3) if ndim == 2 else (0.7, 1.3, 2.1)
    for _ in range(3):
        # Smoothed noise gives blobby, multi-component masks, some touching the array border.
        a = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.1
        b = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.1
        assert a.any() and b.any()
        expected = _brute_force_distances(a, b, spacing)
        got = surface_distances(a, b, spacing)
        np.testing.assert_allclose(np.sort(got), np.sort(expected), rtol=1e-12, atol=1e-12)
        m = score_binary(a, b, spacing)
        assert m["hd95"] == pytest.approx(np.percentile(expected, 95), rel=1e-12, abs=1e-12)
        assert m["assd"] == pytest.approx(expected.mean(), rel=1e-12, abs=1e-12)


def test_bounding_box_crop_is_exact_for_small_objects_in_large_volume():
    spacing = (1.0, 0.5, 3.0)
    small_a = _cube((8, 8, 6), (1, 2, 1), (5, 6, 4))
    small_b = _cube((8, 8, 6), (2, 1, 2), (7, 5, 5))
    big_a = np.zeros((60, 50, 30), bool)
    big_b = np.zeros((60, 50, 30), bool)
    big_a[30:38, 20:28, 10:16] = small_a
    big_b[30:38, 20:28, 10:16] = small_b
    expected = _brute_force_distances(small_a, small_b, spacing)
    m = score_binary(big_a, big_b, spacing)
    assert m["hd95"] == pytest.approx(np.percentile(expected, 95))
    assert m["assd"] == pytest.approx(expected.mean())


def test_both_empty_convention():
    empty = np.zeros((6, 6, 6), bool)
    m = score_binary(empty, empty, (1, 1, 1))
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == 1.0
    assert m["hd95"] == 0.0 and m["assd"] == 0.0
    assert m["volume_pred_ml"] == m["volume_ref_ml"] == 0.0
    assert m["rvd"] is None
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)


def test_empty_prediction_convention():
    ref = _cube((6, 6, 6), (1, 1, 1), (3, 3, 3))
    m = score_binary(np.zeros_like(ref), ref, (1, 1, 1))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["recall"] == 0.0
    assert m["precision"] is None  # 0/0 with a non-empty reference: undefined
    assert m["hd95"] is None and m["assd"] is None
    assert m["rvd"] == -1.0
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 8)


def test_empty_reference_convention():
    pred = _cube((6, 6, 6), (1, 1, 1), (3, 3, 3))
    m = score_binary(pred, np.zeros_like(pred), (1, 1, 1))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["precision"] == 0.0
    assert m["recall"] is None
    assert m["hd95"] is None and m["assd"] is None
    assert m["rvd"] is None
    assert m["volume_ref_ml"] == 0.0 and m["volume_pred_ml"] == pytest.approx(0.008)


def test_volumes_in_ml_and_rvd():
    ref = _cube((20, 20, 20), (0, 0, 0), (10, 10, 10))  # 1000 voxels
    m = score_binary(ref, ref, (1, 1, 1))
    assert m["volume_ref_ml"] == pytest.approx(1.0)
    # 1000 voxels of 2 x 0.5 x 0.5 mm = 500 mm^3 = 0.5 ml; prediction 1500 voxels -> rvd 0.5
    pred = _cube((20, 20, 20), (0, 0, 0), (15, 10, 10))
    m = score_binary(pred, ref, (2.0, 0.5, 0.5))
    assert m["volume_ref_ml"] == pytest.approx(0.5)
    assert m["volume_pred_ml"] == pytest.approx(0.75)
    assert m["rvd"] == pytest.approx(0.5)


def test_2d_squares():
    ref = _cube((12, 12), (2, 2), (6, 6))  # 16 pixels
    pred = _cube((12, 12), (2, 4), (6, 8))  # shifted 2 pixels along axis 1, overlap 8
    m = score_binary(pred, ref, (1.0, 2.0))
    assert m["dice"] == pytest.approx(0.5)
    assert m["hd95"] == pytest.approx(np.percentile(_brute_force_distances(pred, ref, (1.0, 2.0)), 95))
    assert m["volume_ref_ml"] == pytest.approx(16 * 2.0 / 1000)


def test_score_case_multilabel_skips_background_and_keys_by_name():
    ref = np.zeros((10, 10, 4), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:4, 1:4] = 1
    pred[1:4, 1:4] = 1
    ref[6:9, 6:9] = 2  # organ 2 missed entirely
    scores = score_case(pred, ref, (1, 1, 1), {0: "background", 1: "liver", 2: "tumour", 3: "absent"})
    assert list(scores) == ["liver", "tumour", "absent"]
    assert scores["liver"]["dice"] == 1.0
    assert scores["tumour"]["dice"] == 0.0 and scores["tumour"]["hd95"] is None
    assert scores["absent"]["dice"] == 1.0 and scores["absent"]["hd95"] == 0.0


def test_bad_inputs_raise():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        score_case(a, np.zeros((4, 4, 5)), (1, 1, 1), {1: "x"})
    with pytest.raises(ValueError, match="spacing"):
        score_case(a, a, (1, 1), {1: "x"})
    with pytest.raises(ValueError, match="unique"):
        score_case(a, a, (1, 1, 1), {1: "x", 2: "x"})
