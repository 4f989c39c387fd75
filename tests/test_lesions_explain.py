"""Lesion-level occlusion on a model with a known answer: a pixel is 'lesion' when brighter than
0.5, so hiding a whole lesion under the image minimum removes it, and cutting a bar in two adds one."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from delineo.explain import METHODS, explain
from delineo.explain.lesion_occlusion import lesion_occlusion


class Bright(nn.Module):
    """One sigmoid output: logit 20 * (x - 0.5)."""

    def forward(self, x):
        return 20 * (x[:, :1] - 0.5)


def _image():
    img = np.zeros((1, 32, 32), np.float32)
    img[0, 2:6, 2:6] = 1.0      # lesion inside the box at (0, 0)
    img[0, 18:22, 18:22] = 1.0  # lesion inside the box at (16, 16)
    img[0, 10:30, 28:30] = 1.0  # a bar that a box at rows 16-23 cuts in two
    return img


def test_change_in_detected_lesions_has_the_known_answer():
    x = torch.from_numpy(_image())[None]
    m, n0 = lesion_occlusion(Bright(), x, patch=8)
    m = m[0, 0].numpy()
    assert n0 == 3
    assert (m[0:8, 0:8] == 1).all() and (m[16:24, 16:24] == 1).all()  # a lesion disappears
    assert (m[16:24, 24:32] == -1).all()                               # the bar splits: one more
    assert (m[8:16, 0:8] == 0).all() and (m[24:32, 0:16] == 0).all()   # empty regions change nothing


def test_registered_beside_pixel_occlusion():
    assert "lesion-occlusion" in METHODS and "occlusion" in METHODS
    out = explain(Bright(), _image(), "lesion-occlusion", mode="3d", patch=8)
    assert out.shape == (32, 32) and out[2, 2] == 1 and out[20, 28] == -1


def test_threshold_and_label_of_the_explanation_reach_lesion_occlusion():
    """A lesion of brightness 0.6 has p = sigmoid(2) = 0.88: found at threshold 0.5, not at 0.95
    (the explanation's threshold used to stop at the targets, the count kept 0.5)."""
    img = np.zeros((1, 16, 16), np.float32)
    img[0, 2:6, 2:6] = 0.6
    low = explain(Bright(), img, "lesion-occlusion", mode="3d", patch=8, threshold=0.5)
    high = explain(Bright(), img, "lesion-occlusion", mode="3d", patch=8, threshold=0.95)
    assert low[2, 2] == 1 and (high == 0).all()


def test_with_a_reference_the_detected_reference_lesions_are_counted():
    """Reference: the bar and a lesion at rows 6-9 that straddles the box edge at row 8. Counting
    detected reference lesions, splitting the bar changes nothing (it is still detected) and
    the unreferenced lesions are not counted; hiding half of the straddling lesion keeps it
    detected by 'any voxel' but loses it at min_overlap 1 (as hiding part of the bar does)."""
    img = _image()
    img[0, 6:10, 10:14] = 1.0
    ref = np.zeros((32, 32), np.float32)
    ref[10:30, 28:30] = 1
    ref[6:10, 10:14] = 1
    any_voxel = explain(Bright(), img, "lesion-occlusion", mode="3d", patch=8, reference=ref)
    whole = explain(Bright(), img, "lesion-occlusion", mode="3d", patch=8, reference=ref, min_overlap=1.0)
    assert (any_voxel[16:24, 24:32] == 0).all()          # the bar split in two: still one detected lesion
    assert (any_voxel[0:8, 0:8] == 0).all()              # an unreferenced lesion hidden: no change
    assert (any_voxel[0:16, 8:16] == 0).all()            # half of the straddling lesion still detects it
    assert (whole[0:8, 8:16] == 1).all() and (whole[8:16, 8:16] == 1).all()  # not all of it: missed
    assert (whole[16:24, 24:32] == 1).all()              # and so is the bar with a part hidden


def test_min_overlap_without_reference_is_refused():
    import pytest

    from delineo.errors import InputError

    with pytest.raises(InputError, match="needs a reference"):
        lesion_occlusion(Bright(), torch.from_numpy(_image())[None], patch=8, min_overlap=0.5)
