"""Write a predicted label mask in the format a user asked for, next to its source image.

One entry point, :func:`write_prediction`, so that the CLI (``delineo predict --format``) and the
Python API share the same behaviour: NIfTI/NRRD through :mod:`delineo.io.files` (with a JSON
sidecar linking back to the DICOM source unless anonymised), and DICOM-SEG / RTSTRUCT / RGB
overlay series through their writers, which need a DICOM source to reference.

The colour table lives here too because every writer needs the same colours for the same
labels: a viewer showing the SEG, the RTSTRUCT and the overlay side by side must agree.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from delineo.errors import InputError
from delineo.io.atomic import write_text_atomic
from delineo.io.dicom import align_to_grid, is_dicom_image
from delineo.io.files import image_suffix, write_image
from delineo.io.image import Image

log = logging.getLogger(__name__)

FORMATS = ("nifti", "nrrd", "dicom-seg", "rtstruct", "overlay")
DICOM_FORMATS = ("dicom-seg", "rtstruct", "overlay")

#: Colours by (part of) a label name: clinical convention first (liver green, lesion red).
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    "lesion": (255, 0, 0),
    "tumour": (255, 0, 0),
    "tumor": (255, 0, 0),
    "cancer": (255, 0, 0),
    "metasta": (255, 0, 0),
    "neoplasm": (255, 0, 0),
    "nodule": (255, 0, 0),
    "gtv": (255, 0, 0),
    "ctv": (255, 128, 0),
    "ptv": (0, 128, 255),
    "liver": (0, 200, 0),
    "spleen": (157, 108, 162),
    "kidney": (185, 102, 83),
    "pancrea": (249, 180, 111),
    "stomach": (216, 132, 105),
    "gallbladder": (139, 150, 98),
    "aorta": (224, 20, 64),
    "vena": (0, 151, 206),
    "heart": (206, 110, 84),
    "lung": (197, 165, 145),
    "bone": (241, 214, 145),
    "vertebra": (241, 214, 145),
    "bladder": (222, 154, 132),
    "prostate": (230, 158, 140),
    "brain": (250, 250, 225),
    "hippocampus": (220, 216, 20),
    "anterior": (220, 216, 20),
    "posterior": (0, 180, 220),
    "edema": (255, 255, 0),
    "oedema": (255, 255, 0),
    "necro": (128, 0, 255),
}

#: Fixed palette for labels whose names say nothing (distinct, visible on grey CT/MR).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 200, 0),
    (255, 0, 0),
    (0, 120, 255),
    (255, 200, 0),
    (200, 0, 255),
    (0, 220, 220),
    (255, 120, 0),
    (255, 0, 150),
    (120, 255, 120),
    (150, 100, 50),
    (120, 120, 255),
    (255, 150, 150),
)


def default_color(value: int, name: str | None = None) -> tuple[int, int, int]:
    """Colour of one label: by name keyword when it has one, else the fixed palette by value."""
    if name:
        key = name.lower()
        for word, color in NAMED_COLORS.items():
            if word in key:
                return color
    return PALETTE[(int(value) - 1) % len(PALETTE)]


def resolve_colors(
    labels: Mapping[int, str], colors: Mapping[int, tuple[int, int, int]] | None = None
) -> dict[int, tuple[int, int, int]]:
    """Colour for every label in ``labels``: the given ones, the default table for the rest."""
    out = {}
    for value, name in labels.items():
        given = (colors or {}).get(int(value))
        if given is not None:
            rgb = tuple(int(c) for c in given)
            if len(rgb) != 3 or any(c < 0 or c > 255 for c in rgb):
                raise InputError(f"colour for label {value} ({name}) must be three integers 0-255, got {given!r}.")
            out[int(value)] = rgb  # type: ignore[assignment]
        else:
            out[int(value)] = default_color(int(value), name)
    return out


def normalise_name(name: str) -> str:
    """Comparable form of a structure name: 'Liver ', 'liver' and 'LIVER' are the same label."""
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())


def label_values(mask: Image, what: str = "mask") -> list[int]:
    """Sorted non-zero label values of an integer mask (InputError for a non-label array)."""
    array = np.asarray(mask.array)
    if array.ndim != 3:
        raise InputError(f"{what}: a 3D label mask is expected, got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{what}: label mask has non-integer values; pass labels, not probabilities.")
    values = np.unique(array)
    if values.size and values.min() < 0:
        raise InputError(f"{what}: label mask has negative values.")
    return [int(v) for v in values if v != 0]


def label_names(values: list[int], labels: Mapping[int, str] | None, what: str = "mask") -> dict[int, str]:
    """Name of every present label; unnamed labels get 'label_<value>' (logged)."""
    labels = {int(k): str(v) for k, v in (labels or {}).items()}
    out = {}
    for value in values:
        name = labels.get(value)
        if not name:
            name = f"label_{value}"
            log.warning("%s: label %d has no name; writing it as %r.", what, value, name)
        out[value] = name
    return out


def dicom_export_labels(
    mask: Image,
    source: Image,
    out_path: Path,
    labels: Mapping[int, str] | None,
    colors: Mapping[int, tuple[int, int, int]] | None,
    kind: str,
) -> tuple[Image, list[int], dict[int, str], dict[int, tuple[int, int, int]]]:
    """What every DICOM export (``kind``: "a DICOM-SEG", "an RTSTRUCT") checks and resolves
    before it writes: a DICOM source series to reference, the mask on its grid, at least one
    labelled voxel, a name and a colour per label present. Returns (mask, values, names, colours)."""
    if not is_dicom_image(source):
        raise InputError(f"{out_path}: {kind} needs a DICOM source series to reference.")
    mask = align_to_grid(mask, source, what="mask")
    values = label_values(mask, str(out_path))
    if not values:
        raise InputError(f"{out_path}: the mask is empty; {kind} needs at least one labelled voxel.")
    names = label_names(values, labels, str(out_path))
    return mask, values, names, resolve_colors(names, colors)


def write_prediction(
    mask: Image,
    source: Image,
    out: str | Path,
    fmt: str,
    labels: Mapping[int, str],
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model_name: str = "delineo",
    anonymise: bool = False,
    patient_data: bool = False,
) -> Path:
    """Write ``mask`` (on ``source``'s grid) as ``fmt``; return the written file or folder.

    ``out`` is the file for nifti/nrrd/dicom-seg/rtstruct (the usual suffix is added when it is
    missing) and the folder for the overlay series. NIfTI/NRRD sidecars hold the source's UIDs
    only, no patient attributes, unless ``patient_data`` (an explicit opt-in: a NIfTI file
    travels further than a PACS record); ``anonymise`` leaves out the UIDs as well; DICOM outputs must carry them to attach to the
    study, so asking for both is an error rather than a silent leak.
    """
    fmt = str(fmt).lower().replace("_", "-")
    aliases = {"nii": "nifti", "nii.gz": "nifti", "seg": "dicom-seg", "dicomseg": "dicom-seg", "rt": "rtstruct"}
    fmt = aliases.get(fmt, fmt)
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r} (choose one of {', '.join(FORMATS)}).")
    out = Path(out)
    labels = {int(k): str(v) for k, v in labels.items()}
    if fmt in ("nifti", "nrrd"):
        suffixes = (".nii.gz", ".nii") if fmt == "nifti" else (".nrrd",)
        if image_suffix(out) not in suffixes:
            out = out.with_name(out.name + suffixes[0])
        values = label_values(mask, str(out))
        dtype = np.uint8 if not values or max(values) < 256 else np.uint16
        on_grid = _on_source_grid(mask, source)
        _write_sidecar(out, on_grid, source, labels, model_name, anonymise, patient_data)
        write_image(on_grid, out, dtype=dtype)  # last: a mask on disk always has its sidecar
        log.info("Wrote %s prediction to %s.", fmt, out)
        return out

    from delineo.io.dicom import is_dicom_image

    if not is_dicom_image(source):
        raise InputError(
            f"{source.meta.get('path', 'source image')}: format {fmt} needs a DICOM source series to "
            "reference; read the input from a DICOM folder or write nifti/nrrd instead."
        )
    if anonymise:
        raise InputError(
            f"{out}: format {fmt} must reference the patient's DICOM study, so it cannot be anonymised; "
            "write nifti/nrrd with anonymisation instead."
        )
    if fmt == "dicom-seg":
        from delineo.io.dicom_seg import write_dicom_seg

        if not out.suffix:
            out = out.with_name(out.name + ".dcm")
        return write_dicom_seg(mask, source, out, labels, colors, model_name)
    if fmt == "rtstruct":
        from delineo.io.rtstruct import write_rtstruct

        if not out.suffix:
            out = out.with_name(out.name + ".dcm")
        return write_rtstruct(mask, source, out, labels, colors, model_name)
    from delineo.io.overlay import write_overlay_series

    return write_overlay_series(mask, source, out, colors, labels=labels, model_name=model_name)


def _on_source_grid(mask: Image, source: Image) -> Image:
    if mask.same_grid(source):
        return mask
    from delineo.io.dicom import align_to_grid

    return align_to_grid(mask, source, what="mask")


def sidecar_path(path: str | Path) -> Path:
    """``case.nii.gz`` -> ``case.json``: the BIDS-style sidecar next to an image file."""
    path = Path(path)
    suffix = image_suffix(path)
    name = path.name[: len(path.name) - len(suffix)] if suffix else path.stem
    return path.with_name(name + ".json")


def _write_sidecar(
    out: Path, mask: Image, source: Image, labels: Mapping[int, str], model_name: str, anonymise: bool,
    patient_data: bool = False,
) -> Path:
    """JSON next to a NIfTI/NRRD output: labels, model and (unless anonymised) the source's UIDs;
    patient attributes and the source path (which often names the patient) only on request."""
    from delineo import __version__ as version  # noqa: PLC0415

    info: dict = {
        "generator": f"Delineo {version}",
        "model": model_name,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "labels": {"0": "background", **{str(k): v for k, v in sorted(labels.items())}},
        "anonymised": bool(anonymise),
        "patient_data": bool(patient_data and not anonymise),
    }
    if not anonymise:
        meta = source.meta
        source_info = {
            "SeriesInstanceUID": meta.get("series_uid"),
            "StudyInstanceUID": meta.get("study_uid"),
            "FrameOfReferenceUID": meta.get("frame_of_reference_uid"),
            "SeriesNumber": meta.get("series_number"),
            "SeriesDescription": meta.get("series_description"),
            "Modality": source.modality or None,
        }
        if patient_data:
            source_info.update({"path": meta.get("path"), **(meta.get("patient") or {})})
        info["source"] = {k: v for k, v in source_info.items() if v not in (None, "")}
    path = sidecar_path(out)
    write_text_atomic(path, json.dumps(info, indent=1) + "\n")
    return path
