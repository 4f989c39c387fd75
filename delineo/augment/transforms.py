"""Joint augmentation of image and mask on whole batches, in PyTorch, for 2D and 3D.

Spatial transforms (flips, 90-degree rotations, small rotations and scaling, elastic
deformation) move image and mask together (image bilinear, mask nearest); intensity transforms
(brightness, contrast, gamma, noise, blur) touch the image only. Every draw comes from the
``torch.Generator`` passed in, so a seed fixes the augmentation. Batched ``grid_sample`` is why
this is written here rather than taken from TorchIO: one call per batch instead of per sample,
which keeps data loading a small share of CPU training time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from delineo.config import AugmentConfig


def _u(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _hit(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


class Augmenter:
    def __init__(self, cfg: AugmentConfig, dims: int) -> None:
        self.cfg, self.dims = cfg, dims
        #: the training epoch (0-based), set by the trainer; transforms with ``from_epoch`` read it
        self.epoch = 0

    @property
    def active(self) -> bool:
        c = self.cfg
        return any(t.p > 0 for t in (c.flip, c.rot90, c.affine, c.elastic, c.brightness, c.contrast,
                                     c.gamma, c.noise, c.blur)) or self.cutout_on

    @property
    def cutout_on(self) -> bool:
        return self.cfg.cutout.p > 0 and self.epoch >= self.cfg.cutout.from_epoch

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.active:
            return x, y
        x, y = self.flips(x, y, gen)
        x, y = self.spatial(x, y, gen)
        x = self.intensity(x, gen)
        # last, and drawing nothing while off, so switching it on changes no earlier transform's draws
        return (self.cutout(x, gen) if self.cutout_on else x), y

    def cutout(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Cutout: per hit sample, ``holes`` boxes (side ``size`` x each spatial side, centre
        uniform, clipped at the border) of the image set to ``fill``. The mask is not changed: the
        network must still delineate what the box hides, which is the point of the regulariser."""
        c = self.cfg.cutout
        b, spatial = x.shape[0], x.shape[2:]
        hit = _hit(gen, b, c.p)
        sides = [max(1, int(round(c.size * s))) for s in spatial]
        x = x.clone()
        for i in torch.nonzero(hit).flatten().tolist():
            for _ in range(c.holes):
                box = [slice(None), slice(None)]
                for s, side in zip(spatial, sides):
                    centre = int(torch.randint(0, s, (1,), generator=gen))
                    box.append(slice(max(0, centre - side // 2), min(s, centre - side // 2 + side)))
                box[0] = i
                x[tuple(box)] = c.fill
        return x

    def flips(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        c = self.cfg
        b = x.shape[0]
        if c.flip.p > 0:
            x, y = x.clone(), y.clone()
            for ax in c.flip.axes:
                if ax >= self.dims:
                    continue
                hit = _hit(gen, b, c.flip.p)
                for i in torch.nonzero(hit).flatten().tolist():
                    x[i] = torch.flip(x[i], dims=[ax + 1])
                    y[i] = torch.flip(y[i], dims=[ax + 1])
        if c.rot90.p > 0:
            a0, a1 = c.rot90.axes
            if max(a0, a1) < self.dims:
                square = x.shape[2 + a0] == x.shape[2 + a1]
                hit = _hit(gen, b, c.rot90.p)
                ks = torch.randint(1, 4, (b,), generator=gen)
                for i in torch.nonzero(hit).flatten().tolist():
                    k = int(ks[i]) if square else 2  # 90/270 only when the plane is square
                    x[i] = torch.rot90(x[i], k, dims=[a0 + 1, a1 + 1])
                    y[i] = torch.rot90(y[i], k, dims=[a0 + 1, a1 + 1])
        return x, y

    def spatial(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        c = self.cfg
        b, d = x.shape[0], self.dims
        do_aff = _hit(gen, b, c.affine.p)
        do_el = _hit(gen, b, c.elastic.p)
        if not (do_aff.any() or do_el.any()):
            return x, y
        theta = torch.eye(d, d + 1).repeat(b, 1, 1)
        max_rad = math.radians(c.affine.degrees)
        for i in torch.nonzero(do_aff).flatten().tolist():
            scale = float(_u(gen, 1, *c.affine.scale))
            rot = torch.eye(d)
            planes = [(0, 1)] if d == 2 else [(0, 1), (0, 2), (1, 2)]
            for p, q in planes:
                ang = float(_u(gen, 1, -max_rad, max_rad))
                r = torch.eye(d)
                r[p, p], r[p, q], r[q, p], r[q, q] = math.cos(ang), -math.sin(ang), math.sin(ang), math.cos(ang)
                rot = rot @ r
            theta[i, :, :d] = rot / scale
        size = list(x.shape)
        grid = F.affine_grid(theta, size, align_corners=False)
        if do_el.any():
            spatial = x.shape[2:]
            coarse = [max(2, int(s / (c.elastic.sigma * 2))) for s in spatial]
            noise = torch.randn((b, d, *coarse), generator=gen) * do_el.view(b, *([1] * (d + 1))).float()
            mode = "bilinear" if d == 2 else "trilinear"
            disp = F.interpolate(noise, size=spatial, mode=mode, align_corners=False)
            # magnitude in voxels -> normalised coordinates (2 / size per voxel); grid's last dim is x, y, (z)
            scale = torch.tensor([2.0 * c.elastic.magnitude / s for s in spatial])
            disp = disp * scale.view(1, d, *([1] * d))
            disp = disp.movedim(1, -1).flip(-1)
            grid = grid + disp
        moved = do_aff | do_el
        xs = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        ys = F.grid_sample(y.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).to(y.dtype)
        keep = ~moved
        xs[keep], ys[keep] = x[keep], y[keep]
        return xs, ys

    def intensity(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.cfg
        b = x.shape[0]
        view = (b,) + (1,) * (x.dim() - 1)
        if c.brightness.p > 0:
            hit = _hit(gen, b, c.brightness.p).float().view(view)
            x = x + hit * _u(gen, b, *c.brightness.range).view(view)
        if c.contrast.p > 0:
            hit = _hit(gen, b, c.contrast.p).view(view)
            f = _u(gen, b, *c.contrast.range).view(view)
            mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
            x = torch.where(hit, (x - mean) * f + mean, x)
        if c.gamma.p > 0:
            hit = _hit(gen, b, c.gamma.p).view(view)
            g = _u(gen, b, *c.gamma.range).view(view)
            dims = tuple(range(1, x.dim()))
            lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
            rng = (hi - lo).clamp_min(1e-6)
            x = torch.where(hit, ((x - lo) / rng).clamp(0, 1) ** g * rng + lo, x)
        if c.noise.p > 0:
            hit = _hit(gen, b, c.noise.p).float().view(view)
            std = _u(gen, b, 0, c.noise.std).view(view)
            x = x + hit * std * torch.randn(x.shape, generator=gen)
        if c.blur.p > 0:
            hit = _hit(gen, b, c.blur.p)
            for i in torch.nonzero(hit).flatten().tolist():
                x[i] = gaussian_blur(x[i : i + 1], float(_u(gen, 1, *c.blur.sigma)))[0]
        return x


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the spatial axes of ``(B, C, *S)``."""
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    d = x.dim() - 2
    c = x.shape[1]
    conv = F.conv2d if d == 2 else F.conv3d
    for ax in range(d):
        shape = [1] * d
        shape[ax] = len(k)
        weight = k.view(1, 1, *shape).repeat(c, 1, *([1] * d))
        pad = [0] * (2 * d)
        pad[2 * (d - 1 - ax)] = pad[2 * (d - 1 - ax) + 1] = radius
        x = conv(F.pad(x, pad, mode="replicate"), weight, groups=c)
    return x
