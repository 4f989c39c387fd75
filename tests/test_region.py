"""Region restriction (stage 2 of a region cascade): crop / restore are exact inverses, the
restricted image shows only the organ, and the box follows margin, square and size."""

from __future__ import annotations

import numpy as np
import pytest

from delineo.errors import InputError
from delineo.preprocess.region import (RegionRecord, crop_box, organ_box, paste_box, region_axes, restrict,
                                       restrict_label, unrestrict)


def _organ(shape=(30, 40, 20)) -> np.ndarray:
    organ = np.zeros(shape, bool)
    organ[10:16, 12:30, 5:9] = True
    return organ


def test_box_margin_square_and_edges():
    organ = _organ()
    assert organ_box(organ, (1, 1, 1)) == ((10, 16), (12, 30), (5, 9))
    # 2 mm margin at 0.5 / 1 / 2 mm spacing = 4 / 2 / 1 voxels
    assert organ_box(organ, (0.5, 1.0, 2.0), 2.0) == ((6, 20), (10, 32), (4, 10))
    # square over the in-plane axes (0, 1) of a 2D model: both sides 18, centred, slice axis untouched
    box = organ_box(organ, (1, 1, 1), 0, square_axes=region_axes("2d", 2))
    assert [b - a for a, b in box[:2]] == [18, 18] and box[2] == (5, 9)
    assert box[0] == (4, 22)
    # clipped at the image edge without square; a square larger than the image is padded (box outside)
    edge = np.zeros((10, 40, 5), bool)
    edge[0:2, 5:35, 2] = True
    assert organ_box(edge, (1, 1, 1), 3)[0] == (0, 5)
    sq = organ_box(edge, (1, 1, 1), 0, square_axes=(0, 1))
    assert sq[0][1] - sq[0][0] == 30 and sq[0][0] < 0 and sq[1] == (5, 35)
    assert organ_box(np.zeros((4, 4, 4), bool), (1, 1, 1)) is None


def test_crop_paste_exact_inverse_with_padding():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(2, 12, 9, 7)).astype(np.float32)
    box = ((-3, 8), (2, 9), (0, 10))  # outside the grid on two sides
    crop = crop_box(full, box, fill=-5)
    assert crop.shape == (2, 11, 7, 10)
    assert np.all(crop[:, :3] == -5) and np.all(crop[:, :, :, 7:] == -5)
    back = paste_box(crop, box, full.shape[1:], fill=0)
    inside = np.zeros(full.shape[1:], bool)
    inside[0:8, 2:9, 0:7] = True
    assert np.array_equal(back[:, inside], full[:, inside])
    assert np.all(back[:, ~inside] == 0)


def test_restricted_image_shows_only_the_organ():
    rng = np.random.default_rng(1)
    organ = _organ()
    image = rng.normal(0, 1, (1,) + organ.shape).astype(np.float32)
    image[0][organ] += 3.0
    image[0, 8, 20, 7] = 100.0  # a bright voxel just outside the organ, inside the 2 mm margin
    out, rec = restrict(image, organ, (1, 1, 1), margin_mm=2, background="mean")
    assert out.shape == (1, 10, 22, 8) and rec.box == ((8, 18), (10, 32), (3, 11))
    organ_mean = float(image[0][organ].mean())
    organ_b = crop_box(organ, rec.box, False)
    assert np.allclose(out[0][~organ_b], organ_mean) and out.max() < 100
    assert np.array_equal(out[0][organ_b], image[0][organ])  # the organ itself unchanged
    const, _ = restrict(image, organ, (1, 1, 1), margin_mm=2, background=-7.0)
    assert np.all(const[0][~organ_b] == -7.0)
    keep, _ = restrict(image, organ, (1, 1, 1), margin_mm=2, background="keep")
    assert keep.max() == 100.0


def test_unrestrict_exact_and_kept_inside_the_organ():
    organ = _organ()
    image = np.ones((1,) + organ.shape, np.float32)
    _, rec = restrict(image, organ, (1, 1, 1), margin_mm=3)
    # labels made on the restricted grid go back to the exact voxels, and only inside the organ
    lab = np.full(rec.out_shape, 2, np.uint8)
    back = unrestrict(lab, rec, is_label=True)
    assert back.shape == organ.shape and np.array_equal(back > 0, organ) and set(np.unique(back)) == {0, 2}
    # probabilities: background 1 outside the organ and outside the box
    probs = np.zeros((3,) + rec.out_shape, np.float32)
    probs[2] = 1.0
    full = unrestrict(probs, rec)
    assert full.shape == (3,) + organ.shape
    assert np.array_equal(full.argmax(0) == 2, organ) and np.allclose(full.sum(0), 1)
    # without the organ mask the whole box comes back exactly (identity round trip of values)
    rng = np.random.default_rng(2)
    values = rng.random((2,) + rec.out_shape).astype(np.float32)
    open_rec = RegionRecord(rec.shape, rec.box, rec.out_shape)
    again = unrestrict(values, open_rec)
    assert np.array_equal(crop_box(again, rec.box), values)


def test_resize_round_trip_and_label_alignment():
    organ = _organ()
    image = np.zeros((1,) + organ.shape, np.float32)
    image[0][organ] = 1.0
    out, rec = restrict(image, organ, (1, 1, 1), margin_mm=0, axes=(0, 1), square=True, size=[36, 36])
    assert out.shape == (1, 36, 36, 4) and rec.box_shape == (18, 18, 4)
    # a label of the full grid is cut and resized like the image; integer factor 2: exact round trip
    ref = organ.astype(np.uint8)
    lab = restrict_label(ref, rec)
    assert lab.shape == (36, 36, 4)
    assert np.array_equal(unrestrict(lab, rec, is_label=True), ref)
    # probabilities resized back: the organ recovered by thresholding
    probs = np.stack([1 - out[0], out[0]])
    back = unrestrict(probs, rec)
    assert np.array_equal(back.argmax(0).astype(bool), organ)


def test_empty_organ_and_mismatch_are_one_sentence():
    image = np.zeros((1, 5, 5, 5), np.float32)
    with pytest.raises(InputError, match="empty"):
        restrict(image, np.zeros((5, 5, 5), bool), (1, 1, 1), name="case_7")
    with pytest.raises(InputError, match="does not match"):
        restrict(image, np.zeros((5, 5, 4), bool), (1, 1, 1), name="case_7")


def test_clahe_keeps_range_and_raises_contrast():
    pytest.importorskip("skimage")
    organ = np.ones((32, 32, 4), bool)
    x = np.linspace(0, 1, 32)[:, None, None] * np.ones((32, 32, 4))
    image = (0.45 + 0.1 * x)[None].astype(np.float32)  # low contrast ramp in [0.45, 0.55]
    image[0, 0, 0, 0], image[0, -1, -1, -1] = 0.0, 1.0
    out, _ = restrict(image, organ, (1, 1, 1), margin_mm=0, clahe_clip=0.05)
    assert out.min() >= 0.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    assert np.std(out[0, 1:-1]) > 2 * np.std(image[0, 1:-1])
