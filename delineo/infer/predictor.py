"""Predict whole cases the one way Delineo predicts: preprocess, sliding window or slice-wise
network evaluation, optional test-time flips, post-processing, and mapping back to the exact
grid of the input. Validation during training uses this same code.

A checkpoint alone is enough: it holds the resolved experiment, the network's weights and the
facts read from the data (labels, channels, patch size).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from delineo.config import ExperimentConfig, config_from_dict
from delineo import precision as mixed
from delineo.errors import InputError
from delineo.infer.memory import parse_size
from delineo.infer.sliding import flip_tta, sliding_window, sliding_window_labels, slice_wise, slice_wise_labels
from delineo.io.image import Image
from delineo.modelfile.checkpoint import ModelMeta, load_checkpoint  # noqa: F401  (re-exported)
from delineo.postprocess.components import postprocess_labels
from delineo.preprocess.pipeline import GeometryRecord, preprocess, restore
from delineo.preprocess.region import RegionRecord, unrestrict
from delineo.registry import MODELS

log = logging.getLogger(__name__)


def build_model(cfg: ExperimentConfig, meta: ModelMeta) -> torch.nn.Module:
    return MODELS.build(cfg.model, "model", in_channels=meta.in_channels, out_channels=meta.out_channels,
                        dims=meta.dims)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Predictor:
    """Wraps a network and its experiment to segment whole cases."""

    def __init__(self, model: torch.nn.Module, cfg: ExperimentConfig, meta: ModelMeta,
                 device: torch.device | str = "cpu", tta: Optional[bool] = None) -> None:
        if cfg.train.task == "classification":
            raise InputError(f"{cfg.name}: this model is a classifier (train.task: classification); it labels "
                             "slices, it does not segment them.")
        self.cfg, self.meta = cfg, meta
        fmt = torch.contiguous_format
        if cfg.train.channels_last:
            fmt = torch.channels_last_3d if meta.dims == 3 else torch.channels_last
        self.model = model.to(device).to(memory_format=fmt).eval()
        self.device = torch.device(device)
        self.tta = cfg.infer.tta if tta is None else tta
        # fp32 | bf16 | auto; 'auto' is settled on the first batch, by a probe of this network (delineo.precision)
        self.precision = cfg.infer.precision if cfg.infer.precision == "auto" else \
            mixed.resolve(cfg.infer.precision, self.device, "infer")
        flip = cfg.augment.flip
        self.tta_axes = [a for a in flip.axes if a < meta.dims] if flip.p > 0 else []
        if self.tta and not self.tta_axes:
            log.warning("test-time mirroring skipped: the model was trained without flips (augment.flip.p = 0), "
                        "so mirrored inputs would be out of distribution")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", tta: Optional[bool] = None) -> "Predictor":
        ckpt = load_checkpoint(path)
        cfg = config_from_dict(ckpt["config"], source=ckpt["path"])
        meta = ModelMeta.from_dict(ckpt["meta"])
        model = build_model(cfg, meta)
        model.load_state_dict(ckpt["model_state"])
        return cls(model, cfg, meta, pick_device(device), tta)

    def _forward_probs(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.channels_last and x.dim() in (4, 5):
            x = x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
        if self.precision == "auto":
            self.precision = mixed.resolve("auto", self.device, f"infer|{self.cfg.model}|{tuple(x.shape)}",
                                           mixed.inference_probe(self.model, x))
        with mixed.autocast(self.device, self.precision):
            out = self.model(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        out = out.float()  # softmax and blending in float32
        return torch.sigmoid(out) if out.shape[1] == 1 else torch.softmax(out, dim=1)

    @torch.no_grad()
    def predict_array(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (K, *S) for a preprocessed (C, *S) array."""
        x = torch.from_numpy(np.array(image, dtype=np.float32)).to(self.device)  # a copy: cache arrays are read-only maps
        m = self.meta
        fn = flip_tta(self._forward_probs, self.tta_axes) if self.tta and self.tta_axes else self._forward_probs
        if m.mode == "3d":
            probs = sliding_window(fn, x, m.patch_size, self.cfg.infer.overlap, self.cfg.infer.batch_size,
                                   m.divisor)
        else:
            probs = slice_wise(fn, x, m.axis, m.context if m.mode == "2.5d" else 0,
                               batch_size=max(self.cfg.infer.batch_size, 16), divisor=m.divisor)
        return probs.float().cpu().numpy()

    def labels_from_probs(self, probs: np.ndarray) -> np.ndarray:
        if probs.shape[0] == 1:
            seg = (probs[0] >= 0.5).astype(np.uint8) * np.uint8(min(self.meta.labels) if self.meta.labels else 1)
        else:
            seg = probs.argmax(0).astype(np.uint8)
            values = np.array([0] + sorted(self.meta.labels), dtype=np.uint8)
            if len(values) == probs.shape[0]:
                seg = values[seg]
        return postprocess_labels(seg, self.cfg.postprocess)

    @torch.no_grad()
    def predict_labels_capped(self, image: np.ndarray, record: GeometryRecord) -> np.ndarray:
        """The label map on the input grid within ``infer.max_memory``: probabilities are kept for
        one slab at a time (delineo.infer.sliding.sliding_window_labels) and never restored whole,
        so labels (not probabilities) are mapped back to the input grid, by nearest neighbour
        where the preprocessing resampled."""
        x = torch.from_numpy(np.array(image, dtype=np.float32)).to(self.device)
        m = self.meta
        fn = flip_tta(self._forward_probs, self.tta_axes) if self.tta and self.tta_axes else self._forward_probs
        values = torch.tensor([0] + sorted(self.meta.labels), dtype=torch.uint8)

        def to_labels(probs: torch.Tensor) -> torch.Tensor:
            if probs.shape[0] == 1:
                return (probs[0] >= 0.5).to(torch.uint8) * int(min(self.meta.labels) if self.meta.labels else 1)
            seg = probs.argmax(0)
            return values[seg.cpu()] if len(values) == probs.shape[0] else seg.to(torch.uint8)

        if m.mode == "3d":
            seg = sliding_window_labels(fn, x, m.patch_size, to_labels, self.cfg.infer.overlap,
                                        self.cfg.infer.batch_size, m.divisor,
                                        max_bytes=parse_size(self.cfg.infer.max_memory), n_out=m.out_channels)
        else:
            seg = slice_wise_labels(fn, x, m.axis, to_labels, m.context if m.mode == "2.5d" else 0,
                                    batch_size=max(self.cfg.infer.batch_size, 16), divisor=m.divisor)
        seg = restore(seg.cpu().numpy(), record, is_label=True)
        return postprocess_labels(seg, self.cfg.postprocess)

    def predict_preprocessed(self, image: np.ndarray, record: GeometryRecord,
                             region: Optional[RegionRecord] = None) -> tuple[np.ndarray, np.ndarray]:
        """(label map, probabilities) on the input grid from a preprocessed case; under
        ``infer.max_memory`` the probabilities are None (they would not fit)."""
        if self.cfg.infer.max_memory and region is None:
            return self.predict_labels_capped(image, record), None
        probs = self.predict_array(image)
        if region is not None:  # restricted to an organ (preprocess.region): back to the whole grid, kept inside it
            probs = unrestrict(probs, region)
        probs_orig = restore(probs, record, probabilities=True)
        return self.labels_from_probs(probs_orig), probs_orig

    def predict_images(self, images: list[Image]) -> tuple[Image, Image]:
        """Segment one case given its channel images; returns (mask, probabilities) as Images on
        the exact grid (shape and affine) of the first channel."""
        if len(images) != len(self.meta.channels):
            raise InputError(
                f"{images[0].meta.get('path', 'input')}: the model expects {len(self.meta.channels)} "
                f"channel(s) ({', '.join(self.meta.channels)}), got {len(images)}."
            )
        if self.cfg.preprocess.region is not None:
            raise InputError(f"{self.cfg.name}: this model was trained on images restricted to an organ "
                             "(preprocess.region); run it as a cascade stage of a pipeline that segments the organ first.")
        x, _, record = preprocess(images, None, self.cfg.preprocess)
        seg, probs = self.predict_preprocessed(x, record)
        ref = images[0]
        mask = Image(seg, ref.affine.copy(), "SEG", dict(ref.meta))
        prob_img = None if probs is None else Image(probs.astype(np.float32), ref.affine.copy(), "PROB", dict(ref.meta))
        return mask, prob_img
