"""Read and write image files (NIfTI, NRRD, MHA/MHD and other ITK formats) with their geometry.

NIfTI goes through nibabel (it keeps the exact affine and header); the ITK formats go through
SimpleITK, whose LPS geometry is converted to Delineo's RAS affine. DICOM series are handled in
:mod:`delineo.io.dicom` and dispatched from :func:`read_image` when the path is a folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from delineo.errors import InputError, short_reason
from delineo.io.atomic import atomic_path
from delineo.io.formats import format_for
from delineo.io.image import Image, affine_from_itk, itk_from_affine

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


def image_suffix(path: str | Path) -> str:
    """The format suffix of a file name ('.nii.gz', '.nrrd', ...), lower case, or ''."""
    from delineo.io.formats import listed_suffixes  # PNG, JPEG, .npy, ... (registry of other formats)

    name = Path(path).name.lower()
    for suffix in sorted(IMAGE_SUFFIXES + listed_suffixes(), key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def case_name(path: str | Path) -> str:
    """File name without its image suffix: 'case_001.nii.gz' -> 'case_001'."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def is_image_file(path: str | Path) -> bool:
    return Path(path).is_file() and image_suffix(path) != ""


def read_image(path: str | Path, *, allow_4d: bool = False, check_finite: bool = True) -> Image:
    """Read one image with its geometry.

    A 4D file is returned channel-first (``[c, i, j, k]``) when ``allow_4d``; otherwise it is an
    error. Missing, unreadable, truncated or non-finite files raise :class:`InputError` with one
    sentence naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    if path.is_dir():
        from delineo.io.dicom import read_dicom_series  # DICOM folders: see delineo.io.dicom

        return read_dicom_series(path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        image = _read_nifti(path)
    elif suffix in ITK_SUFFIXES:
        image = _read_itk(path)
    elif format_for(path) is not None:
        image = format_for(path).read(path)
    else:
        _refuse_bare_dicom(path)
        raise InputError(
            f"{path}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)} "
            "or a DICOM folder)."
        )
    array = image.array
    if array.ndim == 4:
        if array.shape[-1] == 1 and not allow_4d:
            image.array = array[..., 0]
        elif allow_4d:
            image.array = np.moveaxis(array, -1, 0)
        else:
            raise InputError(f"{path}: 4D image of shape {array.shape} where a 3D image is expected.")
    elif array.ndim == 2:
        image.array = array[..., None]
        image.meta["source_ndim"] = 2  # written back 2D by write_image: the output keeps the input's shape
    elif array.ndim != 3:
        raise InputError(f"{path}: {array.ndim}D image where a 3D image is expected.")
    if check_finite and np.issubdtype(image.array.dtype, np.floating):
        bad = ~np.isfinite(image.array)
        if bad.any():
            raise InputError(f"{path}: {int(bad.sum())} voxels are NaN or infinite.")
    image.meta.setdefault("path", str(path))
    return image


def _refuse_bare_dicom(path: Path) -> None:
    """A DICOM file without the .dcm suffix (a DICOMDIR index, or a file of an export such as
    IM000001) is named as what it is, with what to give instead, rather than as an unknown type."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return
    if head[128:132] != b"DICM":
        return
    if path.name.upper() == "DICOMDIR":
        raise InputError(f"{path}: a DICOMDIR index, not an image; give the folder that holds it ({path.parent}): "
                         "the series are found by scanning.")
    raise InputError(f"{path}: a DICOM file without a .dcm suffix; give its series folder ({path.parent}), "
                     "or rename a single 2D image to .dcm.")


#: deflate never compresses better than about 1032:1, so a .nii.gz cannot hold more than this
#: many bytes per byte of file
MAX_GZIP_RATIO = 1100


def _human(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _check_nifti_header(path: Path, img) -> None:
    """Refuse, before any voxel is read or memory allocated, a header whose claimed volume the
    file cannot hold or the machine cannot load, and a geometry that cannot place voxels in the
    patient (zero or non-finite voxel sizes with no usable qform/sform)."""
    header = img.header
    shape = tuple(int(s) for s in header.get_data_shape())
    if any(s <= 0 for s in shape):
        raise InputError(f"{path}: the header gives an empty image shape {shape}.")
    itemsize = header.get_data_dtype().itemsize
    claimed = int(np.prod(shape, dtype=object)) * itemsize
    size = path.stat().st_size
    shape_text = "x".join(map(str, shape))
    if path.name.lower().endswith(".gz"):
        if claimed > size * MAX_GZIP_RATIO:
            raise InputError(f"{path}: the header claims {shape_text} voxels ({_human(claimed)}), more than a "
                             f"gzip file of {size} bytes can hold; the file is corrupt or hostile.")
    else:
        offset = int(header.get_data_offset())
        if offset + claimed > size:
            raise InputError(f"{path}: the header claims {shape_text} voxels ({_human(claimed)}) but the file "
                             f"holds only {size} bytes; it is truncated or its header is wrong.")
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    if total and claimed * 2 > total:
        raise InputError(f"{path}: the header claims {shape_text} voxels ({_human(claimed)}), more than this "
                         f"machine's memory ({_human(total)}) can hold.")
    _check_nifti_geometry(path, img)


def _check_nifti_geometry(path: Path, img) -> None:
    """nibabel silently replaces zero voxel sizes by 1 when it loads a header; read the raw values
    and refuse when nothing defines where the voxels are, warn when only the orientation is unknown."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as fobj:
            raw = type(img.header).from_fileobj(fobj, check=False)
    except Exception:  # noqa: BLE001 - the checked header was already read; keep it
        raw = img.header
    zooms = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    ndim = min(int(raw["dim"][0]), 3)
    zooms = zooms[:max(ndim, 1)]
    qcode, scode = int(raw["qform_code"]), int(raw["sform_code"])
    bad_zooms = not np.all(np.isfinite(zooms)) or np.any(zooms <= 0)
    if scode > 0:
        m = np.asarray(raw.get_sform(), dtype=np.float64)
        if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise InputError(f"{path}: the sform matrix is singular or not finite, so the voxels cannot be "
                             "placed in the patient.")
        return
    if bad_zooms:
        where = "the qform" if qcode > 0 else "no qform or sform"
        raise InputError(f"{path}: voxel sizes {[float(z) for z in zooms]} with {where}: the geometry is "
                         "undefined, so a mask could not be placed in the patient.")
    if qcode == 0:
        log.warning("%s: no qform or sform; the orientation is unknown, voxels are placed by their sizes only "
                    "(NIfTI's fallback), check left/right before clinical use", path)


def _read_nifti(path: Path) -> Image:
    # the file is untrusted: nibabel raises many types (HeaderDataError, struct.error, ...) on
    # hostile headers, and every one of them is the user's file being bad, not a Delineo bug
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable NIfTI file ({short_reason(exc)}).") from exc
    try:
        _check_nifti_header(path, img)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable NIfTI header ({short_reason(exc)}).") from exc
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable NIfTI file ({short_reason(exc)}).") from exc
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {array.dtype} is not supported (expected integers or reals, "
                         "not complex or RGB).")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return Image(np.asarray(array), img.affine, meta={"path": str(path)})


def _read_itk(path: Path) -> Image:
    import SimpleITK as sitk

    try:
        itk = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable {image_suffix(path)} file ({short_reason(exc)}).") from exc
    if itk.GetDimension() not in (2, 3, 4):
        raise InputError(f"{path}: {itk.GetDimension()}D image where a 3D image is expected.")
    array = sitk.GetArrayFromImage(itk)  # (k, j, i) or (k, j, i, c) for vector pixels
    n_comp = itk.GetNumberOfComponentsPerPixel()
    meta = {"path": str(path)}
    if itk.GetDimension() == 2:
        meta["source_ndim"] = 2  # written back 2D by write_image
        array = array[None]
        spacing = list(itk.GetSpacing()) + [1.0]
        origin = list(itk.GetOrigin()) + [0.0]
        d = np.asarray(itk.GetDirection()).reshape(2, 2)
        direction = np.eye(3)
        direction[:2, :2] = d
    else:
        spacing, origin = itk.GetSpacing()[:3], itk.GetOrigin()[:3]
        dim = itk.GetDimension()
        direction = np.asarray(itk.GetDirection()).reshape(dim, dim)[:3, :3]
    if n_comp > 1:
        array = np.transpose(array, (2, 1, 0, 3))
    else:
        array = np.transpose(array, tuple(range(array.ndim))[::-1])
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return Image(np.ascontiguousarray(array), affine_from_itk(spacing, origin, direction), meta=meta)


def write_image(image: Image, path: str | Path, dtype: np.dtype | type | None = None) -> Path:
    """Write ``image`` atomically in the format named by ``path``'s suffix, keeping its geometry."""
    path = Path(path)
    suffix = image_suffix(path)
    array = image.array if dtype is None else image.array.astype(dtype)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    two_d = image.meta.get("source_ndim") == 2 and array.ndim == 3 and array.shape[2] == 1
    if two_d:  # a 2D input gets a 2D output of exactly its shape, not a one-slice volume
        array = array[..., 0]
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix in NIFTI_SUFFIXES:
            data = np.moveaxis(array, 0, -1) if array.ndim == 4 else array
            header = None
            ref = image.meta.get("nifti_header")
            if isinstance(ref, nib.Nifti1Header):
                header = ref.copy()
            img = nib.Nifti1Image(data, image.affine, header=header)
            img.set_data_dtype(data.dtype)
            img.set_qform(image.affine, code=1)
            img.set_sform(image.affine, code=1)
            nib.save(img, str(tmp))
        elif suffix in ITK_SUFFIXES:
            import SimpleITK as sitk

            if array.ndim == 4:
                itk = sitk.GetImageFromArray(np.transpose(array, (3, 2, 1, 0)), isVector=True)
            else:
                itk = sitk.GetImageFromArray(np.transpose(array, tuple(range(array.ndim))[::-1]))
            spacing, origin, direction = itk_from_affine(image.affine)
            if two_d:
                spacing, origin, direction = spacing[:2], origin[:2], direction[:2, :2]
            itk.SetSpacing(tuple(float(s) for s in spacing))
            itk.SetOrigin(tuple(float(o) for o in origin))
            itk.SetDirection(tuple(float(d) for d in direction.ravel()))
            sitk.WriteImage(itk, str(tmp), useCompression=True)
        elif format_for(path) is not None:
            format_for(path).write(Image(array, image.affine, image.modality, image.meta), tmp)
        else:
            raise InputError(f"{path}: unsupported output type (use one of {', '.join(IMAGE_SUFFIXES)}).")
    return path
