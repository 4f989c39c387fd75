"""RT Structure Sets (RTSTRUCT) in and out: the contour format of radiotherapy planning systems.

Built with pydicom directly (highdicom has no RTSTRUCT support). Contours are closed planar
polygons in patient (LPS) millimetres, one or more per ROI per slice:

* writing traces each label on each slice with marching squares (contourpy, which ships with
  matplotlib) at the 0.5 iso-line of the binary mask, so every vertex lies between pixel centres;
  holes become separate contours;
* reading rasterises each polygon onto the reference grid (pixel centres inside the polygon,
  matplotlib.path) and combines the contours of a slice with the even-odd (XOR) rule, the
  convention of most planning systems, so holes written as inner contours come back as holes.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from delineo.errors import InputError, short_reason
from delineo.io.atomic import atomic_path
from delineo.io.dicom import (PATIENT_STUDY_KEYWORDS, file_meta_for, lps_from_ras,
                               source_datasets)
from delineo.io.export import dicom_export_labels, normalise_name
from delineo.io.image import Image

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, still expected)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_rtstruct(
    path: str | Path, reference: Image, labels: Mapping[int, str] | None = None
) -> Image:
    """Rasterise the ROIs of an RTSTRUCT onto ``reference``'s grid as one label image.

    Label values are 1..N for the ROIs in StructureSetROISequence order, unless ``labels``
    ({value: name}) is given: then ROIs are matched by name (case and punctuation ignored) and
    others are dropped (logged). Names are returned in ``meta['labels']`` ({value: ROI name}).
    Where ROIs overlap, the later value wins (logged).
    """
    import pydicom

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(f"{path}: not a readable DICOM file ({short_reason(exc)}).") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise InputError(f"{path}: not an RT Structure Set (Modality {ds.get('Modality', '?')}).")
    rois = [(int(r.ROINumber), str(r.get("ROIName", "") or f"roi_{int(r.ROINumber)}"), str(r.get("ReferencedFrameOfReferenceUID", "") or ""))
            for r in ds.get("StructureSetROISequence", [])]
    if not rois:
        raise InputError(f"{path}: RT Structure Set without ROIs (StructureSetROISequence is empty).")
    ref_for = reference.meta.get("frame_of_reference_uid")
    for number, name, roi_for in rois:
        if ref_for and roi_for and roi_for != ref_for:
            raise InputError(
                f"{path}: ROI {name!r} is in frame of reference {roi_for}, not the reference image's "
                f"{ref_for} (the contours belong to another acquisition)."
            )
    if labels:
        by_name = {normalise_name(n): int(v) for v, n in labels.items()}
        values = {}
        for number, name, _ in rois:
            value = by_name.get(normalise_name(name))
            if value is None:
                log.warning("%s: ROI %r matches no label in %s; dropped.", path, name, dict(labels))
            else:
                values[number] = value
        names = {values[n]: labels[values[n]] for n, _, _ in rois if n in values}
    else:
        values = {number: idx for idx, (number, _, _) in enumerate(rois, start=1)}
        names = {idx: name for idx, (_, name, _) in enumerate(rois, start=1)}

    contours_by_roi: dict[int, list[Any]] = {}
    for item in ds.get("ROIContourSequence", []):
        contours_by_roi[int(item.ReferencedROINumber)] = list(item.get("ContourSequence", []))

    shape = reference.spatial_shape
    dtype = np.uint8 if max(values.values(), default=0) < 256 else np.uint16
    out = np.zeros(shape, dtype=dtype)
    to_index = np.linalg.inv(reference.affine) @ lps_from_ras(np.eye(4))  # LPS mm -> voxel index
    overlap = 0
    for number, name, _ in rois:
        value = values.get(number)
        if value is None:
            continue
        roi_mask = np.zeros(shape, dtype=bool)
        for contour in contours_by_roi.get(number, []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
            if kind != "CLOSED_PLANAR":
                log.info("%s: ROI %r has a %s contour; only closed planar contours are rasterised.", path, name, kind)
                continue
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            if len(points) < 3:
                continue
            ijk = (to_index @ np.c_[points, np.ones(len(points))].T)[:3].T
            k = float(np.mean(ijk[:, 2]))
            kk = int(round(k))
            if np.ptp(ijk[:, 2]) > 0.1 or abs(k - kk) > 0.25:
                log.warning("%s: a contour of ROI %r does not lie on a slice of the reference grid; skipped.", path, name)
                continue
            if not 0 <= kk < shape[2]:
                log.warning("%s: a contour of ROI %r lies outside the reference image; skipped.", path, name)
                continue
            roi_mask[:, :, kk] ^= _polygon_mask(ijk[:, :2], shape[:2])
        overlap += int(np.count_nonzero(roi_mask & (out > 0)))
        out[roi_mask] = value
    if overlap:
        log.warning("%s: %d voxels belong to several ROIs; the later ROI was kept.", path, overlap)
    meta = {
        "path": str(path),
        "labels": dict(sorted(names.items())),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "referenced_series_uid": reference.meta.get("series_uid"),
    }
    return Image(out, reference.affine.copy(), modality="RTSTRUCT", meta=meta)


def _polygon_mask(ij: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (i, j) whose centres lie inside the polygon ``ij`` (in voxel index units)."""
    from matplotlib.path import Path as MplPath

    mask = np.zeros(shape, dtype=bool)
    lo = np.maximum(np.floor(ij.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ij.max(axis=0)).astype(int), np.asarray(shape) - 1)
    if np.any(hi < lo):
        return mask
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    centres = np.c_[ii.ravel(), jj.ravel()]
    inside = MplPath(ij).contains_points(centres).reshape(ii.shape)
    mask[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = inside
    return mask


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def trace_contours(slice_mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours (arrays of (i, j) vertices, not repeating the first) of a 2D binary mask.

    Marching squares at the 0.5 level on the zero-padded mask, so contours are always closed;
    outer boundaries and hole boundaries both come out (holes are handled by even-odd filling).
    Collinear vertices are dropped to keep the files small without changing the polygon.
    """
    import contourpy

    padded = np.pad(slice_mask.astype(np.float64), 1)
    # contourpy wants z[y, x]: y = j (rows of the image), x = i (columns).
    gen = contourpy.contour_generator(z=padded.T, line_type=contourpy.LineType.Separate, corner_mask=True)
    out = []
    for line in gen.lines(0.5):
        pts = np.asarray(line, dtype=np.float64) - 1.0  # (x, y) = (i, j), undoing the padding
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(pts) < 3:
            continue
        prev = np.roll(pts, 1, axis=0)
        nxt = np.roll(pts, -1, axis=0)
        cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
        keep = np.abs(cross) > 1e-9
        if keep.sum() >= 3:
            pts = pts[keep]
        out.append(pts)
    return out


def write_rtstruct(
    mask: Image,
    source: Image,
    out_path: str | Path,
    labels: Mapping[int, str],
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model_name: str = "delineo",
    *,
    series_number: int | None = None,
    series_description: str | None = None,
) -> Path:
    """Write ``mask`` as an RT Structure Set referencing ``source`` (one ROI per label present).

    Each ROI is AUTOMATIC, its generation algorithm naming Delineo and ``model_name``; contours
    are CLOSED_PLANAR, one or more per slice, each referencing its slice's SOP instance.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    from delineo import __version__

    out_path = Path(out_path)
    mask, values, names, rgb = dicom_export_labels(mask, source, out_path, labels, colors, "an RTSTRUCT")
    sources = source_datasets(source)
    first = sources[0]
    frame_uid = source.meta.get("frame_of_reference_uid") or str(first.get("FrameOfReferenceUID", "") or "")
    if not frame_uid:
        raise InputError(f"{source.meta.get('path')}: source series has no FrameOfReferenceUID, which an RTSTRUCT must reference.")
    sop_class = source.meta.get("sop_class_uid") or str(first.SOPClassUID)
    sop_uids = list(source.meta["sop_instance_uids"])
    now = _dt.datetime.now()

    ds = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # type 2: present, may be empty
    ds.StudyInstanceUID = source.meta.get("study_uid") or str(first.StudyInstanceUID)
    if "SpecificCharacterSet" in first:
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    number = source.meta.get("series_number")
    ds.SeriesNumber = series_number if series_number is not None else (int(number) + 950 if isinstance(number, int) else 950)
    ds.SeriesDescription = (series_description or f"Delineo {model_name} contours")[:64]
    ds.SeriesDate = ds.ContentDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.StructureSetTime = now.strftime("%H%M%S")
    ds.InstanceNumber = 1
    ds.Manufacturer = "Delineo"
    ds.ManufacturerModelName = model_name[:64]
    ds.SoftwareVersions = f"delineo {__version__}"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "DELINEO"
    ds.StructureSetName = f"Delineo {model_name}"[:64]
    ds.StructureSetDescription = f"Automatic contours by Delineo model {model_name}"

    contour_images = Sequence()
    for uid in sop_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        contour_images.append(item)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = source.meta["series_uid"]
    ref_series.ContourImageSequence = contour_images
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = _STUDY_COMPONENT_CLASS
    ref_study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame_uid
    ref_frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_frame])

    affine_lps = lps_from_ras(source.affine)
    array = np.asarray(mask.array)
    roi_seq, contour_seq, obs_seq = Sequence(), Sequence(), Sequence()
    for roi_number, value in enumerate(values, start=1):
        roi = Dataset()
        roi.ROINumber = roi_number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = names[value][:64]
        roi.ROIDescription = f"label {value}"
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"Delineo {__version__}, model {model_name}"[:64]
        roi_seq.append(roi)

        contours = Sequence()
        present = np.flatnonzero((array == value).any(axis=(0, 1)))
        for k in present:
            for ij in trace_contours(array[:, :, k] == value):
                idx = np.c_[ij, np.full(len(ij), float(k)), np.ones(len(ij))]
                xyz = (affine_lps @ idx.T)[:3].T
                contour = Dataset()
                image_ref = Dataset()
                image_ref.ReferencedSOPClassUID = sop_class
                image_ref.ReferencedSOPInstanceUID = sop_uids[k]
                contour.ContourImageSequence = Sequence([image_ref])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(xyz)
                contour.ContourData = [_ds(v) for v in xyz.ravel()]
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(rgb[value])
        roi_contour.ReferencedROINumber = roi_number
        roi_contour.ContourSequence = contours
        contour_seq.append(roi_contour)

        obs = Dataset()
        obs.ObservationNumber = roi_number
        obs.ReferencedROINumber = roi_number
        obs.RTROIInterpretedType = _interpreted_type(names[value])
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    ds.ApprovalStatus = "UNAPPROVED"

    ds.file_meta = file_meta_for(ds)
    with atomic_path(out_path, suffix=".dcm") as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    log.info("Wrote RTSTRUCT with %d ROIs to %s.", len(values), out_path)
    return out_path


def _ds(value: float) -> str:
    """Decimal string of at most 16 characters (DS), 0.1 micrometre precision."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _interpreted_type(name: str) -> str:
    """RTROIInterpretedType: GTV/CTV/PTV when the name says so, else ORGAN.

    Lesions are not called GTV on purpose: a gross tumour volume is a clinician's decision.
    """
    key = normalise_name(name)
    for kind in ("gtv", "ctv", "ptv"):
        if key.startswith(kind):
            return kind.upper()
    return "ORGAN"
