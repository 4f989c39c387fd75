"""RGB overlay series: the prediction burnt into the images, for any PACS viewer.

Not every PACS displays DICOM-SEG or RTSTRUCT; every one displays a Secondary Capture series.
Each source slice becomes one RGB image (8 bits per sample): the windowed greyscale with every
label blended in its colour at ``opacity``, in the same study as the source (patient and study
attributes copied), with a new series UID and new SOP instance UIDs. The slice geometry is kept
(ImagePositionPatient etc.) so viewers can link it to the source series when scrolling.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from delineo.errors import InputError
from delineo.io.dicom import (PATIENT_STUDY_KEYWORDS, align_to_grid, file_meta_for, is_dicom_image, lps_from_ras,
                               source_datasets)
from delineo.io.export import label_names, label_values, resolve_colors
from delineo.io.image import Image

log = logging.getLogger(__name__)

SECONDARY_CAPTURE_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: Default CT window (soft-tissue abdomen, HU): -160..240.
CT_WINDOW = (-160.0, 240.0)


def window_to_uint8(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map ``window`` = (low, high) linearly to 0..255, clipping outside."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise InputError(f"display window must have low < high, got {window}.")
    scaled = (np.asarray(array, dtype=np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def default_window(source: Image) -> tuple[float, float]:
    """CT: -160..240 HU; otherwise the 0.5-99.5 percentile range (robust min/max)."""
    if source.modality.upper() == "CT":
        return CT_WINDOW
    values = np.asarray(source.array, dtype=np.float32)
    low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
    if not high > low:
        low, high = float(values.min()), float(values.max()) + 1.0
    return float(low), float(high)


def blend(grey: np.ndarray, mask: np.ndarray, colors: Mapping[int, tuple[int, int, int]], opacity: float) -> np.ndarray:
    """RGB uint8 image (..., 3): ``grey`` with each label of ``mask`` blended in its colour."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for value, color in colors.items():
        on = mask == value
        if on.any():
            rgb[on] = (1.0 - opacity) * rgb[on] + opacity * np.asarray(color, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_overlay_series(
    mask: Image,
    source: Image,
    out_dir: str | Path,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    opacity: float = 0.4,
    window: tuple[float, float] | None = None,
    *,
    labels: Mapping[int, str] | None = None,
    model_name: str = "delineo",
    series_number: int | None = None,
) -> Path:
    """Write one RGB Secondary Capture file per slice of ``source`` into ``out_dir``.

    ``colors`` defaults to the Delineo colour table (by ``labels`` names when given), ``window``
    to :func:`default_window`. The series is written into a temporary sibling folder and renamed
    into place, so a crash never leaves a half series; an existing ``out_dir`` holding only .dcm
    files (a previous overlay) is replaced, anything else in it is an error.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    from delineo import __version__

    out_dir = Path(out_dir)
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError(f"{out_dir}: overlay opacity must be between 0 and 1, got {opacity}.")
    if not is_dicom_image(source):
        raise InputError(f"{out_dir}: an overlay series needs a DICOM source series to copy patient and study from.")
    if out_dir.exists() and (not out_dir.is_dir() or any(p.suffix.lower() != ".dcm" for p in out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not a folder of a previous overlay series; choose a new folder.")
    mask = align_to_grid(mask, source, what="mask")
    values = label_values(mask, str(out_dir))
    names = label_names(values, labels or {v: f"label_{v}" for v in values}, str(out_dir))
    rgb_table = resolve_colors(names, colors)
    window = tuple(window) if window is not None else default_window(source)
    grey_volume = window_to_uint8(source.array, window)  # type: ignore[arg-type]
    sources = source_datasets(source)
    affine_lps = lps_from_ras(source.affine)
    spacing = source.spacing
    row_dir = affine_lps[:3, 0] / spacing[0]
    col_dir = affine_lps[:3, 1] / spacing[1]
    series_uid = generate_uid()
    number = source.meta.get("series_number")
    series_no = series_number if series_number is not None else (int(number) + 980 if isinstance(number, int) else 980)
    now = _dt.datetime.now()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for k, src in enumerate(sources):
            ds = Dataset()
            for keyword in PATIENT_STUDY_KEYWORDS:
                if keyword in src:
                    setattr(ds, keyword, src.data_element(keyword).value)
            for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                            "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
                if keyword not in ds:
                    setattr(ds, keyword, "")
            ds.StudyInstanceUID = source.meta.get("study_uid") or str(src.StudyInstanceUID)
            ds.SpecificCharacterSet = src.get("SpecificCharacterSet", "ISO_IR 100")
            ds.SOPClassUID = SECONDARY_CAPTURE_CLASS
            ds.SOPInstanceUID = generate_uid()
            ds.Modality = "OT"
            ds.ConversionType = "WSD"
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_no
            ds.SeriesDescription = f"Delineo {model_name} overlay"[:64]
            ds.InstanceNumber = k + 1
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.Manufacturer = "Delineo"
            ds.SecondaryCaptureDeviceManufacturer = "Delineo"
            ds.SecondaryCaptureDeviceManufacturerModelName = model_name[:64]
            ds.SecondaryCaptureDeviceSoftwareVersions = f"delineo {__version__}"
            ds.BurnedInAnnotation = "NO"
            ds.PatientOrientation = ""
            ds.DerivationDescription = (
                f"Segmentation by Delineo model {model_name} blended at opacity {opacity:g}, window {window[0]:g}..{window[1]:g}"
            )[:1024]
            ref = Dataset()
            ref.ReferencedSOPClassUID = source.meta.get("sop_class_uid") or str(src.SOPClassUID)
            ref.ReferencedSOPInstanceUID = source.meta["sop_instance_uids"][k]
            ds.SourceImageSequence = Sequence([ref])
            # Geometry of the source slice (standard attributes, extra to the SC IOD) for linking.
            if source.meta.get("frame_of_reference_uid"):
                ds.FrameOfReferenceUID = source.meta["frame_of_reference_uid"]
            position = affine_lps @ np.array([0.0, 0.0, float(k), 1.0])
            ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
            ds.SliceThickness = _ds(spacing[2])

            grey = grey_volume[:, :, k].T  # (rows, columns)
            labels_2d = np.asarray(mask.array[:, :, k]).T
            rgb = blend(grey, labels_2d, rgb_table, float(opacity))
            ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
            ds.SamplesPerPixel = 3
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
            ds.BitsAllocated = 8
            ds.BitsStored = 8
            ds.HighBit = 7
            ds.PixelRepresentation = 0
            ds.PixelData = np.ascontiguousarray(rgb).tobytes()

            ds.file_meta = file_meta_for(ds)
            pydicom.dcmwrite(tmp_dir / f"IM{k + 1:05d}.dcm", ds, enforce_file_format=True)
        _replace_dir(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("Wrote %d-slice RGB overlay series to %s.", len(sources), out_dir)
    return out_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` onto ``target``; an existing ``target`` is swapped out first, then removed."""
    os.chmod(new, 0o755)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)


def _ds(value: float) -> str:
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text[:16]
