"""Turn an upload into a study: check the file types, unpack archives safely, list DICOM series,
read the chosen image with Delineo's readers and write the volume the browser displays.

Only known types are accepted (NIfTI, NRRD, MHA, DICOM files, a ZIP of DICOM files); the
uploaded names are kept as data only, every file is stored under a server-made name. Archives go
through :func:`delineo.io.archive.extract_archive` (members checked against path traversal,
links and zip bombs before anything is written).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from delineo.errors import InputError
from delineo.serve.store import Workspace, now

log = logging.getLogger(__name__)

IMAGE_TYPES = (".nii.gz", ".nii", ".nrrd", ".mha")
ARCHIVE_TYPES = (".zip",)
DICOM_TYPES = (".dcm", ".ima", "")  # extension-less files must carry the DICM preamble

#: CT window presets (centre, width in HU): the usual radiology reading windows.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


@dataclass
class Upload:
    """One received file: the name the client gave (data only) and where the server stored it."""

    name: str
    path: Path


def upload_kind(name: str) -> str:
    """'image', 'archive' or 'dicom' from the client's file name, or InputError for other types."""
    low = name.lower()
    for suffix in IMAGE_TYPES:
        if low.endswith(suffix):
            return "image"
    if low.endswith(ARCHIVE_TYPES):
        return "archive"
    base = low.rsplit("/", 1)[-1]
    if "." not in base or low.endswith((".dcm", ".ima")):
        return "dicom"
    raise InputError(f"{name}: unsupported file type (accepted: {', '.join(IMAGE_TYPES)}, .zip, DICOM files).")


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` carries the DICOM preamble ('DICM' at byte 128)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _suffix(name: str) -> str:
    low = name.lower()
    return next(s for s in IMAGE_TYPES if low.endswith(s))


def _extract(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack with Delineo's safe extractor; unpacked bytes bounded by 8x the upload cap (DICOM
    rarely packs better than 3:1, so a larger expansion is a bomb, not a study)."""
    from delineo.io.archive import ArchiveLimits, extract_archive

    bound = 8 * max_bytes
    limits = ArchiveLimits(max_total_bytes=min(bound, 4 << 30), max_member_bytes=min(bound, 2 << 30))
    return extract_archive(archive, dest, limits)


def ingest(ws: Workspace, uploads: list[Upload], max_bytes: int, name: str | None = None) -> dict[str, Any]:
    """A new study from ``uploads`` (already on disk inside the workspace); returns its record."""
    if not uploads:
        raise InputError("no file was uploaded.")
    kinds = [upload_kind(u.name) for u in uploads]
    label = name or (uploads[0].name.rsplit("/", 1)[-1] if len(uploads) == 1 else uploads[0].name.split("/")[0])
    if "image" in kinds or "archive" in kinds:
        if len(uploads) != 1:
            raise InputError(f"{uploads[0].name}: upload one image file or one ZIP at a time "
                             f"(got {len(uploads)} files).")
    sid, d = ws.create_study({"name": label[:200], "status": "new"})
    try:
        if kinds[0] == "image":
            target = d / "source" / f"upload{_suffix(uploads[0].name)}"
            shutil.move(str(uploads[0].path), target)
            from delineo.io.files import read_image

            try:
                image = read_image(target)
            except InputError as exc:
                raise InputError(str(exc).replace(str(target), uploads[0].name)) from None
            _write_viewer_image(ws, sid, image, kind="file")
            return ws.study(sid)
        dicom = d / "source" / "dicom"
        if kinds[0] == "archive":
            _extract(uploads[0].path, dicom, max_bytes)
            uploads[0].path.unlink(missing_ok=True)
        else:
            dicom.mkdir()
            kept = 0
            for i, u in enumerate(uploads):
                if not is_dicom_file(u.path):
                    if len(uploads) == 1:
                        raise InputError(f"{u.name}: not a DICOM file (no DICM preamble).")
                    log.info("upload: %s skipped (no DICM preamble).", u.name)
                    continue
                shutil.move(str(u.path), dicom / f"f{i:06d}.dcm")
                kept += 1
            if not kept:
                raise InputError(f"{label}: none of the {len(uploads)} uploaded files is a DICOM file.")
        return _list_dicom(ws, sid, dicom, uploads[0].name)
    except InputError as exc:
        shutil.rmtree(d, ignore_errors=True)
        raise InputError(_without_paths(str(exc), ws, label)) from None
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise


def _without_paths(message: str, ws: Workspace, label: str) -> str:
    """A reader's message with the server's workspace folders replaced by the upload's name
    (the user should see what they sent, not where the server keeps it)."""
    import re

    return re.sub(re.escape(str(ws.root)) + r"/studies/[0-9a-f]+/source(/dicom|/upload[.a-z]*)?", label, message)


def _list_dicom(ws: Workspace, sid: str, folder: Path, label: str) -> dict[str, Any]:
    from delineo.io.dicom import list_series

    broken: list[str] = []
    infos = [s for s in list_series(folder, broken=broken) if s.is_image]
    if broken:  # a cut or damaged slice: refuse it by name, as `read_dicom_series` does
        more = f" ({len(broken) - 1} more such file(s))" if len(broken) > 1 else ""
        raise InputError(broken[0].rstrip(".") + f"{more}; remove or replace it and upload the series again.")
    if not infos:
        raise InputError(f"{label}: no DICOM image series found in the upload.")
    series = [{"uid": s.uid, "number": s.number, "modality": s.modality, "description": s.description,
               "slices": s.n_slices} for s in infos]
    ws.update_study(sid, series=series, status="pick-series" if len(series) > 1 else "reading")
    if len(series) == 1:
        return pick_series(ws, sid, series[0]["uid"], infos[0])  # the files are listed already
    return ws.study(sid)


def read_source(ws: Workspace, sid: str):
    """The study's image as Delineo reads it (DICOM series with its headers, or the file)."""
    info = ws.study(sid)
    d = ws.study_dir(sid) / "source"
    if info.get("kind") == "dicom":
        from delineo.io.dicom import read_dicom_series

        return read_dicom_series(d / "dicom", info["series_uid"])
    from delineo.io.files import read_image

    files = [p for p in d.iterdir() if p.name.startswith("upload")]
    if not files:
        raise InputError(f"study {sid}: its source file is missing from the workspace.")
    return read_image(files[0])


def read_volume(ws: Workspace, sid: str):
    """The study's image as a model segments it, from the viewer volume written at upload: the
    same voxels and grid as :func:`read_source` (written exactly: int16 only for integer scans,
    else float32, which is what preprocessing computes in), without re-reading a DICOM series
    (for a 100-slice CT that is most of a second of CPU per run, and the same again to list the
    series first). Exports still use :func:`read_source`, which keeps the DICOM headers."""
    from delineo.io.files import read_image

    info = ws.study(sid)
    image = read_image(ws.image_path(sid))
    return type(image)(image.array, image.affine, info.get("modality", "") if not info.get("modality_guessed") else "",
                       dict(image.meta))


def pick_series(ws: Workspace, sid: str, uid: str, listed: Any = None) -> dict[str, Any]:
    """Read the DICOM series ``uid`` of the study and make it the study's image (``listed``: its
    SeriesInfo when the upload was just listed, so the headers are not scanned a second time)."""
    info = ws.study(sid)
    uids = [s["uid"] for s in info.get("series", [])]
    if uid not in uids:
        raise InputError(f"series '{str(uid)[:80]}' is not one of this study's series.")
    from delineo.io.dicom import read_dicom_series, read_series

    folder = ws.study_dir(sid) / "source" / "dicom"
    try:
        if listed is not None and listed.uid == uid:
            image = read_series(listed, label=str(folder))
        else:
            image = read_dicom_series(folder, uid)
    except InputError as exc:
        raise InputError(_without_paths(str(exc), ws, info.get("name", "upload"))) from None
    ws.update_study(sid, series_uid=uid)
    _write_viewer_image(ws, sid, image, kind="dicom")
    return ws.study(sid)


def _write_viewer_image(ws: Workspace, sid: str, image, kind: str) -> None:
    from delineo.io.files import write_image
    from delineo.io.image import Image

    array = np.asarray(image.array)
    if array.ndim != 3:
        raise InputError(f"{image.meta.get('path', 'upload')}: a 3D image is expected, got shape {array.shape}.")
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    if finite.size == 0:
        raise InputError(f"{image.meta.get('path', 'upload')}: the image holds no finite voxel.")
    modality = (image.modality or "").upper()
    guessed = False
    if modality in ("", "MRI"):
        modality = "CT" if float(finite.min()) <= -900 else "MR"
        guessed = not image.modality
    lo, hi = (float(v) for v in np.percentile(finite[:: max(1, finite.size // 2_000_000)], [0.5, 99.5]))
    window = {"auto": [lo, hi]}
    if modality == "CT":
        window.update({k: [c - w / 2, c + w / 2] for k, (c, w) in CT_PRESETS.items()})
        default = "soft tissue"
    else:
        if modality in ("PT", "PET"):
            window["auto"] = [0.0, hi]
        default = "auto"
    # int16 only when every voxel is an integer in range (checked on all voxels, not a sample: the
    # volume is also what a Run segments, so it must hold the scan's values exactly)
    integral = not np.issubdtype(finite.dtype, np.floating) or bool(np.all(np.equal(np.mod(finite, 1), 0)))
    dtype = np.int16 if integral and finite.min() >= -32768 and finite.max() <= 32767 else np.float32
    out = ws.study_dir(sid) / "image.nii.gz"
    write_image(Image(np.nan_to_num(array).astype(dtype), image.affine), out, dtype=dtype)
    ws.update_study(sid, kind=kind, status="ready", modality=modality, modality_guessed=guessed,
                    shape=[int(s) for s in array.shape], spacing=[round(float(s), 4) for s in image.spacing],
                    windows=window, window=default, ready=now())
