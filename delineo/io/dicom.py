"""Read DICOM image series into an :class:`~delineo.io.image.Image` with exact geometry.

Why this module exists rather than handing folders to SimpleITK: clinical exports are messy
(several series in one folder, arbitrary file names, nested folders, stray non-DICOM files,
missing slices, tilted gantries, PET in raw Bq/ml) and every one of those must end in a clear
:class:`~delineo.errors.InputError` or be handled, never in a silently wrong volume.

Conventions (the same as SimpleITK / ITK / NRRD / highdicom volumes):

* the array is indexed ``[i, j, k]`` with ``i`` = column, ``j`` = row, ``k`` = slice;
* slices are ordered by their position along the slice normal (row cosine x column cosine
  dotted with ImagePositionPatient), ascending; never by file name or InstanceNumber;
* ``affine`` maps ``(i, j, k)`` to RAS+ mm (DICOM is LPS; the flip is done here).

Note: dcm2niix flips the row axis, so a NIfTI it produced is the same world geometry with
``j`` reversed; :func:`align_to_grid` maps such an image onto the DICOM grid exactly.

The returned image's ``meta`` keeps only plain data (paths and UIDs); the pydicom headers can be
read back, without pixel data, by :func:`source_datasets` when a derived object is written.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from delineo.errors import InputError, short_reason
from delineo.io.image import LPS_TO_RAS, Image

log = logging.getLogger(__name__)

#: Modalities whose series are not image volumes (they are read by their own readers).
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "REG", "DOC", "RWV", "PLAN"}
)
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
#: SOP classes (exact, or a prefix ending in '.') that are not image volumes even when they carry
#: pixel data or an image modality: raw data, segmentations, registrations, structured reports,
#: presentation states, waveforms, encapsulated documents, RT objects, spectroscopy
NON_IMAGE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.66.", "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.9.", "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.4.2", _DICOMDIR_CLASS,
)
_RT_IMAGE_CLASS = "1.2.840.10008.5.1.4.1.1.481.1"  # the one RT class that is an image


def is_non_image_sop_class(uid: str) -> bool:
    """True for a SOP class that is not an image, whatever its modality says."""
    uid = str(uid or "")
    if uid == _RT_IMAGE_CLASS:
        return False
    return any(uid == c or (c.endswith(".") and uid.startswith(c)) for c in NON_IMAGE_SOP_CLASSES)


def sop_class_name(uid: str) -> str:
    """'Raw Data Storage' for its UID (the UID itself when pydicom does not know it)."""
    from pydicom.uid import UID

    name = UID(str(uid)).name
    return name if name and name != str(uid) else str(uid)

#: Attributes copied into derived objects and sidecars (patient and study identification).
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)

_SCAN_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "StudyInstanceUID",
    "PatientID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "NumberOfFrames",
    "SeriesDate",
    "SeriesTime",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
]


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder (headers only; nothing decoded)."""

    uid: str
    number: int | None
    modality: str
    description: str
    n_slices: int
    files: list[Path] = field(default_factory=list)
    study_uid: str = ""
    patient_id: str = ""
    frame_of_reference_uid: str = ""
    #: True when the files carry no SeriesInstanceUID and :attr:`uid` was derived from them.
    uid_generated: bool = False
    sop_class_uid: str = ""

    @property
    def is_image(self) -> bool:
        """True for pixel series that :func:`read_dicom_series` can turn into a volume: by
        modality, and by SOP class (raw data or a report with modality CT is still no image)."""
        return self.modality.upper() not in NON_IMAGE_MODALITIES and not is_non_image_sop_class(self.sop_class_uid)

    @property
    def kind(self) -> str:
        """What the series holds, for messages: the modality, or the SOP class when that says more."""
        if is_non_image_sop_class(self.sop_class_uid) and self.modality.upper() not in NON_IMAGE_MODALITIES:
            return f"{sop_class_name(self.sop_class_uid)} ({self.modality or '?'})"
        return self.modality or "?"

    def describe(self) -> str:
        """One line for error messages: modality, description, slices, number and UID."""
        number = "?" if self.number is None else str(self.number)
        desc = self.description or "(no description)"
        return f"{self.modality or '?'} '{desc}', {self.n_slices} files, series number {number}, uid {self.uid}"


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------


def truncation(ds, path: Path, at_end: bool = False) -> str | None:
    """Why a parsed header is a truncated file, or None: pydicom returns what it could read from
    a file cut short without complaint, so a cut in the header looked like a file without series
    UIDs (a second series), a cut in an attribute like a wrong value, and a cut between two
    attributes like a missing one. ``at_end``: the header read (stopped before the pixels) used
    up the whole file, so an image has no pixel data."""
    from pydicom.dataelem import RawDataElement

    size = Path(path).stat().st_size
    if len(ds) == 0:
        return f"{path}: truncated DICOM file ({size} bytes: no data set after the file meta header)."
    for elem in ds._dict.values():  # noqa: SLF001 - raw elements keep their declared length
        if isinstance(elem, RawDataElement) and elem.value is not None and elem.length != 0xFFFFFFFF \
                and len(elem.value) < elem.length:
            return (f"{path}: truncated DICOM file (attribute ({elem.tag.group:04X},{elem.tag.elem:04X}) ends "
                    f"after {len(elem.value)} of {elem.length} bytes).")
    modality = str(ds.get("Modality", "") or "").upper()
    sop = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if at_end and modality not in NON_IMAGE_MODALITIES and not is_non_image_sop_class(sop):
        last = max(ds.keys()) if len(ds) else None
        after = f", after attribute ({last.group:04X},{last.elem:04X})" if last is not None else ""
        return f"{path}: truncated DICOM file (it ends after {size} bytes{after}, before any pixel data)."
    return None


def _read_header(path: Path, tags: Sequence[str] | None = None, broken: list[str] | None = None):
    """The header of one file, or None when it is not DICOM (a log line says why it is skipped).

    Files without the 128-byte preamble (old exports) are accepted when forcing the read yields
    an object with SOP and series UIDs; anything else (text, images, archives) is skipped. A
    DICOM file that is truncated or unreadable is skipped too, its one-sentence reason appended
    to ``broken`` so that reading a series from the folder can name it.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    kwargs: dict[str, Any] = {"stop_before_pixels": True}
    if tags is not None:
        kwargs["specific_tags"] = list(tags)
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, **kwargs)
            at_end = fh.tell() >= os.fstat(fh.fileno()).st_size  # stopped at the pixels, or ran out
    except InvalidDicomError:
        pass
    except Exception as exc:  # truncated or corrupt: report and skip, never crash the scan
        log.warning("Skipping %s: unreadable DICOM file (%s).", path, short_reason(exc))
        if broken is not None:
            broken.append(f"{path}: unreadable or truncated DICOM file ({short_reason(exc)}).")
        return None
    else:
        reason = truncation(ds, path, at_end)
        if reason is None:
            return ds
        log.warning("Skipping %s", reason)
        if broken is not None:
            broken.append(reason)
        return None
    try:
        with open(path, "rb") as fh:
            group = int.from_bytes(fh.read(2), "little")
        if group not in (0x0002, 0x0008):  # a preamble-less DICOM file starts with these groups
            raise ValueError("not DICOM")
        ds = pydicom.dcmread(path, force=True, **kwargs)
        if "SOPInstanceUID" in ds and "SeriesInstanceUID" in ds:
            return ds
    except Exception:
        pass
    log.info("Skipping %s: not a DICOM file.", path)
    return None


def _iter_files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            if path.name.startswith("."):
                log.debug("Skipping hidden file %s.", path)
                continue
            yield path


def _scan(folder: Path, broken: list[str] | None = None,
          indexes: list[tuple[Path, int]] | None = None) -> dict[str, list[tuple[Path, Any]]]:
    """Headers of every DICOM file under ``folder`` (nested folders, any file names) by series;
    truncated or unreadable DICOM files go to ``broken`` (reasons), DICOMDIR indexes to
    ``indexes`` (path, number of files they reference)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found.")
    if not folder.is_dir():
        raise InputError(f"{folder}: is a file, not a folder of DICOM files.")
    by_series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path in _iter_files(folder):
        ds = _read_header(path, None if path.name.upper() == "DICOMDIR" else _SCAN_TAGS, broken)
        if ds is None:
            continue
        media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if media_class == _DICOMDIR_CLASS:
            log.info("Skipping %s: DICOMDIR index (files are found by scanning instead).", path)
            if indexes is not None:
                records = ds.get("DirectoryRecordSequence", None) or []
                indexes.append((path, sum(1 for r in records if "ReferencedFileID" in r)))
            continue
        if "SeriesInstanceUID" in fill_missing_uids(ds, path):
            ds._delineo_uid_generated = True  # noqa: SLF001 (in-memory marker, never written)
        by_series[str(ds.SeriesInstanceUID)].append((path, ds))
    return by_series


def derived_uid(*parts: Any) -> str:
    """A deterministic UID (2.25 form) from ``parts``: the same files always give the same UID."""
    import hashlib

    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def fill_missing_uids(ds, path: Path) -> list[str]:
    """Fill empty identifying UIDs of an in-memory header (never the file); return their names.

    De-identification tools sometimes blank SOP/series/study UIDs (the ct-abdomen test series
    does). Such files are still usable: the SOP UIDs come from the file meta, and series/study
    UIDs are derived deterministically from what remains (frame of reference, dates, times,
    description), so that reading the folder twice gives the same identifiers.
    """
    filled = []
    meta = getattr(ds, "file_meta", None)
    if not str(ds.get("SOPInstanceUID", "") or ""):
        ds.SOPInstanceUID = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "") or derived_uid("sop", Path(path).resolve())
        filled.append("SOPInstanceUID")
    if not str(ds.get("SOPClassUID", "") or ""):
        value = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
        if value:
            ds.SOPClassUID = value
            filled.append("SOPClassUID")
    if not str(ds.get("StudyInstanceUID", "") or ""):
        ds.StudyInstanceUID = derived_uid(
            "study", ds.get("PatientID", ""), ds.get("StudyDate", ""), ds.get("StudyTime", ""),
            ds.get("AccessionNumber", ""), ds.get("FrameOfReferenceUID", ""),
        )
        filled.append("StudyInstanceUID")
    if not str(ds.get("SeriesInstanceUID", "") or ""):
        ds.SeriesInstanceUID = derived_uid(
            "series", ds.StudyInstanceUID, ds.get("FrameOfReferenceUID", ""), ds.get("Modality", ""),
            ds.get("SeriesNumber", ""), ds.get("SeriesDescription", ""), ds.get("SeriesDate", ""),
            ds.get("SeriesTime", ""),
        )
        filled.append("SeriesInstanceUID")
    return filled


def _series_info(uid: str, items: list[tuple[Path, Any]]) -> SeriesInfo:
    first = items[0][1]
    number = first.get("SeriesNumber", None)
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    n_slices = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)
    return SeriesInfo(
        uid=uid,
        number=number,
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        n_slices=n_slices,
        files=sorted(p for p, _ in items),
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        patient_id=str(first.get("PatientID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        uid_generated=bool(getattr(first, "_delineo_uid_generated", False)),
        sop_class_uid=str(first.get("SOPClassUID", "") or ""),
    )


def list_series(folder: str | Path, *, broken: list[str] | None = None,
                indexes: list[tuple[Path, int]] | None = None) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (nested folders, any file names), non-DICOM skipped
    (truncated DICOM files too, their reasons in ``broken``; DICOMDIR indexes in ``indexes``).

    Sorted by series number then UID so that listings and error messages are reproducible.
    """
    folder = Path(folder)
    by_series = _scan(folder, broken, indexes)
    infos = [_series_info(uid, items) for uid, items in by_series.items()]
    for info in infos:
        if info.uid_generated:
            log.warning(
                "%s: %d %s files have no SeriesInstanceUID; grouped by frame of reference, "
                "description and time as series %s.", folder, len(info.files), info.modality, info.uid,
            )
    infos.sort(key=lambda s: (s.study_uid, s.number if s.number is not None else 1 << 31, s.uid))
    return infos


def select_series(folder: str | Path, infos: Sequence[SeriesInfo], series: str | int | None) -> SeriesInfo:
    """The series ``series`` (UID or SeriesNumber) names, or the only image series when None."""
    folder = Path(folder)
    images = [s for s in infos if s.is_image]
    if not infos:
        raise InputError(f"{folder}: no DICOM files found (searched nested folders too).")
    if series is None:
        if len(images) == 1:
            return images[0]
        if not images:
            kinds = ", ".join(sorted({s.kind for s in infos}))
            raise InputError(f"{folder}: contains no image series, only {kinds} objects.")
        listing = "; ".join(f"[{s.describe()}]" for s in images)
        raise InputError(
            f"{folder}: contains {len(images)} image series, choose one by SeriesInstanceUID or "
            f"SeriesNumber (series=... / --series ...): {listing}."
        )
    matches = [s for s in infos if s.uid == str(series)]
    if not matches:
        try:
            number = int(series)
        except (TypeError, ValueError):
            number = None
        if number is not None:
            matches = [s for s in infos if s.number == number]
    if not matches:
        listing = "; ".join(f"[{s.describe()}]" for s in images or infos)
        raise InputError(f"{folder}: no series with UID or number {series!r}; found {listing}.")
    if len(matches) > 1:
        listing = "; ".join(f"[{s.describe()}]" for s in matches)
        raise InputError(f"{folder}: series number {series!r} is ambiguous, choose by UID: {listing}.")
    chosen = matches[0]
    if not chosen.is_image:
        raise InputError(
            f"{folder}: series {series!r} is a {chosen.kind} object, not an image series "
            "(read it with read_dicom_seg / read_rtstruct onto its image series)."
        )
    return chosen


# --------------------------------------------------------------------------------------------
# Reading one series
# --------------------------------------------------------------------------------------------


def read_dicom_series(folder: str | Path, series: str | int | None = None, *, pet_suv: bool = True) -> Image:
    """Read one image series under ``folder`` as a 3D :class:`Image` (see the module docstring).

    ``series`` picks a series by SeriesInstanceUID or SeriesNumber when the folder holds several.
    CT is returned in HU (float32), PET as body-weight SUV (float32, unless ``pet_suv`` is False:
    then Bq/ml), MR and other modalities as stored (rescaled when the file says so, except MR).
    """
    folder = Path(folder)
    broken: list[str] = []
    indexes: list[tuple[Path, int]] = []
    infos = list_series(folder, broken=broken, indexes=indexes)
    if broken:  # a cut or damaged file may be a slice of the series: refuse, naming it
        more = f" ({len(broken) - 1} more such file(s) in {folder})" if len(broken) > 1 else ""
        raise InputError(broken[0].rstrip(".") + f"{more}; remove or replace it before reading the series.")
    if not infos and indexes:
        index, n = indexes[0]
        raise InputError(f"{folder}: holds only a DICOMDIR index ({index.name}) and none of its {n} referenced "
                         "file(s); copy the whole export, the index alone has no images.")
    info = select_series(folder, infos, series)
    return read_series(info, pet_suv=pet_suv, label=str(folder))


def read_series(info: SeriesInfo, *, pet_suv: bool = True, label: str | None = None) -> Image:
    """Read the series described by ``info`` (from :func:`list_series`)."""
    where = label or str(info.files[0].parent)
    headers = []
    seen: dict[str, Path] = {}
    for path in info.files:
        reasons: list[str] = []
        ds = _read_header(path, broken=reasons)
        if ds is None:
            raise InputError(reasons[0] if reasons else f"{path}: could not be read again while loading series {info.uid}.")
        fill_missing_uids(ds, path)
        if str(ds.SeriesInstanceUID) != info.uid:
            raise InputError(f"{path}: changed while loading series {info.uid}.")
        sop = str(ds.SOPInstanceUID)
        if sop in seen:
            log.warning("Skipping %s: duplicate of %s (same SOPInstanceUID).", path, seen[sop])
            continue
        seen[sop] = path
        headers.append((path, ds))
    geometry = _series_geometry(headers, where)
    order = geometry.pop("order")
    files = [headers[n][0] for n in order]
    datasets = [headers[n][1] for n in order]
    modality = str(datasets[0].get("Modality", "") or "").upper()

    volume = _read_pixels(files, datasets, modality, pet_suv=pet_suv)
    if np.issubdtype(volume.dtype, np.floating):
        bad = ~np.isfinite(volume)
        if bad.any():
            k = int(np.argwhere(bad)[0][-1])
            raise InputError(f"{files[k]}: {int(bad.sum())} voxel(s) of the series are NaN or infinite after "
                             "rescaling (check RescaleSlope/RescaleIntercept).")
    first = datasets[0]
    meta: dict[str, Any] = {
        "path": where,
        "dicom_files": [str(p) for p in files],
        "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in datasets],
        "sop_class_uid": str(first.get("SOPClassUID", "")),
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "series_number": info.number,
        "generated_uids": info.uid_generated,
        "series_description": str(first.get("SeriesDescription", "") or ""),
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "") or ""),
        "patient": patient_study_attributes(first),
        "units": {"CT": "HU", "PT": "SUVbw" if pet_suv else "BQML"}.get(modality, "stored"),
    }
    log.info(
        "Read DICOM series %s (%s, %d slices %s) from %s.",
        meta["series_uid"], modality, len(files), "x".join(map(str, volume.shape)), where,
    )
    return Image(volume, geometry["affine"], modality=modality, meta=meta)


def patient_study_attributes(ds) -> dict[str, str]:
    """Patient/study identification of a dataset as plain strings (for derived objects, sidecars)."""
    out = {}
    for keyword in PATIENT_STUDY_KEYWORDS:
        value = ds.get(keyword, None)
        if value is not None and str(value) != "":
            out[keyword] = str(value)
    return out


def _need(ds, path: Path, keyword: str):
    from pydicom.datadict import tag_for_keyword

    value = ds.get(keyword, None)
    if value is None or (isinstance(value, str) and value == ""):
        tag = tag_for_keyword(keyword)
        tag_s = f" ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""
        raise InputError(f"{path}: DICOM attribute {keyword}{tag_s} is missing.")
    return value


def _numbers(ds, path: Path, keyword: str, count: int, positive: bool = False) -> np.ndarray:
    """A required multi-valued numeric attribute, checked: hostile files hold text, NaN, too few
    values or zero spacings here, and each must be one sentence rather than a traceback."""
    value = _need(ds, path, keyword)
    try:
        arr = np.asarray(list(value) if not isinstance(value, (str, bytes)) else [value], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InputError(f"{path}: DICOM attribute {keyword} is not numeric ({str(value)[:60]!r}).") from None
    if arr.size != count or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        need = f"{count} finite{' positive' if positive else ''} numbers"
        raise InputError(f"{path}: DICOM attribute {keyword} is {arr.tolist()}, expected {need}.")
    return arr


def _series_geometry(headers: list[tuple[Path, Any]], where: str) -> dict[str, Any]:
    """Slice order and RAS affine of a single-frame series, or InputError for unusable geometry."""
    for path, ds in headers:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputError(
                f"{path}: multi-frame (enhanced) image with {frames} frames; only single-frame "
                "series are supported (convert it with e.g. dcm2niix)."
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(f"{path}: colour image (SamplesPerPixel {ds.SamplesPerPixel}); a greyscale series is expected.")
    path0, ds0 = headers[0]
    iop0 = _numbers(ds0, path0, "ImageOrientationPatient", 6)
    ps0 = _numbers(ds0, path0, "PixelSpacing", 2, positive=True)
    shape0 = (int(_need(ds0, path0, "Rows")), int(_need(ds0, path0, "Columns")))
    positions = []
    for path, ds in headers:
        iop = _numbers(ds, path, "ImageOrientationPatient", 6)
        if not np.allclose(iop, iop0, atol=1e-4):
            raise InputError(
                f"{where}: slices have different orientations ({path0.name}: {iop0.tolist()}, "
                f"{path.name}: {iop.tolist()}); several stacks are mixed in one series."
            )
        ps = _numbers(ds, path, "PixelSpacing", 2, positive=True)
        if not np.allclose(ps, ps0, rtol=1e-4, atol=1e-5):
            raise InputError(f"{where}: slices have different pixel spacings ({path0.name}: {ps0.tolist()}, {path.name}: {ps.tolist()}).")
        shape = (int(_need(ds, path, "Rows")), int(_need(ds, path, "Columns")))
        if shape != shape0:
            raise InputError(f"{where}: slices have different sizes ({path0.name}: {shape0}, {path.name}: {shape}).")
        positions.append(_numbers(ds, path, "ImagePositionPatient", 3))
    norms = np.linalg.norm(iop0[:3]), np.linalg.norm(iop0[3:])
    if min(norms) < 1e-6 or abs(float(iop0[:3] @ iop0[3:])) > 1e-3 * norms[0] * norms[1]:
        raise InputError(f"{path0}: ImageOrientationPatient {iop0.tolist()} does not give two orthogonal "
                         "directions, so the slice cannot be placed in the patient.")
    row_dir = iop0[:3] / norms[0]  # direction of increasing column index
    col_dir = iop0[3:] / norms[1]  # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    positions_arr = np.asarray(positions)
    along = positions_arr @ normal
    order = [int(n) for n in np.argsort(along, kind="stable")]
    along = along[order]
    positions_arr = positions_arr[order]
    n = len(order)

    if n > 1:
        steps = np.diff(along)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            a, b = headers[order[dup[0]]][0], headers[order[dup[0] + 1]][0]
            raise InputError(
                f"{where}: two images at the same slice position {along[dup[0]]:.3f} mm ({a.name} and "
                f"{b.name}); several acquisitions, echoes or phases are mixed in one series."
            )
        spacing = float(np.median(steps))
        tol = max(0.02 * spacing, 1e-3)
        bad = np.flatnonzero(np.abs(steps - spacing) > tol)
        if bad.size:
            m = int(bad[0])
            gap = float(steps[m])
            a, b = headers[order[m]][0], headers[order[m + 1]][0]
            missing = gap / spacing - 1
            hint = (
                f" (about {round(missing)} missing slice{'s' if round(missing) != 1 else ''})"
                if gap > spacing and abs(missing - round(missing)) < 0.1
                else ""
            )
            raise InputError(
                f"{where}: non-uniform slice spacing, gap of {gap:.3f} mm between slice positions "
                f"{along[m]:.3f} and {along[m + 1]:.3f} mm ({a.name} -> {b.name}) where the "
                f"series spacing is {spacing:.3f} mm{hint}; {len(bad)} irregular gap(s) in total."
            )
        # Gantry tilt: slice origins must lie on a line along the normal.
        offsets = positions_arr - positions_arr[0]
        inplane = offsets - np.outer(offsets @ normal, normal)
        dist = np.linalg.norm(inplane, axis=1)
        if float(dist.max()) > max(0.01, 1e-3 * float(abs(along[-1] - along[0]))):
            angle = math.degrees(math.atan2(float(dist[-1]), float(along[-1] - along[0])))
            tilt = headers[order[0]][1].get("GantryDetectorTilt", None)
            tilt_s = f", GantryDetectorTilt {tilt}" if tilt not in (None, "") else ""
            raise InputError(
                f"{where}: gantry/detector tilt of about {angle:.2f} degrees{tilt_s} (slices are "
                "sheared, not stacked along their normal); resample it to an untilted grid first."
            )
    else:
        ds = headers[0][1]
        spacing = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * ps0[1]  # i = column index, spaced by PixelSpacing[1]
    affine_lps[:3, 1] = col_dir * ps0[0]  # j = row index, spaced by PixelSpacing[0]
    affine_lps[:3, 2] = normal * spacing
    affine_lps[:3, 3] = positions_arr[0]
    return {"order": order, "affine": ras_from_lps(affine_lps)}


def ras_from_lps(affine_lps: np.ndarray) -> np.ndarray:
    """RAS affine from an LPS one (same voxel indexing); the flip is its own inverse."""
    flip = np.eye(4)
    flip[:3, :3] = LPS_TO_RAS
    return flip @ np.asarray(affine_lps, dtype=np.float64)


lps_from_ras = ras_from_lps

_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": "Pillow, pylibjpeg with pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.51": "Pillow, pylibjpeg with pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg with pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg with pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pyjpegls or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pyjpegls or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg with pylibjpeg-openjpeg",
}


def decode_pixels(ds, path: Path) -> np.ndarray:
    """Decoded pixel array of one dataset, through pydicom's handlers, or InputError.

    Compressed transfer syntaxes need an optional decoder; when it is missing the error names the
    syntax and the package to install rather than surfacing pydicom's internal message.
    """
    from pydicom.uid import UID

    ts = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM image without pixel data (the file has {Path(path).stat().st_size} bytes).")
    check_pixel_header(ds, path, ts)
    try:
        return ds.pixel_array
    except Exception as exc:
        name = ts.name if ts.is_transfer_syntax else "unknown"
        if ts.is_compressed or not ts.is_transfer_syntax:
            hint = _DECODER_HINTS.get(str(ts))
            how = f"; install {hint}" if hint else ""
            raise InputError(
                f"{path}: pixel data in transfer syntax '{name}' ({ts}) could not be decoded "
                f"({short_reason(exc)}){how}."
            ) from exc
        raise InputError(f"{path}: pixel data could not be read ({short_reason(exc)}).") from exc


def check_pixel_header(ds, path: Path, ts=None) -> None:
    """The attributes that describe the pixels, checked against each other and against the bytes
    present, before decoding. pydicom's own messages name a symptom ("less than expected ... may
    be corrupted, have an invalid group 0028 element value, or the transfer syntax ...") or the
    wrong attribute (BitsStored when BitsAllocated was changed); these say which one is wrong."""
    import math as _math

    from pydicom.dataelem import RawDataElement
    from pydicom.uid import UID

    if is_non_image_sop_class(str(ds.get("SOPClassUID", "") or "")):
        raise InputError(f"{path}: a {sop_class_name(ds.SOPClassUID)} object, not an image "
                         f"(SOPClassUID {ds.SOPClassUID}, modality {ds.get('Modality', '?') or '?'}).")
    rows, cols = int(_need(ds, path, "Rows")), int(_need(ds, path, "Columns"))
    bits = int(_need(ds, path, "BitsAllocated"))
    stored = int(ds.get("BitsStored", bits) or bits)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows < 1 or cols < 1:
        raise InputError(f"{path}: Rows {rows} x Columns {cols}: an image needs at least one row and one column.")
    raw = ds._dict.get(0x7FE00010)  # noqa: SLF001 - the raw element keeps its declared length
    have = len(raw.value) if raw is not None and raw.value is not None else None
    pixels = rows * cols * spp * frames
    fits = [b for b in (8, 16, 32, 64) if have is not None and pixels * b // 8 == have]
    fit = f" (as for BitsAllocated {fits[0]})" if fits else ""
    if bits not in (1, 8, 16, 32, 64):
        raise InputError(f"{path}: BitsAllocated {bits} is not valid (1, 8, 16, 32 or 64); the pixel data holds "
                         f"{have} bytes for {rows} x {cols} pixels{fit}.")
    if stored > bits and fits and fits[0] == bits:
        raise InputError(f"{path}: BitsStored {stored} is more than BitsAllocated {bits} (which matches the {have} "
                         "bytes of pixel data).")
    if stored > bits:
        raise InputError(f"{path}: BitsAllocated {bits} is less than BitsStored {stored}; the pixel data holds "
                         f"{have} bytes for {rows} x {cols} pixels{fit}.")
    if stored < 1:
        raise InputError(f"{path}: BitsStored {stored} is not valid (1 to BitsAllocated {bits}).")
    if int(ds.get("PixelRepresentation", 0) or 0) not in (0, 1):
        raise InputError(f"{path}: PixelRepresentation {ds.PixelRepresentation} is not valid (0 unsigned, 1 signed).")
    ts = UID(str(ts or "1.2.840.10008.1.2"))
    if have is None or (ts.is_transfer_syntax and ts.is_compressed) or raw.length == 0xFFFFFFFF:
        return  # encapsulated (compressed) pixel data: its decoder judges the length
    if isinstance(raw, RawDataElement) and have < raw.length:
        raise InputError(f"{path}: truncated DICOM file: its pixel data ends after {have} of {raw.length} bytes.")
    need = _math.ceil(pixels * bits / 8)
    if have < need:
        frames_s = f" x {frames} frames" if frames > 1 else ""
        raise InputError(f"{path}: Rows {rows} x Columns {cols} x SamplesPerPixel {spp}{frames_s} at BitsAllocated "
                         f"{bits} needs {need} bytes, the pixel data holds {have}{fit}; one of these attributes is wrong.")


def _read_pixels(files: list[Path], datasets: list[Any], modality: str, *, pet_suv: bool) -> np.ndarray:
    """Decode slice by slice into one preallocated [i, j, k] array (no second copy in memory)."""
    import pydicom

    volume: np.ndarray | None = None
    suv = _SUVCalculator(datasets, files[0]) if modality == "PT" and pet_suv else None
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pixels = decode_pixels(ds, path)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if modality == "MR":
            values = pixels  # as stored: MR has no physical unit to restore
        elif modality in ("CT", "PT") or slope != 1 or intercept != 0:
            values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            if suv is not None:
                values *= np.float32(suv.factor(ds, path))
        else:
            values = pixels
        if volume is None:
            dtype = values.dtype
            if modality not in ("MR",) and not np.issubdtype(dtype, np.floating) and (slope != 1 or intercept != 0):
                dtype = np.float32
            volume = np.empty((pixels.shape[1], pixels.shape[0], len(files)), dtype=dtype)
        elif values.dtype != volume.dtype and not np.can_cast(values.dtype, volume.dtype, "same_kind"):
            volume = volume.astype(np.float32)
        volume[:, :, k] = values.T
        del ds, pixels, values
    assert volume is not None
    return volume


# --------------------------------------------------------------------------------------------
# PET: body-weight SUV
# --------------------------------------------------------------------------------------------


def _parse_time(value: str) -> _dt.time:
    text = str(value).strip().replace(":", "")
    if not text:
        raise ValueError("empty time")
    whole, _, frac = text.partition(".")
    whole = whole.ljust(6, "0")
    micro = int((frac + "000000")[:6]) if frac else 0
    return _dt.time(int(whole[0:2]), int(whole[2:4]), int(whole[4:6]), micro)


def _parse_date(value: str) -> _dt.date:
    text = str(value).strip().replace(".", "").replace("-", "")
    return _dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))


def _parse_datetime(value: str) -> _dt.datetime:
    text = str(value).strip()
    for sep in ("+", "-"):
        if sep in text[8:]:
            text = text[: 8 + text[8:].index(sep)]  # drop the UTC offset: both times share it
    return _dt.datetime.combine(_parse_date(text[:8]), _parse_time(text[8:] or "000000"))


class _SUVCalculator:
    """Body-weight SUV factor (g/ml per Bq/ml) from the PET header, per slice where needed.

    SUVbw = activity concentration [Bq/ml] * weight [g] / injected dose decayed to the reference
    time [Bq]. The reference time follows DecayCorrection: START -> series start (SeriesDate/Time,
    or the earliest AcquisitionTime when the series time was rewritten later by post-processing),
    ADMIN -> injection time (no decay), NONE -> each slice's acquisition time.
    """

    def __init__(self, datasets: Sequence[Any], path: Path) -> None:
        ds = datasets[0]
        self.path = path
        units = str(_need(ds, path, "Units")).upper()
        self.already_suv = units in ("GML",)
        if self.already_suv:
            log.info("%s: PET already in SUV (Units GML); values kept.", path)
            return
        if units != "BQML":
            raise InputError(f"{path}: PET Units is {units!r}; body-weight SUV needs BQML (activity concentration).")
        self.decay = str(_need(ds, path, "DecayCorrection")).upper()
        if self.decay not in ("START", "ADMIN", "NONE"):
            raise InputError(f"{path}: unknown PET DecayCorrection {self.decay!r} (expected START, ADMIN or NONE).")
        weight = float(_need(ds, path, "PatientWeight"))
        if not weight > 0:
            raise InputError(f"{path}: PatientWeight (0010,1030) is {weight}, SUV needs the patient's weight in kg.")
        self.weight_g = weight * 1000.0
        seq = _need(ds, path, "RadiopharmaceuticalInformationSequence")
        if len(seq) == 0:
            raise InputError(f"{path}: DICOM attribute RadiopharmaceuticalInformationSequence (0054,0016) is empty.")
        item = seq[0]
        self.dose = float(_need(item, path, "RadionuclideTotalDose"))
        self.half_life = float(_need(item, path, "RadionuclideHalfLife"))
        if not (self.dose > 0 and self.half_life > 0):
            raise InputError(f"{path}: RadionuclideTotalDose and RadionuclideHalfLife must be positive for SUV.")
        self.base_date = self._date(ds)
        start_dt = item.get("RadiopharmaceuticalStartDateTime", None)
        self.injection_dated = start_dt not in (None, "")
        if self.injection_dated:
            self.injection = _parse_datetime(start_dt)
        else:
            start = _need(item, path, "RadiopharmaceuticalStartTime")
            self.injection = _dt.datetime.combine(self.base_date, _parse_time(start))
        if self.decay == "START":
            series_time = _need(ds, path, "SeriesTime")
            ref = _dt.datetime.combine(self._date(ds, "SeriesDate"), _parse_time(series_time))
            # Post-processing may rewrite SeriesTime after the scan: then the earliest
            # acquisition is the true series start (as in the QIBA SUV recommendations).
            acquisitions = [
                _dt.datetime.combine(self._date(d, "AcquisitionDate"), _parse_time(d.AcquisitionTime))
                for d in datasets
                if d.get("AcquisitionTime", None) not in (None, "")
            ]
            if acquisitions and min(acquisitions) < ref:
                ref = min(acquisitions)
            self.fixed = self._decayed_factor(ref)

    def _date(self, ds, keyword: str = "SeriesDate") -> _dt.date:
        for key in (keyword, "SeriesDate", "AcquisitionDate", "StudyDate"):
            value = ds.get(key, None)
            if value not in (None, ""):
                return _parse_date(value)
        raise InputError(f"{self.path}: DICOM attribute SeriesDate (0008,0021) is missing (needed for SUV decay).")

    def _decayed_factor(self, ref: _dt.datetime) -> float:
        dt = (ref - self.injection).total_seconds()
        if -86400 < dt < 0 and not self.injection_dated:
            dt += 86400  # injection before midnight, scan after: dates were not recorded
        if dt < 0:
            raise InputError(f"{self.path}: PET reference time is {-dt:.0f} s before the injection time; check RadiopharmaceuticalStartTime.")
        decayed = self.dose * math.exp(-math.log(2) * dt / self.half_life)
        return self.weight_g / decayed

    def factor(self, ds, path: Path) -> float:
        if self.already_suv:
            return 1.0
        if self.decay == "ADMIN":
            return self.weight_g / self.dose
        if self.decay == "START":
            return self.fixed
        acq = _need(ds, path, "AcquisitionTime")
        return self._decayed_factor(_dt.datetime.combine(self._date(ds, "AcquisitionDate"), _parse_time(acq)))


# --------------------------------------------------------------------------------------------
# Links back to the source files and grids
# --------------------------------------------------------------------------------------------


def is_dicom_image(image: Image) -> bool:
    """True when ``image`` was read from a DICOM series (so derived DICOM objects can be written)."""
    return bool(image.meta.get("dicom_files")) and bool(image.meta.get("series_uid"))


def source_datasets(image: Image) -> list[Any]:
    """The pydicom headers (no pixel data) of ``image``'s slices, in ``k`` order.

    They are read again from ``meta['dicom_files']`` rather than kept in memory; a file that has
    changed since (different SOPInstanceUID) is an error rather than a silently wrong reference.
    """
    files = image.meta.get("dicom_files") or []
    if not is_dicom_image(image):
        raise InputError(f"{image.meta.get('path', 'image')}: not read from a DICOM series, so DICOM outputs cannot reference it.")
    uids = image.meta.get("sop_instance_uids") or []
    out = []
    for n, name in enumerate(files):
        path = Path(name)
        if not path.is_file():
            raise InputError(f"{path}: source DICOM file no longer exists.")
        ds = _read_header(path)
        if ds is not None:
            fill_missing_uids(ds, path)
        if ds is None or (uids and str(ds.get("SOPInstanceUID", "")) != uids[n]):
            raise InputError(f"{path}: source DICOM file changed since the series was read.")
        out.append(ds)
    if len(out) != image.spatial_shape[2]:
        raise InputError(f"{image.meta.get('path')}: {len(out)} source files for {image.spatial_shape[2]} slices.")
    return out


def align_to_grid(image: Image, reference: Image, *, what: str = "image") -> Image:
    """``image`` (labels) on ``reference``'s grid: exact when the grids differ by axis order,
    flips and whole-voxel shifts (e.g. a dcm2niix NIfTI of the same series), else nearest
    neighbour resampling (logged). Voxels outside the reference grid are dropped (logged).
    """
    if image.same_grid(reference):
        return image
    array = np.asarray(image.array)
    t = np.linalg.inv(reference.affine) @ image.affine  # image index -> reference index
    rot, shift = t[:3, :3], t[:3, 3]
    perm = np.round(rot)
    exact = (
        np.allclose(rot, perm, atol=1e-3)
        and np.all(np.abs(perm).sum(axis=0) == 1)
        and np.all(np.abs(perm).sum(axis=1) == 1)
        and np.allclose(shift, np.round(shift), atol=1e-2)
    )
    out = np.zeros(reference.spatial_shape, dtype=array.dtype)
    if exact:
        src_axis = [int(np.flatnonzero(perm[a])[0]) for a in range(3)]  # reference axis a <- image axis
        moved = np.transpose(array, src_axis)
        offset = np.round(shift).astype(int)
        for a in range(3):
            if perm[a, src_axis[a]] < 0:
                moved = np.flip(moved, axis=a)
                offset[a] -= moved.shape[a] - 1
        src_sl, dst_sl = [], []
        for a in range(3):
            lo = max(0, offset[a])
            hi = min(reference.spatial_shape[a], offset[a] + moved.shape[a])
            if hi <= lo:
                lo = hi = 0
            dst_sl.append(slice(lo, hi))
            src_sl.append(slice(lo - offset[a], hi - offset[a]))
        part = moved[tuple(src_sl)]
        out[tuple(dst_sl)] = part
        lost = int(np.count_nonzero(moved)) - int(np.count_nonzero(part))
        log.debug("Aligned %s onto the reference grid exactly (axes %s).", what, src_axis)
    else:
        from scipy import ndimage

        inv = np.linalg.inv(t)
        out = ndimage.affine_transform(
            array, inv[:3, :3], offset=inv[:3, 3], output_shape=reference.spatial_shape,
            order=0, mode="constant", cval=0, prefilter=False,
        ).astype(array.dtype)
        lost = 0
        log.info("Resampled %s onto the reference grid (nearest neighbour): the grids differ.", what)
    if lost > 0:
        log.warning("%s: %d labelled voxels fall outside the reference grid and were dropped.", what, lost)
    return Image(out, reference.affine.copy(), image.modality, dict(image.meta))


def file_meta_for(ds) -> "FileMetaDataset":
    """The file meta group (explicit VR little endian) for a dataset Delineo writes itself."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta
