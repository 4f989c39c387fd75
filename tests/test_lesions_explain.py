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
