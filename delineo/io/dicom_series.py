"""Write a volume as a new DICOM image series (one file per slice) with exact geometry.

Why: a DICOM-SEG or RTSTRUCT must reference DICOM images, and a scan that arrived as NIfTI,
NRRD or MHA has none. To put its mask into the archive, the scan itself is written as a derived
series (new study, series and frame-of-reference UIDs) and the SEG / RTSTRUCT reference that
series; both go to the PACS together.

Geometry comes from the affine alone (the conventions of :mod:`delineo.io.dicom`, which reads
the series back to the same affine): ``i`` runs along a row (ImageOrientationPatient's first
vector, PixelSpacing[1]), ``j`` down the columns (second vector, PixelSpacing[0]), slice ``k``
sits at ImagePositionPatient = affine_LPS @ (0, 0, k). A slice axis that is not perpendicular
to the slices (a sheared grid) cannot be a DICOM series of parallel slices and is refused.

Pixel values: integers in the int16 range are stored as they are; anything else is stored as
unsigned 16-bit with RescaleSlope / RescaleIntercept mapping back to the values (within
slope / 2). CT is written as CT Image Storage (HU through the rescale), MR as MR Image Storage,
anything else as Secondary Capture ('OT') carrying the same geometry attributes.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from delineo.errors import InputError
from delineo.io.dicom import file_meta_for, lps_from_ras
from delineo.io.image import Image

log = logging.getLogger(__name__)

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "OT": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
MODALITIES = tuple(SOP_CLASSES)


def slice_geometry(affine_ras: np.ndarray, where: str = "image") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(LPS affine, row direction, column direction, spacing) of a grid, or InputError when its
    axes cannot be DICOM slices (in-plane axes not perpendicular, or a sheared slice axis)."""
    lps = lps_from_ras(np.asarray(affine_ras, dtype=np.float64))
    axes = lps[:3, :3]
    spacing = np.sqrt((axes ** 2).sum(axis=0))
    if np.any(spacing <= 0) or not np.all(np.isfinite(axes)):
        raise InputError(f"{where}: the affine has a zero or undefined voxel size, so slices cannot be placed.")
    unit = axes / spacing
    row_dir, col_dir, slice_dir = unit[:, 0], unit[:, 1], unit[:, 2]
    if abs(float(row_dir @ col_dir)) > 1e-4:
        raise InputError(f"{where}: the in-plane axes are not perpendicular (sheared grid); "
                         "DICOM slices need a rectangular pixel grid.")
    normal = np.cross(row_dir, col_dir)
    if abs(abs(float(normal @ slice_dir)) - 1.0) > 1e-4:
        raise InputError(f"{where}: the slice axis is not perpendicular to the slices (sheared grid); "
                         "resample the image to an unsheared grid before exporting it as DICOM.")
    return lps, row_dir, col_dir, spacing


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS) with as many significant digits as fit."""
    for digits in range(12, 0, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return "0" if text == "-0" else text
    raise ValueError(value)


def _pixels(array: np.ndarray, where: str) -> tuple[np.ndarray, str, str, bool]:
    """(stored pixels, slope, intercept as written, signed) for ``array``; the rescale values
    are the ones the file holds (DS strings), so stored * slope + intercept is within slope / 2."""
    if not np.all(np.isfinite(array)):
        raise InputError(f"{where}: the image has NaN or infinite voxels; they cannot be stored in DICOM.")
    lo, hi = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.equal(np.mod(array, 1), 0)))
    if integral and lo >= -32768 and hi <= 32767:
        return array.astype(np.int16), "1", "0", True
    slope_s, intercept_s = _ds((hi - lo) / 65534.0 if hi > lo else 1.0), _ds(lo)
    slope, intercept = float(slope_s), float(intercept_s)
    stored = np.clip(np.rint((array.astype(np.float64) - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope_s, intercept_s, False


def write_dicom_series(
    image: Image,
    out_dir: str | Path,
    modality: str = "OT",
    *,
    patient_name: str = "",
    patient_id: str = "",
    study_description: str = "",
    series_description: str = "Delineo derived series",
    series_number: int = 1,
    study_uid: Optional[str] = None,
) -> Path:
    """Write ``image`` (3D) as a new series of ``modality`` (CT, MR or OT) into ``out_dir``.

    Every file gets new UIDs (``study_uid`` to join an existing study). The folder is written
    under a temporary name and renamed into place, so a crash never leaves half a series;
    ``out_dir`` must not exist yet or be empty.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from delineo import __version__

    out_dir = Path(out_dir)
    where = str(image.meta.get("path", out_dir))
    modality = str(modality or "OT").upper()
    if modality not in SOP_CLASSES:
        raise InputError(f"{where}: modality '{modality[:16]}' cannot be written (choose one of {', '.join(MODALITIES)}).")
    array = np.asarray(image.array)
    if array.ndim != 3:
        raise InputError(f"{where}: a 3D image is needed for a DICOM series, got shape {array.shape}.")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not empty; a DICOM series is written into a new folder.")
    lps, row_dir, col_dir, spacing = slice_geometry(image.affine, where)
    stored, slope, intercept, signed = _pixels(array, where)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    window_lo, window_hi = (float(v) for v in np.percentile(array[:: max(1, array.shape[0] // 64)], [0.5, 99.5]))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for k in range(array.shape[2]):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES[modality], generate_uid()
            ds.PatientName, ds.PatientID = patient_name[:64], patient_id[:64]
            ds.PatientBirthDate, ds.PatientSex = "", ""
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
            ds.StudyDescription = study_description[:64]
            ds.SeriesDescription = series_description[:64]
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, int(series_number), k + 1
            ds.Manufacturer = "Delineo"
            ds.SoftwareVersions = f"delineo {__version__}"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.DerivationDescription = "Written by Delineo from an image file (NIfTI/NRRD/MHA), geometry from its affine"
            ds.PositionReferenceIndicator = ""
            ds.PatientOrientation = ""
            ds.BurnedInAnnotation = "NO"
            if modality == "OT":
                ds.ConversionType = "WSD"
            if modality == "CT":
                ds.KVP = ""
                ds.AcquisitionNumber = 1
                ds.RescaleType = "HU"
            if modality == "MR":
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
                ds.MRAcquisitionType = "3D"
                ds.EchoTime = ds.RepetitionTime = ds.EchoTrainLength = ""
                ds.ImagingFrequency = ds.MagneticFieldStrength = ""
            position = lps @ np.array([0.0, 0.0, float(k), 1.0])
            ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (j), column spacing (i)
            ds.SliceThickness = _ds(spacing[2])
            ds.SpacingBetweenSlices = _ds(spacing[2])
            ds.SliceLocation = _ds(float(position[:3] @ np.cross(row_dir, col_dir)))
            ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[0])
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1 if signed else 0
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            ds.WindowCenter, ds.WindowWidth = _ds((window_lo + window_hi) / 2), _ds(max(window_hi - window_lo, 1.0))
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = j, columns = i
            ds.file_meta = file_meta_for(ds)
            pydicom.dcmwrite(tmp / f"IM{k + 1:05d}.dcm", ds, enforce_file_format=True)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("Wrote %s series of %d slices (%s) to %s.", modality, array.shape[2], "x".join(map(str, array.shape)), out_dir)
    return out_dir
