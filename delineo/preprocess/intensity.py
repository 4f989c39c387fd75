"""Intensity mappings that published set-ups need beyond the ct / mr / pet presets.

- ``window`` (the head-and-neck PET/CT pipeline of Moe et al.): per channel
  ``clip(x - centre, -width/2, width/2)`` with centre and width from ``window: [low, high]``.
  Unlike the ``ct`` preset it does not rescale: a CT window of 70 +- 100 HU stays in HU units.
- ``imagenet`` (encoders pre-trained on ImageNet, e.g. the pneumothorax U-Net): ``x / scale``
  into [0, 1] (``scale`` = ``window[1]``, 255 by default for 8-bit radiographs), then
  ``(x - mean) / std`` with ImageNet's red, green, blue statistics for channels 0, 1, 2 (a
  3-channel input) or their averages (0.449, 0.226) for a single grey channel.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = 0.449, 0.226  # the averages of the three, for one grey channel


def window(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """``clip(x - centre, -width/2, width/2)`` for the window [low, high]."""
    centre, width = (low + high) / 2.0, high - low
    return np.clip(x.astype(np.float32) - centre, -width / 2.0, width / 2.0).astype(np.float32)


def imagenet(x: np.ndarray, channel: int = 0, n_channels: int = 1, scale: Optional[float] = None) -> np.ndarray:
    """ImageNet normalisation of one channel of an image whose full range is 0..``scale``."""
    scale = 255.0 if not scale else float(scale)
    if n_channels == 1:
        mean, std = GREY_MEAN, GREY_STD
    else:
        mean, std = IMAGENET_MEAN[channel % 3], IMAGENET_STD[channel % 3]
    return ((x.astype(np.float32) / scale - mean) / std).astype(np.float32)
