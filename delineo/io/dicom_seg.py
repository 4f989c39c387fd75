"""DICOM Segmentation objects (DICOM-SEG) in and out, through highdicom.

DICOM-SEG is how a PACS or viewer (OHIF, 3D Slicer, Sectra, ...) stores a label mask beside the
CT/MR it was drawn on. Reading maps segments onto a reference image's grid by geometry (not by
assuming frame order), so a SEG that covers only some slices, or was saved in another slice
order, still lands on the right voxels. Writing produces one segment per label present, tagged
as an automatic segmentation by Delineo and the named model, and referencing the source series.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from delineo.errors import InputError, short_reason
from delineo.io.atomic import atomic_path
from delineo.io.dicom import align_to_grid, ras_from_lps, source_datasets
from delineo.io.export import dicom_export_labels, normalise_name
from delineo.io.image import Image

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def read_dicom_seg(seg_path: str | Path, reference: Image, labels: Mapping[int, str] | None = None) -> Image:
    """Segments of ``seg_path`` as one label image on ``reference``'s grid.

    Label value = segment number, unless ``labels`` ({value: name}) is given: then segments are
    matched to those values by name (case and punctuation ignored) and unmatched segments are
    dropped with a log line. Where segments overlap, the higher value wins (logged). The names
    are returned in ``meta['labels']`` ({value: segment label}).
    """
    import highdicom as hd

    seg_path = Path(seg_path)
    if not seg_path.is_file():
        raise InputError(f"{seg_path}: file not found.")
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as exc:  # highdicom raises ValueError/AttributeError/InvalidDicomError
        raise InputError(f"{seg_path}: not a readable DICOM Segmentation ({short_reason(exc)}).") from exc
    ref_for = reference.meta.get("frame_of_reference_uid")
    seg_for = str(seg.get("FrameOfReferenceUID", "") or "")
    if ref_for and seg_for and ref_for != seg_for:
        raise InputError(
            f"{seg_path}: frame of reference {seg_for} differs from the reference image's {ref_for} "
            "(the segmentation belongs to another acquisition)."
        )
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", "") or f"segment_{int(s.SegmentNumber)}") for s in seg.SegmentSequence}
    try:
        volume = seg.get_volume(combine_segments=False)
    except Exception as exc:
        raise InputError(f"{seg_path}: segmentation frames do not form a volume ({short_reason(exc)}).") from exc

    # highdicom volumes are indexed (slice, row, column) with an LPS affine; Delineo is (i=column,
    # j=row, k=slice) in RAS.
    lps = np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    array = np.asarray(volume.array)
    if array.ndim == 3:
        array = array[..., None]
    array = np.transpose(array, (2, 1, 0, 3))
    numbers = [int(n) for n in volume.get_channel_values(volume.channel_descriptors[0])] if volume.number_of_channel_dimensions else sorted(segments)

    mapping = _segment_values(numbers, segments, labels, seg_path)
    dtype = np.uint8 if max(mapping.values(), default=0) < 256 else np.uint16
    labelled = np.zeros(array.shape[:3], dtype=dtype)
    overlap = 0
    for channel, number in sorted(enumerate(numbers), key=lambda cn: mapping.get(cn[1], 0)):
        value = mapping.get(number)
        if value is None:
            continue
        on = array[..., channel] > 0
        overlap += int(np.count_nonzero(on & (labelled > 0)))
        labelled[on] = value
    if overlap:
        log.warning("%s: %d voxels belong to several segments; the higher label value was kept.", seg_path, overlap)
    image = Image(labelled, ras_from_lps(lps), modality="SEG", meta={"path": str(seg_path)})
    out = align_to_grid(image, reference, what=str(seg_path))
    names = {value: segments.get(number, f"segment_{number}") for number, value in mapping.items()}
    if labels:
        names = {value: labels[value] for value in mapping.values()}
    out.meta = {
        "path": str(seg_path),
        "labels": dict(sorted(names.items())),
        "series_uid": str(seg.get("SeriesInstanceUID", "")),
        "referenced_series_uid": reference.meta.get("series_uid"),
    }
    out.modality = "SEG"
    return out


def _segment_values(
    numbers: list[int], segments: Mapping[int, str], labels: Mapping[int, str] | None, where: Path
) -> dict[int, int]:
    """Segment number -> label value (identity, or by name against ``labels``)."""
    if not labels:
        return {n: n for n in numbers}
    by_name = {normalise_name(name): int(value) for value, name in labels.items()}
    mapping = {}
    for number in numbers:
        name = segments.get(number, "")
        value = by_name.get(normalise_name(name))
        if value is None:
            log.warning("%s: segment %d %r matches no label in %s; dropped.", where, number, name, dict(labels))
            continue
        mapping[number] = value
    return mapping


def write_dicom_seg(
    mask: Image,
    source: Image,
    out_path: str | Path,
    labels: Mapping[int, str],
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    model_name: str = "delineo",
    *,
    model_version: str | None = None,
    series_number: int | None = None,
    series_description: str | None = None,
) -> Path:
    """Write ``mask`` (labels on ``source``'s grid) as a DICOM-SEG referencing ``source``.

    One segment per label present, numbered 1..N in increasing label value (read it back with
    ``labels=`` to get the original values), each an AUTOMATIC segment whose algorithm
    identification names Delineo and ``model_name``. Empty frames are omitted.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from delineo import __version__

    out_path = Path(out_path)
    mask, values, names, rgb = dicom_export_labels(mask, source, out_path, labels, colors, "a DICOM-SEG")
    if source.meta.get("generated_uids"):
        log.warning(
            "%s: the source series has no UIDs of its own; the SEG references generated UIDs and "
            "will not link to the original images in a PACS.", out_path,
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"Delineo {model_name}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=str(model_version or __version__),
        source="Delineo",
    )
    descriptions = []
    lookup = np.zeros(max(values) + 1, dtype=np.uint16 if len(values) > 255 else np.uint8)
    for number, value in enumerate(values, start=1):
        category, kind = property_codes(names[value])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names[value][:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label {value}",
                tracking_uid=generate_uid(),
                display_color=hd.color.CIELabColor(*rgb_to_cielab(rgb[value])),
            )
        )
        lookup[value] = number
    frames = np.ascontiguousarray(lookup[np.asarray(mask.array).astype(np.int64)].transpose(2, 1, 0))
    sources = source_datasets(source)
    number = series_number if series_number is not None else _derived_series_number(source, 900)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="Delineo",
            manufacturer_model_name=model_name[:64],
            software_versions=f"delineo {__version__}",
            device_serial_number="0",
            content_label="DELINEO",
            content_description=f"Automatic segmentation by Delineo model {model_name}"[:64],
            series_description=(series_description or f"Delineo {model_name} segmentation")[:64],
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{out_path}: could not build a DICOM-SEG from {source.meta.get('path')} ({short_reason(exc)}).") from exc
    with atomic_path(out_path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    log.info("Wrote DICOM-SEG with %d segments to %s.", len(values), out_path)
    return out_path


def _derived_series_number(source: Image, offset: int) -> int:
    number = source.meta.get("series_number")
    return int(number) + offset if isinstance(number, int) and 0 <= number < 2**31 - offset else offset


def property_codes(name: str):
    """(category, type) SNOMED codes for a structure name; generic tissue when unknown.

    Lesions and tumours are 'Morphologically abnormal structure'; known organs (the pydicom code
    dictionary) are 'Anatomical structure' with their own code; anything else is 'Tissue'.
    """
    from pydicom.sr.codedict import codes

    key = normalise_name(name)
    for word in ("tumour", "tumor", "neoplasm", "cancer", "metasta", "gtv"):
        if word in key:
            return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    for word in ("lesion", "nodule"):
        if word in key:
            return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    words = [w for w in str(name).replace("-", "_").replace(" ", "_").split("_") if w]
    candidates = ["".join(w.capitalize() for w in words)] + [w.capitalize() for w in words]
    for candidate in candidates:
        code = getattr(codes.SCT, candidate, None) if candidate.isidentifier() else None
        if code is not None:
            return codes.SCT.AnatomicalStructure, code
    return codes.SCT.Tissue, codes.SCT.Tissue


def rgb_to_cielab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB (0-255) to CIE L*a*b* (D65), the colour space DICOM uses for display colours."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = m @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return (float(np.clip(lab[0], 0, 100)), float(np.clip(lab[1], -128, 127)), float(np.clip(lab[2], -128, 127)))
