"""2D images: PNG and JPEG radiographs and masks, and single-image DICOM (CR / DX X-rays).

A 2D image becomes an :class:`~delineo.io.image.Image` with one slice, indexed ``[i, j, 0]``
with ``i`` the column and ``j`` the row, and the same RAS affine SimpleITK's LPS geometry
gives (x and y flipped), so a PNG read here and a PNG read by ITK land on the same grid.
Pillow reads and writes the rasters (already a dependency through matplotlib); pydicom reads
the DICOM pixel data.

DICOM: the stored values go through the modality LUT (RescaleSlope / RescaleIntercept);
MONOCHROME1 (minimum = white, common for CR) is inverted to MONOCHROME2 over the stored bit
range, ``(2**BitsStored - 1) - stored`` for unsigned pixels, so bright always means dense;
ViewPosition (PA / AP / LL), Modality and the UIDs are kept in ``meta``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from delineo.errors import InputError
from delineo.io.atomic import atomic_path
from delineo.io.image import Image, affine_from_itk

log = logging.getLogger(__name__)

#: DICOM attributes copied into ``Image.meta`` (when present)
KEPT_ATTRIBUTES = ("ViewPosition", "Modality", "PhotometricInterpretation", "SOPInstanceUID", "StudyInstanceUID",
                   "SeriesInstanceUID", "BodyPartExamined")


def planar_affine(spacing_col: float = 1.0, spacing_row: float = 1.0) -> np.ndarray:
    """RAS affine of a 2D image indexed [column, row, 0] (ITK's convention for 2D files)."""
    return affine_from_itk((spacing_col, spacing_row, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def from_rows_cols(pixels: np.ndarray) -> np.ndarray:
    """(rows, cols[, c]) pixels -> (cols, rows, 1[, c]) voxels."""
    arr = np.swapaxes(pixels, 0, 1)
    return np.ascontiguousarray(arr[:, :, None] if arr.ndim == 2 else arr[:, :, None, :])


def to_rows_cols(image: Image) -> np.ndarray:
    """The inverse of :func:`from_rows_cols` for a one-slice image ([c,] i, j, 1)."""
    arr = np.asarray(image.array)
    if arr.ndim == 2:  # already one slice (write_image drops the axis a 2D input gained)
        return np.ascontiguousarray(arr.T)
    if arr.ndim == 4:  # channel-first
        arr = np.moveaxis(arr, 0, -1)
        if arr.shape[2] != 1:
            raise InputError(f"{image.meta.get('path', 'image')}: a 2D file holds one slice, not {arr.shape[2]}.")
        return np.ascontiguousarray(np.swapaxes(arr[:, :, 0, :], 0, 1))
    if arr.shape[2] != 1:
        raise InputError(f"{image.meta.get('path', 'image')}: a 2D file holds one slice, not {arr.shape[2]}.")
    return np.ascontiguousarray(arr[:, :, 0].T)


def read_raster(path: Path) -> Image:
    """A PNG or JPEG file. Grey stays grey; RGB(A) whose channels are equal becomes grey,
    other colour images become 3 channels (last axis, read as channel-first with allow_4d)."""
    from PIL import Image as PILImage, UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(im, dtype=np.int32)
                pixels = pixels.astype(np.uint16) if pixels.min() >= 0 and pixels.max() < 65536 else pixels
            elif im.mode in ("L", "1", "P"):
                pixels = np.asarray(im.convert("L"))
            else:
                pixels = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{path}: not a readable {path.suffix.lstrip('.').upper()} image ({exc}).") from None
    if pixels.ndim == 3 and (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all():
        pixels = pixels[..., 0]
    return Image(from_rows_cols(pixels), planar_affine(), meta={"path": str(path)})


def write_raster(image: Image, path: Path) -> None:
    """Write a one-slice image as PNG or JPEG. Integer values 0..255 are written as they are
    (a mask keeps its label values: the round trip is exact); PNG keeps 0..65535 as 16 bits;
    anything else (floats, negatives) is scaled min..max onto 0..255, which is lossy and logged.
    JPEG is lossy by nature: use it for viewing, PNG for masks."""
    from PIL import Image as PILImage

    pixels = to_rows_cols(image)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    integer = np.issubdtype(pixels.dtype, np.integer) or pixels.dtype == np.bool_
    if integer and pixels.min() >= 0 and pixels.max() <= 255:
        out = pixels.astype(np.uint8)
    elif integer and not jpeg and pixels.min() >= 0 and pixels.max() <= 65535 and pixels.ndim == 2:
        out = pixels.astype(np.uint16)
    else:
        lo, hi = float(np.min(pixels)), float(np.max(pixels))
        log.info("%s: values %.4g..%.4g scaled to 0..255", path, lo, hi)
        out = np.round((pixels - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    if out.ndim == 3 and out.shape[-1] not in (3, 4):
        raise InputError(f"{path}: {out.shape[-1]} channels cannot be written as a {path.suffix} image (1, 3 or 4).")
    with atomic_path(path, suffix=path.suffix) as tmp:
        pil = PILImage.fromarray(out)
        pil.save(tmp, format="JPEG" if jpeg else "PNG", **({"quality": 95} if jpeg else {}))


def read_dicom_image(path: Path) -> Image:
    """One 2D DICOM image (a radiograph): pixels in modality units, MONOCHROME1 inverted, the
    pixel spacing from PixelSpacing or ImagerPixelSpacing, and ViewPosition kept in meta."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises several types for non-DICOM files
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}).") from None
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file without pixel data (modality {ds.get('Modality', '?')}).")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputError(f"{path}: a multi-frame DICOM object ({frames} frames); give the series folder instead.")
    from delineo.io.dicom import check_pixel_header

    check_pixel_header(ds, path, getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None))
    try:
        stored = ds.pixel_array
    except Exception as exc:  # missing decoder, damaged pixel data
        raise InputError(f"{path}: the pixel data cannot be decoded ({exc}).") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "MONOCHROME1":
        stored = invert_monochrome1(stored, int(ds.get("BitsStored", 8 * stored.dtype.itemsize)),
                                    int(ds.get("PixelRepresentation", 0)))
    elif photometric not in ("MONOCHROME2", "RGB"):
        raise InputError(f"{path}: photometric interpretation {photometric} is not supported "
                         "(MONOCHROME1, MONOCHROME2 or RGB).")
    pixels = np.asarray(stored)
    if photometric != "RGB":
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            pixels = pixels.astype(np.float32) * slope + intercept
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or [1.0, 1.0]
    row_spacing, col_spacing = float(spacing[0]), float(spacing[1])  # DICOM: (between rows, between columns)
    meta = {"path": str(path), **{k: str(ds.get(k)) for k in KEPT_ATTRIBUTES if k in ds}}
    return Image(from_rows_cols(pixels), planar_affine(col_spacing, row_spacing), str(ds.get("Modality", "")), meta)


def invert_monochrome1(stored: np.ndarray, bits_stored: int, pixel_representation: int = 0) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2 over the stored range: ``max - x + min`` where (min, max) is the
    range BitsStored allows (0..2^b-1 unsigned, -2^(b-1)..2^(b-1)-1 signed)."""
    if pixel_representation == 0:
        lo, hi = 0, (1 << bits_stored) - 1
    else:
        lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return (hi + lo - stored.astype(np.int64)).astype(stored.dtype)
