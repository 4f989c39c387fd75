"""Samplers and joint augmentation: shapes, foreground oversampling, alignment, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delineo.augment.transforms import Augmenter, gaussian_blur
from delineo.config import AugmentConfig
from delineo.data.cache import CachedCase
from delineo.sampling.patches import PatchSampler, crop_padded, slab


def cached(shape=(20, 24, 16), fg_voxel=(3, 4, 5)):
    img = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[fg_voxel] = 1
    return CachedCase("c", img, lab, None, {1: np.array([fg_voxel])})


def test_slab_replicates_edges_channel_major():
    vol = np.arange(2 * 3 * 2 * 4).reshape(2, 3, 2, 4).astype(np.float32)  # (C=2, 3, 2, N=4)
    s = slab(vol, axis=2, index=0, context=1)
    assert s.shape == (6, 3, 2)
    np.testing.assert_array_equal(s[0], vol[0, :, :, 0])  # replicated edge
    np.testing.assert_array_equal(s[1], vol[0, :, :, 0])
    np.testing.assert_array_equal(s[2], vol[0, :, :, 1])
    np.testing.assert_array_equal(s[3], vol[1, :, :, 0])


def test_crop_padded_outside_volume():
    vol = np.ones((4, 4, 4))
    out = crop_padded(vol, (-2, 0, 2), (4, 4, 4))
    assert out.shape == (4, 4, 4) and out.sum() == 2 * 4 * 2


@pytest.mark.parametrize("fraction,expect", [(1.0, 1.0), (0.0, None)])
def test_foreground_oversampling(fraction, expect):
    sampler = PatchSampler([cached()], "3d", (8, 8, 8), foreground_fraction=fraction)
    x, y = sampler.sample(64, np.random.default_rng(1))
    assert x.shape == (64, 1, 8, 8, 8) and y.shape == (64, 1, 8, 8, 8)
    share = (y.reshape(64, -1).max(1) > 0).mean()
    if expect is not None:
        assert share == expect  # every patch holds the single labelled voxel
    else:
        assert share < 0.5


def test_2p5d_patches_have_k_channels():
    sampler = PatchSampler([cached()], "2.5d", (16, 16), axis=2, context=2)
    x, y = sampler.sample(3, np.random.default_rng(0))
    assert x.shape == (3, 5, 16, 16) and y.shape == (3, 1, 16, 16)


def full_config(**p):
    cfg = AugmentConfig()
    for name in ("flip", "rot90", "affine", "elastic"):
        setattr(cfg, name, getattr(cfg, name).model_copy(update={"p": p.get(name, 1.0)}))
    return cfg


@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_augmentation_keeps_image_and_mask_aligned(dims):
    shape = (24,) * dims
    grid = np.indices(shape)
    mask = (sum((g - 12) ** 2 for g in grid) < 36).astype(np.int64)
    mask[(slice(4, 8),) * dims] = 1  # an asymmetric part so flips matter
    x = torch.from_numpy(mask[None, None].astype(np.float32) * 5).repeat(4, 1, *([1] * dims))
    y = torch.from_numpy(mask[None, None]).repeat(4, 1, *([1] * dims))
    xa, ya = Augmenter(full_config(), dims).spatial(*Augmenter(full_config(), dims).flips(x, y, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    agreement = ((xa > 2.5).long() == ya).float().mean().item()
    assert agreement > 0.97
    assert not torch.equal(ya, y)  # something moved


def test_augmentation_is_seeded():
    cfg = full_config()
    cfg.noise.p, cfg.gamma.p = 1.0, 1.0
    x = torch.rand(2, 1, 16, 16, 16)
    y = (x > 0.5).long()
    a = Augmenter(cfg, 3)(x.clone(), y.clone(), torch.Generator().manual_seed(7))
    b = Augmenter(cfg, 3)(x.clone(), y.clone(), torch.Generator().manual_seed(7))
    c = Augmenter(cfg, 3)(x.clone(), y.clone(), torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_gaussian_blur_preserves_constant_and_mass():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1
    y = gaussian_blur(x, 1.5)
    assert abs(y.sum().item() - 1) < 1e-5 and y[0, 0, 10, 10] < 0.1
    assert torch.allclose(gaussian_blur(torch.ones(1, 2, 8, 8, 8), 1.0), torch.ones(1, 2, 8, 8, 8))
