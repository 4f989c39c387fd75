"""Dataset sources: an MSD / nnU-Net folder, a CSV case list, or an HDF5 file in the deoxys
fold layout. Each yields :class:`Case` records that know how to load their images and label.

A case is a *patient-level* unit: splits never put two cases of one patient in different
folds (the ``patient`` field), and HDF5 slices of one patient are stacked into one volume.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from delineo.config import DataConfig
from delineo.errors import InputError
from delineo.io.files import case_name, image_suffix, read_image
from delineo.io.image import Image

log = logging.getLogger(__name__)


@dataclass
class Case:
    """One patient's scan: channel images, optional label, and grouping information."""

    case_id: str
    images: list[str] = field(default_factory=list)
    label: Optional[str] = None
    patient: str = ""
    group: Optional[str] = None
    fold: Optional[int] = None  # predefined fold (HDF5 layout)
    loader: Optional[Callable[[], tuple[list[Image], Optional[Image]]]] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.patient = self.patient or self.case_id

    def load(self) -> tuple[list[Image], Optional[Image]]:
        """Read the channel images (each 3D) and the label (or None)."""
        if self.loader is not None:
            return self.loader()
        images = [read_image(p) for p in self.images]
        label = read_label(self.label, images[0]) if self.label else None
        return images, label

    def fingerprint(self) -> str:
        """A string that changes when any input file changes (for the preprocessing cache)."""
        parts = [self.case_id]
        for p in [*self.images, self.label or ""]:
            if p:
                st = Path(p).stat()
                parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)


@dataclass
class Dataset:
    """The cases of a source plus the facts read from it (labels, channel names)."""

    cases: list[Case]
    labels: dict[int, str]
    channels: list[str]
    name: str = "dataset"


def read_label(path: str, reference: Image) -> Image:
    """A label image: NIfTI/NRRD/... as is, or a DICOM-SEG / RTSTRUCT file mapped onto the grid
    of ``reference`` (so a dataset can be built straight from a PACS export)."""
    if str(path).lower().endswith(".dcm"):
        import pydicom

        from delineo.io.dicom_seg import read_dicom_seg
        from delineo.io.rtstruct import read_rtstruct

        try:
            modality = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", "")
        except Exception as exc:  # pydicom raises several types for non-DICOM files
            raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}).") from None
        if modality == "SEG":
            return read_dicom_seg(path, reference)
        if modality == "RTSTRUCT":
            return read_rtstruct(path, reference)
        raise InputError(f"{path}: a DICOM label must be a SEG or RTSTRUCT object, not modality '{modality}'.")
    return read_image(path)


def output_channels(model: dict, labels: dict[int, str], classify: bool = False) -> int:
    """The network's outputs: ``model.out_channels`` (or ``num_classes``) when the experiment sets
    it, else one sigmoid output for a classifier and background + one per label for a segmenter."""
    return int(model.get("out_channels") or model.get("num_classes") or (1 if classify else len(labels) + 1))


def segmenter_labels(labels: dict[int, str], out_channels: int) -> dict[int, str]:
    """The labels a segmenter with ``out_channels`` outputs predicts. One sigmoid output trained on
    several labels learns their union (its targets are label > 0): it predicts, and is scored as,
    one label with the lowest value, named after all of them (e.g. "Anterior+Posterior")."""
    if out_channels == 1 and len(labels) > 1:
        return {min(labels): "+".join(labels[k] for k in sorted(labels))}
    return dict(labels)


def reference_for(reference: np.ndarray, labels: dict[int, str], model_labels: dict[int, str]) -> np.ndarray:
    """A reference label map in the model's terms: merged to one label for a union model."""
    if len(model_labels) == 1 and len(labels) > 1:
        return (np.asarray(reference) > 0).astype(np.uint8) * np.uint8(next(iter(model_labels)))
    return np.asarray(reference)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read the case list described by ``cfg.source`` and apply ``labels``/``max_cases``."""
    src = cfg.source
    path = Path(src.path)
    if not path.exists():
        raise InputError(f"{path}: dataset not found.")
    if src.type == "msd":
        ds = _msd(path)
    elif src.type == "csv":
        ds = _csv(path, src.channels, src.label_column, src.id_column, src.group_column)
    else:
        ds = _hdf5(path)
    if src.patient_pattern:
        _patients_from_ids(ds.cases, src.patient_pattern, path)
    if cfg.labels:
        ds.labels = {int(k): v for k, v in cfg.labels.items() if int(k) != 0}
    if cfg.max_cases:
        ds.cases = ds.cases[: cfg.max_cases]
    if len(ds.cases) < 2:
        raise InputError(f"{path}: needs at least 2 labelled cases, found {len(ds.cases)}.")
    return ds


def _patients_from_ids(cases: list[Case], pattern: str, source: Path) -> None:
    """Set each case's patient from ``pattern`` (its first group, or the whole match)."""
    regex = re.compile(pattern)
    for case in cases:
        m = regex.search(case.case_id)
        if m is None:
            raise InputError(f"{source}: case id '{case.case_id}' does not match data.source.patient_pattern "
                             f"'{pattern}'.")
        case.patient = m.group(1) if regex.groups else m.group(0)


def _msd(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise InputError(f"{root}: not an MSD/nnU-Net folder (imagesTr/ and labelsTr/ are required).")
    channels = _channel_names(meta)
    labels = _label_names(meta)
    by_case: dict[str, dict[int, str]] = {}
    four_d: dict[str, str] = {}
    pattern = re.compile(r"^(.*)_(\d{4})$")
    for f in sorted(images_dir.iterdir()):
        if not image_suffix(f) or f.name.startswith("."):
            continue
        name = case_name(f)
        m = pattern.match(name)
        if m:
            by_case.setdefault(m.group(1), {})[int(m.group(2))] = str(f)
        else:
            four_d[name] = str(f)
    cases: list[Case] = []
    for name in sorted(set(by_case) | set(four_d)):
        label = _find_label(labels_dir, name)
        if label is None:
            log.debug("no label for %s; skipped", name)
            continue
        if name in four_d:
            cases.append(_four_d_case(name, four_d[name], label, len(channels)))
            continue
        found = by_case[name]
        expected = list(range(max(len(channels), 1)))
        missing = [c for c in expected if c not in found]
        if missing:
            raise InputError(
                f"{images_dir}: case {name} lacks channel file(s) "
                + ", ".join(f"{name}_{c:04d}" for c in missing) + "."
            )
        cases.append(Case(name, [found[c] for c in sorted(found)], label))
    if not channels:
        channels = [f"channel{i}" for i in range(len(cases[0].images))] if cases else ["image"]
    return Dataset(cases, labels, channels, meta.get("name", root.name))


def _four_d_case(name: str, image: str, label: str, n_channels: int) -> Case:
    def loader() -> tuple[list[Image], Image]:
        img = read_image(image, allow_4d=True)
        arrays = img.array if img.array.ndim == 4 else img.array[None]
        if n_channels and arrays.shape[0] != n_channels:
            raise InputError(f"{image}: has {arrays.shape[0]} channels, dataset.json declares {n_channels}.")
        return [Image(a, img.affine, meta=dict(img.meta)) for a in arrays], read_image(label)

    return Case(name, [image], label, loader=loader)


def _find_label(labels_dir: Path, name: str) -> Optional[str]:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        p = labels_dir / f"{name}{suffix}"
        if p.is_file():
            return str(p)
    return None


def _channel_names(meta: dict) -> list[str]:
    mod = meta.get("modality") or meta.get("channel_names") or {}
    return [str(mod[k]) for k in sorted(mod, key=lambda k: int(k))]


def _label_names(meta: dict) -> dict[int, str]:
    raw = meta.get("labels") or {}
    out: dict[int, str] = {}
    for k, v in raw.items():
        # MSD: {"1": "Anterior"}; nnU-Net v2: {"Anterior": 1}
        if str(k).isdigit():
            value, name = int(k), str(v)
        elif isinstance(v, int):
            value, name = v, str(k)
        else:
            continue
        if value != 0:
            out[value] = name
    return out


def _csv(path: Path, channels: Optional[list[str]], label_col: str, id_col: Optional[str],
         group_col: Optional[str]) -> Dataset:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputError(f"{path}: the CSV case list is empty.")
    header = list(rows[0])
    if label_col not in header:
        raise InputError(f"{path}: no label column '{label_col}' (columns: {', '.join(header)}).")
    chans = channels or [c for c in header if c not in {label_col, id_col, group_col, "patient", "group", "id", "case"}]
    for c in chans:
        if c not in header:
            raise InputError(f"{path}: no channel column '{c}' (columns: {', '.join(header)}).")
    base = path.parent
    cases = []
    for i, row in enumerate(rows):
        def resolve(p: str) -> str:
            q = Path(p)
            return str(q if q.is_absolute() else (base / q))

        for c in chans:
            if not row.get(c):
                raise InputError(f"{path}: row {i + 2} has no file for channel '{c}'.")
        cid = row.get(id_col) if id_col else row.get("id") or row.get("case") or case_name(row[chans[0]])
        patient = row.get("patient") or cid
        group = row.get(group_col) if group_col else row.get("group")
        cases.append(Case(str(cid), [resolve(row[c]) for c in chans], resolve(row[label_col]), str(patient), group))
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: case ids are not unique.")
    return Dataset(cases, {}, chans, path.stem)


def _hdf5(path: Path) -> Dataset:
    """deoxys layout: groups fold_0..fold_n with datasets x (N,H,W[,C]), y (N,H,W[,1]) and an
    optional patient_idx (N,); a patient's 2D slices are contiguous and become one volume."""
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc}).") from None
    with fh:
        folds = sorted((k for k in fh.keys() if re.fullmatch(r"fold_\d+", k)), key=lambda k: int(k[5:]))
        if not folds:
            raise InputError(f"{path}: no fold_0..fold_n groups (deoxys layout expected).")
        cases: list[Case] = []
        n_channels = 1
        for fold_name in folds:
            grp = fh[fold_name]
            if "x" not in grp or "y" not in grp:
                raise InputError(f"{path}: group {fold_name} lacks dataset 'x' or 'y'.")
            n = grp["x"].shape[0]
            n_channels = grp["x"].shape[-1] if grp["x"].ndim == 4 else 1
            pid = np.asarray(grp["patient_idx"][:]) if "patient_idx" in grp else np.arange(n)
            starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
            ends = np.r_[starts[1:], n]
            for s, e in zip(starts, ends):
                patient = str(pid[s].item() if hasattr(pid[s], "item") else pid[s])
                if isinstance(pid[s], bytes):
                    patient = pid[s].decode()
                cases.append(Case(f"{fold_name}_p{patient}", [str(path)], str(path), patient,
                                  fold=int(fold_name[5:]), loader=_hdf5_loader(path, fold_name, int(s), int(e))))
    return Dataset(cases, {1: "foreground"}, [f"channel{i}" for i in range(n_channels)], path.stem)


def _hdf5_loader(path: Path, fold: str, start: int, end: int):
    def loader() -> tuple[list[Image], Image]:
        import h5py

        with h5py.File(path, "r") as fh:
            x = np.asarray(fh[fold]["x"][start:end], dtype=np.float32)
            y = np.asarray(fh[fold]["y"][start:end])
        if x.ndim == 3:
            x = x[..., None]
        if y.ndim == 4:
            y = y[..., 0]
        # slices (N, H, W, C) -> channel volumes (H, W, N): slice axis last
        vols = [np.ascontiguousarray(np.moveaxis(x[..., c], 0, -1)) for c in range(x.shape[-1])]
        lab = np.ascontiguousarray(np.moveaxis((y > 0.5).astype(np.uint8), 0, -1))
        return [Image(v, np.eye(4), meta={"path": f"{path}:{fold}"}) for v in vols], Image(lab, np.eye(4))

    return loader
