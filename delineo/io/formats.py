"""A registry of the image formats beyond NIfTI and the ITK family, by file suffix.

:func:`delineo.io.files.read_image` and :func:`~delineo.io.files.write_image` handle NIfTI and
the ITK formats themselves and look every other suffix up here, so a new format (or a plugin's)
is one :func:`register_format` call rather than another branch in the reader. The built-in
entries: PNG and JPEG (2D radiographs, masks for export), single-image 2D DICOM (X-ray input;
never listed in folder scans, because a folder of ``.dcm`` files is a DICOM *series*), and
NumPy ``.npy`` arrays. Readers are imported when first used, so ``delineo --help`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from delineo.io.image import Image

Reader = Callable[[Path], Image]
Writer = Callable[[Image, Path], None]


@dataclass(frozen=True)
class ImageFormat:
    """How to read (and optionally write) files with one of ``suffixes``.

    ``listed``: files with this suffix count as images when a folder is scanned (MSD folders,
    ``predict`` on a folder); ``False`` for ``.dcm``, whose folders are DICOM series.
    """

    name: str
    suffixes: tuple[str, ...]
    reader: str  # "module:function", imported on first use
    writer: Optional[str] = None
    listed: bool = True

    def read(self, path: Path) -> Image:
        return _load(self.reader)(path)

    def write(self, image: Image, path: Path) -> None:
        if self.writer is None:
            from delineo.errors import InputError

            raise InputError(f"{path}: Delineo reads {self.name} files but does not write them.")
        _load(self.writer)(image, path)


FORMATS: dict[str, ImageFormat] = {}


def register_format(fmt: ImageFormat) -> ImageFormat:
    """Add ``fmt`` under each of its suffixes (lower case, with the dot)."""
    for suffix in fmt.suffixes:
        key = suffix.lower()
        if key in FORMATS and FORMATS[key] != fmt:
            raise ValueError(f"image suffix '{key}' is already registered for {FORMATS[key].name}")
        FORMATS[key] = fmt
    return fmt


def format_for(path: str | Path) -> Optional[ImageFormat]:
    """The registered format of ``path`` (by its last suffix), or None."""
    return FORMATS.get(Path(path).suffix.lower())


def listed_suffixes() -> tuple[str, ...]:
    """Suffixes that count as image files in folder scans."""
    return tuple(s for s, f in FORMATS.items() if f.listed)


def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


register_format(ImageFormat("PNG", (".png",), "delineo.io.planar:read_raster", "delineo.io.planar:write_raster"))
register_format(ImageFormat("JPEG", (".jpg", ".jpeg"), "delineo.io.planar:read_raster",
                            "delineo.io.planar:write_raster"))
register_format(ImageFormat("DICOM image", (".dcm",), "delineo.io.planar:read_dicom_image", listed=False))
register_format(ImageFormat("NumPy", (".npy",), "delineo.io.npy:read_npy", "delineo.io.npy:write_npy"))
