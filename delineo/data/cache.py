"""Preprocessed cases cached on disk once and reused by every fold and epoch.

Each case is stored as uncompressed ``.npy`` files (memory-mapped when read, so a dataset
larger than RAM still trains) plus a JSON geometry record and a sample of foreground voxel
coordinates per label for foreground oversampling. The cache key hashes the preprocessing
settings and the input files' sizes and times, so a changed setting or file is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from delineo.config import PreprocessConfig
from delineo.data.sources import Case
from delineo.errors import InputError
from delineo.io.atomic import atomic_path, write_text_atomic
from delineo.preprocess.pipeline import GeometryRecord, preprocess
from delineo.preprocess.region import RegionRecord, restrict, restrict_label

log = logging.getLogger(__name__)

#: foreground coordinates kept per label and case (enough for oversampling, small on disk)
MAX_FG_COORDS = 5000


@dataclass
class CachedCase:
    case_id: str
    image: np.ndarray  # (C, *S) float32, memory-mapped
    label: Optional[np.ndarray]  # (*S) uint8 class indices 0..K (label values in sorted order), memory-mapped
    record: GeometryRecord
    fg_coords: dict[int, np.ndarray]  # label value -> (N, 3) int coordinates
    region: Optional[RegionRecord] = None  # preprocess.region: the organ box (image and label are restricted to it)


def cache_key(cfg: PreprocessConfig, labels: dict[int, str] | None = None,
              region_axes: Optional[tuple[int, ...]] = None) -> str:
    parts = [cfg.model_dump(mode="json"), sorted((labels or {}).items())]
    if cfg.region is not None:
        parts.append(list(region_axes or (0, 1, 2)))
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class CaseCache:
    """Preprocess-once store under ``root/<settings hash>/<case>.*``."""

    def __init__(self, root: Path, cfg: PreprocessConfig, labels: dict[int, str],
                 region_axes: Optional[tuple[int, ...]] = None) -> None:
        self.cfg = cfg
        self.labels = labels
        #: with preprocess.region, the axes its square box and size apply to (delineo.preprocess.region.region_axes)
        self.region_axes = tuple(region_axes) if region_axes is not None else (0, 1, 2)
        self.dir = Path(root) / cache_key(cfg, labels, self.region_axes)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _paths(self, case_id: str) -> tuple[Path, Path, Path]:
        return self.dir / f"{case_id}_img.npy", self.dir / f"{case_id}_seg.npy", self.dir / f"{case_id}.json"

    def is_cached(self, case: Case) -> bool:
        _, _, meta = self._paths(case.case_id)
        if not meta.is_file():
            return False
        try:
            return json.loads(meta.read_text()).get("fingerprint") == case.fingerprint()
        except (json.JSONDecodeError, OSError):
            return False

    def prepare(self, cases: list[Case], progress: bool = True) -> None:
        """Preprocess every case not yet cached (with a progress bar)."""
        todo = [c for c in cases if not self.is_cached(c)]
        if not todo:
            return
        for case in tqdm(todo, desc="preprocess", unit="case", disable=not progress, leave=False):
            self._write(case)

    def _write(self, case: Case) -> None:
        images, label = case.load()
        if label is None:
            raise InputError(f"{case.case_id}: no label file, but training needs one.")
        image, seg, record = preprocess(images, label, self.cfg, case.case_id)
        region = None
        if self.cfg.region is not None:
            image, seg, region = self._restrict(image, seg, record, case)
        values = np.unique(seg)
        allowed = set(self.labels) | {0}
        bad = [int(v) for v in values if int(v) not in allowed]
        if bad:
            raise InputError(
                f"{case.label}: label values {bad} are not declared in the dataset "
                f"(declared: {sorted(allowed)})."
            )
        # label values -> contiguous class indices 1..K (the network's output channels), so that
        # datasets with values such as {1, 5} train and predict correctly; Predictor maps back
        lut = np.zeros(int(max(allowed)) + 1, dtype=np.uint8)
        for index, value in enumerate(sorted(self.labels), start=1):
            lut[value] = index
        seg = lut[seg]
        values = np.unique(seg)
        img_p, seg_p, meta_p = self._paths(case.case_id)
        rng = np.random.default_rng(0)
        fg: dict[str, list] = {}
        for v in values:
            if v == 0:
                continue
            coords = np.argwhere(seg == v)
            if len(coords) > MAX_FG_COORDS:
                coords = coords[rng.choice(len(coords), MAX_FG_COORDS, replace=False)]
            fg[str(int(v))] = coords.astype(np.int32).tolist()
        for path, arr in ((img_p, image), (seg_p, seg)):
            with atomic_path(path, suffix=".npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, arr)
        if region is not None:
            with atomic_path(self._organ_path(case.case_id), suffix=".npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, region.organ.astype(np.uint8))
        # the JSON is written last: its presence marks a complete entry
        entry = {"fingerprint": case.fingerprint(), "record": record.to_dict(), "fg": fg}
        if region is not None:
            entry["region"] = region.to_dict()
        write_text_atomic(meta_p, json.dumps(entry))

    def _organ_path(self, case_id: str) -> Path:
        return self.dir / f"{case_id}_organ.npy"

    def _restrict(self, image: np.ndarray, seg: np.ndarray, record: GeometryRecord,
                  case: Case) -> tuple[np.ndarray, np.ndarray, RegionRecord]:
        """preprocess.region at training time: the image restricted to the REFERENCE organ
        (the label values of ``region.labels``); organ values that are not among the trained
        labels (e.g. liver, for a lesion model) become background."""
        rc = self.cfg.region
        organ = np.isin(seg, rc.labels)
        if not organ.any():
            raise InputError(f"{case.label}: no voxel of the organ labels {rc.labels} (preprocess.region.labels), "
                             "so this case has no region to train on.")
        image, region = restrict(image, organ, record.spacing, rc.margin_mm, self.region_axes, rc.square, rc.size,
                                 rc.background, rc.clahe, case.case_id)
        seg = restrict_label(seg, region)
        organ_only = [v for v in rc.labels if v not in self.labels]
        if organ_only:
            seg = np.where(np.isin(seg, organ_only), 0, seg).astype(seg.dtype)
        return image, seg, region

    def load(self, case: Case) -> CachedCase:
        img_p, seg_p, meta_p = self._paths(case.case_id)
        meta = json.loads(meta_p.read_text())
        fg = {int(k): np.asarray(v, dtype=np.int64).reshape(-1, 3) for k, v in meta["fg"].items()}
        region = None
        if "region" in meta:
            region = RegionRecord.from_dict(meta["region"], np.load(self._organ_path(case.case_id)).astype(bool))
        return CachedCase(case.case_id, np.load(img_p, mmap_mode="r"), np.load(seg_p, mmap_mode="r"),
                          GeometryRecord.from_dict(meta["record"]), fg, region)


def default_cache_root() -> Path:
    return Path(os.environ.get("DELINEO_CACHE", Path.home() / ".cache" / "delineo"))
