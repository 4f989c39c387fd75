"""The SIIM-ACR pneumothorax data (one 2D DICOM per image, masks in ``train-rle.csv``) as an
MSD folder, so the pneumothorax recipe trains on it like on any other dataset.

Each image becomes ``imagesTr/<ImageId>_0000.nii.gz`` (the DICOM pixels in modality units,
MONOCHROME1 inverted, its pixel spacing) and ``labelsTr/<ImageId>.nii.gz`` (the union of the
image's run-length rows, on the same grid), plus ``dataset.json`` and ``views.csv``
(ImageId, ViewPosition: PA and AP films differ, and the challenge's solutions looked at both).
``ImageId`` is the DICOM file's name without ``.dcm`` (the SOP Instance UID in the challenge).
The folder is built under a temporary name and renamed at the end: nothing partial is left.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

from delineo.errors import InputError
from delineo.io.files import write_image
from delineo.io.planar import from_rows_cols, read_dicom_image
from delineo.io.rle import Flavour, read_rle_csv

log = logging.getLogger(__name__)


def convert_siim(dicom_dir: str | Path, rle_csv: str | Path, out: str | Path, flavour: Flavour = "relative",
                 max_images: int | None = None) -> Path:
    """Write the images listed in ``rle_csv`` and found under ``dicom_dir`` as an MSD folder."""
    dicom_dir, out = Path(dicom_dir), Path(out)
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new folder.")
    files = {p.stem: p for p in dicom_dir.rglob("*.dcm")} if dicom_dir.is_dir() else {}
    if not files:
        raise InputError(f"{dicom_dir}: no .dcm files found.")
    import pydicom

    ids, shapes = [], {}
    for image_id in _csv_ids(rle_csv):
        if image_id in files and image_id not in shapes:
            ds = pydicom.dcmread(files[image_id], stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            shapes[image_id] = (int(ds.Rows), int(ds.Columns))
            ids.append(image_id)
            if max_images and len(ids) >= max_images:
                break
    if not ids:
        raise InputError(f"{rle_csv}: none of its ImageIds has a DICOM file under {dicom_dir}.")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    views = []
    try:
        for shape in sorted(set(shapes.values())):
            group = [i for i in ids if shapes[i] == shape]
            masks = read_rle_csv(rle_csv, shape, flavour)
            for image_id in group:
                image = read_dicom_image(files[image_id])
                label = image.with_array(from_rows_cols(masks[image_id]))
                write_image(image, tmp / "imagesTr" / f"{image_id}_0000.nii.gz")
                write_image(label, tmp / "labelsTr" / f"{image_id}.nii.gz")
                views.append((image_id, image.meta.get("ViewPosition", "")))
        meta = {"name": "siim-acr-pneumothorax", "modality": {"0": "DX"},
                "labels": {"0": "background", "1": "pneumothorax"}, "numTraining": len(ids), "file_ending": ".nii.gz"}
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
        with open(tmp / "views.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("ImageId", "ViewPosition"), *sorted(views)])
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    missing = len(set(_csv_ids(rle_csv))) - len(ids)
    if missing and not max_images:
        log.warning("%s: %d ImageId(s) have no DICOM file under %s; left out", rle_csv, missing, dicom_dir)
    return out


def _csv_ids(path: str | Path) -> list[str]:
    """ImageIds of the CSV in file order (first occurrence)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        col = next((f for f in (reader.fieldnames or []) if f.strip().lower() in ("imageid", "image_id")), None)
        if col is None:
            raise InputError(f"{path}: needs an ImageId column.")
        seen: dict[str, None] = {}
        for row in reader:
            seen.setdefault((row.get(col) or "").strip(), None)
    return [i for i in seen if i]
