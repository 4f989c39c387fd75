"""Exports of an approved mask: NIfTI, or DICOM-SEG / RTSTRUCT, also for studies that did not
arrive as DICOM.

A SEG or RTSTRUCT must reference DICOM images. For a DICOM study those are the uploaded series;
for a NIfTI / NRRD / MHA study the scan is first written as a derived DICOM series
(:func:`delineo.io.dicom_series.write_dicom_series`: new UIDs, geometry from the affine, the
modality the user picked, 'OT' by default because a file's modality is only guessed) and the
SEG / RTSTRUCT reference that series. The series is kept in the study folder and reused, so a SEG
and an RTSTRUCT of the same study reference the same images; the download is one ZIP with the
series and the object, ready to send to the archive together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Mapping

from delineo.errors import InputError
from delineo.io.image import Image
from delineo.serve.store import Workspace

log = logging.getLogger(__name__)

SUFFIX = {"nifti": ".nii.gz", "dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}


def derived_series(ws: Workspace, sid: str, source: Image, modality: str, patient_name: str = "",
                   patient_id: str = "") -> Path:
    """The study's scan as a DICOM series folder (written once per modality and patient fields)."""
    from delineo.io.dicom_series import MODALITIES, write_dicom_series

    modality = (modality or "OT").upper()
    patient_name, patient_id = (re.sub(r"[\\\x00-\x1f]", "", v)[:64] for v in (patient_name, patient_id))
    if modality not in MODALITIES:
        raise InputError(f"export modality '{modality[:16]}' is not one of {', '.join(MODALITIES)}.")
    key = hashlib.sha1(json.dumps([modality, patient_name, patient_id]).encode()).hexdigest()[:16]
    folder = ws.study_dir(sid) / "derived" / key
    if not (folder.is_dir() and any(folder.glob("*.dcm"))):
        study = ws.study(sid)
        write_dicom_series(source, folder, modality, patient_name=patient_name,
                           patient_id=patient_id or f"DELINEO-{sid}",
                           study_description=f"Delineo viewer: {study.get('name', sid)}"[:64],
                           series_description=f"{study.get('name', 'scan')} (from {study.get('kind', 'file')})"[:64])
    return folder


def export_mask(ws: Workspace, sid: str, mid: str, version: int, fmt: str, mask: Image, source: Image,
                labels: Mapping[int, str], model_name: str, modality: str = "", patient_name: str = "",
                patient_id: str = "") -> Path:
    """Write ``mask`` (on ``source``'s grid) in ``fmt`` into the study's exports; the file to
    download (a ZIP with the derived series for DICOM formats of a non-DICOM study)."""
    from delineo.io.atomic import atomic_path
    from delineo.io.dicom import is_dicom_image, read_dicom_series
    from delineo.io.export import write_prediction

    out = ws.export_dir(sid) / f"{mid}_v{version:03d}{SUFFIX[fmt]}"
    if fmt == "nifti" or is_dicom_image(source):
        return write_prediction(mask, source, out, fmt, labels, model_name=model_name)
    folder = derived_series(ws, sid, source, modality, patient_name, patient_id)
    series = read_dicom_series(folder)
    written = write_prediction(mask, series, out, fmt, labels, model_name=model_name)
    archive = out.with_name(out.name[: -len(".dcm")] + "_with_series.zip")
    with atomic_path(archive, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.glob("*.dcm")):
                zf.write(f, f"series/{f.name}")
            zf.write(written, written.name)
    log.info("%s: %s with its derived %s series in %s.", sid, fmt, series.modality, archive)
    return archive
