"""Preprocessing steps and their exact inverses, on phantoms with known geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from delineo.config import IntensityConfig, PreprocessConfig
from delineo.errors import InputError
from delineo.io.image import Image
from delineo.preprocess.pipeline import nonzero_bbox, normalise_channel, preprocess, preprocessed_affine, restore

OBLIQUE = np.array([[0.0, 0.0, -2.0, 10.0], [1.5, 0.0, 0.0, -5.0], [0.0, -1.0, 0.0, 3.0], [0, 0, 0, 1]])


def phantom():
    rng = np.random.default_rng(0)
    a = np.zeros((20, 30, 25), np.float32)
    a[3:15, 5:25, 4:20] = rng.random((12, 20, 16)) + 1
    return a, (a > 1.5).astype(np.uint8)


def test_reorient_and_crop_are_exactly_inverted():
    a, lab = phantom()
    x, y, rec = preprocess([Image(a, OBLIQUE)], Image(lab, OBLIQUE), PreprocessConfig())
    assert nib.aff2axcodes(preprocessed_affine(rec)) == ("R", "A", "S")
    assert x.shape[1:] == y.shape == (16, 12, 20)  # cropped to the non-zero box, reoriented
    np.testing.assert_array_equal(restore(y, rec, is_label=True), lab)
    # every preprocessed voxel sits at the same world position as its source voxel
    pa = preprocessed_affine(rec)
    for idx in np.argwhere(y > 0)[:50]:
        src = np.linalg.inv(OBLIQUE) @ pa @ np.r_[idx, 1]
        assert lab[tuple(np.round(src[:3]).astype(int))] == 1


def test_resampling_round_trip_of_probabilities():
    a, lab = phantom()
    x, y, rec = preprocess([Image(a, OBLIQUE)], Image(lab, OBLIQUE), PreprocessConfig(spacing=(1.0, 1.0, 1.0)))
    assert rec.spacing == pytest.approx((1.0, 1.0, 1.0), abs=0.05)
    probs = np.stack([1 - y, y]).astype(np.float32)
    back = restore(probs, rec)
    assert back.shape == (2, 20, 30, 25)
    agreement = (back.argmax(0) == lab).mean()
    assert agreement > 0.97


def test_label_grid_mismatch_is_reported():
    a, lab = phantom()
    shifted = OBLIQUE.copy()
    shifted[0, 3] += 5
    with pytest.raises(InputError, match="label affine does not match"):
        preprocess([Image(a, OBLIQUE)], Image(lab, shifted, meta={"path": "lab.nii.gz"}), PreprocessConfig())
    with pytest.raises(InputError, match="label shape does not match"):
        preprocess([Image(a, OBLIQUE)], Image(lab[:-1], OBLIQUE), PreprocessConfig())


def test_intensity_presets_known_values():
    x = np.array([-2000.0, -250.0, 0.0, 250.0, 3000.0], np.float32)
    ct = normalise_channel(x, IntensityConfig(preset="ct", window=(-250, 250)))
    np.testing.assert_allclose(ct, [-1, -1, 0, 1, 1])
    pet = normalise_channel(np.array([0.0, 5.0, 40.0]), IntensityConfig(preset="pet", window=(0, 10)))
    np.testing.assert_allclose(pet, [0, 0.5, 1])
    mr = normalise_channel(np.array([1.0, 2.0, 3.0, 4.0]), IntensityConfig(preset="mr"))
    assert abs(mr.mean()) < 1e-6 and abs(mr.std() - 1) < 1e-6
    fg = normalise_channel(np.array([0.0, 0.0, 2.0, 4.0]), IntensityConfig(preset="mr", foreground_only=True))
    np.testing.assert_allclose(fg, [0, 0, -1, 1], atol=1e-6)


def test_nonzero_bbox():
    m = np.zeros((5, 6, 7), bool)
    m[1:3, 2, 4:6] = True
    assert nonzero_bbox(m) == ((1, 3), (2, 3), (4, 6))
