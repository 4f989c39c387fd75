"""Turn a folder of clinical DICOM (images + SEG/RTSTRUCT annotations) into a training dataset.

Hospitals hand over studies as DICOM with the delineations as DICOM-SEG or RTSTRUCT objects;
training wants the Medical Segmentation Decathlon layout (``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``, ``dataset.json``). Each annotation is matched to the image series it
references (by SeriesInstanceUID, else by an unambiguous frame of reference) and rasterised on
that series' grid, so image and label always share one geometry.

Label values are consistent across cases: structures are matched by name (case and punctuation
ignored) against ``labels`` or, when none is given, numbered 1..N in order of first appearance.
Case names are neutral (``case_001``); the case -> patient/study/series table (``sources.json``)
is written only when not anonymising.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from delineo.errors import InputError
from delineo.io.atomic import write_text_atomic
from delineo.io.dicom import SeriesInfo, _read_header, fill_missing_uids, list_series, read_series
from delineo.io.export import normalise_name
from delineo.io.files import write_image
from delineo.io.image import Image

log = logging.getLogger(__name__)

_MSD_MODALITY = {"MR": "MRI", "PT": "PET"}


def _referenced_series(ds) -> list[str]:
    """Series UIDs an SEG or RTSTRUCT header says it was drawn on."""
    uids: list[str] = []
    for item in ds.get("ReferencedSeriesSequence", []):  # SEG
        uids.append(str(item.get("SeriesInstanceUID", "")))
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):  # RTSTRUCT
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                uids.append(str(series.get("SeriesInstanceUID", "")))
    return [u for u in uids if u]


def _structure_names(ds) -> list[str]:
    if str(ds.get("Modality", "")) == "SEG":
        return [str(s.get("SegmentLabel", "") or f"segment_{int(s.SegmentNumber)}") for s in ds.get("SegmentSequence", [])]
    return [str(r.get("ROIName", "") or f"roi_{int(r.ROINumber)}") for r in ds.get("StructureSetROISequence", [])]


def _frames_of_reference(ds) -> set[str]:
    found = {str(ds.get("FrameOfReferenceUID", "") or "")}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        found.add(str(frame.get("FrameOfReferenceUID", "") or ""))
    return {f for f in found if f}


def convert_dicom_collection(
    in_dir: str | Path,
    out_dir: str | Path,
    labels: Mapping[int, str] | None = None,
    *,
    name: str = "Dataset",
    anonymise: bool = False,
    prefix: str = "case",
) -> Path:
    """Write every annotated image series under ``in_dir`` as an MSD dataset in ``out_dir``.

    ``labels`` ({value: name}) fixes the label values; structures not named there are dropped
    (logged). Returns ``out_dir``. An image series with several annotations uses the first (by
    file path; logged); annotations whose image series is not in ``in_dir`` are skipped (logged).
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    infos = list_series(in_dir)
    images = {s.uid: s for s in infos if s.is_image}
    by_frame: dict[str, list[SeriesInfo]] = {}
    for info in images.values():
        by_frame.setdefault(info.frame_of_reference_uid, []).append(info)

    annotations: dict[str, tuple[Path, str, list[str]]] = {}
    for info in infos:
        if info.modality not in ("SEG", "RTSTRUCT"):
            continue
        for path in info.files:
            ds = _read_header(path)
            if ds is None:
                continue
            fill_missing_uids(ds, path)
            target = next((u for u in _referenced_series(ds) if u in images), None)
            if target is None:
                candidates = [s for f in _frames_of_reference(ds) for s in by_frame.get(f, [])]
                if len(candidates) == 1:
                    target = candidates[0].uid
            if target is None:
                log.warning("%s: %s whose image series is not in %s (or is ambiguous); skipped.", path, info.modality, in_dir)
                continue
            if target in annotations:
                log.warning("%s: image series %s already has annotation %s; this one is skipped.", path, target, annotations[target][0])
                continue
            annotations[target] = (path, info.modality, _structure_names(ds))
    if not annotations:
        raise InputError(f"{in_dir}: no DICOM-SEG or RTSTRUCT referencing an image series in that folder was found.")

    cases = sorted(annotations, key=lambda u: (images[u].patient_id, images[u].study_uid, images[u].number or 0, u))
    if labels:
        table = {int(k): str(v) for k, v in labels.items()}
    else:
        table, seen = {}, {}
        for uid in cases:
            for structure in annotations[uid][2]:
                key = normalise_name(structure)
                if key not in seen:
                    seen[key] = len(seen) + 1
                    table[seen[key]] = structure
        log.info("%s: label values by first appearance: %s.", in_dir, table)
    if any(v <= 0 for v in table):
        raise InputError(f"labels: values must be positive integers (0 is background), got {sorted(table)}.")

    training, sources, modalities = [], {}, []
    for n, uid in enumerate(cases, start=1):
        case = f"{prefix}_{n:03d}"
        info = images[uid]
        path, kind, _ = annotations[uid]
        image = read_series(info, label=f"{in_dir} (series {uid})")
        if kind == "SEG":
            from delineo.io.dicom_seg import read_dicom_seg

            mask = read_dicom_seg(path, image, labels=table)
        else:
            from delineo.io.rtstruct import read_rtstruct

            mask = read_rtstruct(path, image, labels=table)
        write_image(_compact(image), out_dir / "imagesTr" / f"{case}_0000.nii.gz")
        dtype = np.uint8 if max(table) < 256 else np.uint16
        write_image(mask, out_dir / "labelsTr" / f"{case}.nii.gz", dtype=dtype)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        modalities.append(image.modality)
        sources[case] = {
            "PatientID": info.patient_id,
            "StudyInstanceUID": info.study_uid,
            "SeriesInstanceUID": uid,
            "annotation": str(path),
            "annotation_type": kind,
        }
        log.info("%s: %s from a %s series with %d slices.", case, kind, image.modality, image.spatial_shape[2])
    if len(set(modalities)) > 1:
        log.warning("%s: cases mix modalities %s; dataset.json lists the first.", in_dir, sorted(set(modalities)))
    dataset: dict[str, Any] = {
        "name": name,
        "description": "Converted from DICOM by Delineo" + ("" if anonymise else f" ({in_dir.name})"),
        "tensorImageSize": "3D",
        "modality": {"0": _MSD_MODALITY.get(modalities[0], modalities[0] or "unknown")},
        "labels": {"0": "background", **{str(k): v for k, v in sorted(table.items())}},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    if not anonymise:
        write_text_atomic(out_dir / "sources.json", json.dumps(sources, indent=1) + "\n")
    write_text_atomic(out_dir / "dataset.json", json.dumps(dataset, indent=1) + "\n")
    log.info("Wrote %d cases to %s.", len(training), out_dir)
    return out_dir


def _compact(image: Image) -> Image:
    """int16 instead of float32 when the values are whole numbers in range (CT in HU): half the size."""
    array = image.array
    if np.issubdtype(array.dtype, np.floating) and array.size:
        lo, hi = float(array.min()), float(array.max())
        if -32768 <= lo and hi <= 32767 and np.array_equal(array, np.round(array)):
            return image.with_array(array.astype(np.int16))
    return image
