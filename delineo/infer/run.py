"""``delineo predict``: segment a file, a folder of files or a DICOM series with a checkpoint
and write each mask with exactly the geometry of its input, as NIfTI / NRRD (optionally with
probabilities) or as DICOM-SEG, RTSTRUCT or an RGB overlay series referencing the source.
All inputs are read and checked before any output is written, so bad input leaves nothing.
"""

from __future__ import annotations

import logging
import time
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from delineo.errors import InputError
from delineo.infer.loaders import load_predictor
from delineo.io.export import FORMATS, write_prediction
from delineo.io.files import IMAGE_SUFFIXES, case_name, image_suffix, is_image_file, read_image, write_image
from delineo.io.image import Image

log = logging.getLogger(__name__)

SUFFIX_BY_FORMAT = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm",
                    "overlay": "_overlay"}


@dataclass
class Job:
    name: str
    source: Path
    image: Optional[Image] = None
    channels: list[Path] = field(default_factory=list)  # multi-channel case: _0000, _0001, ... files
    images: list[Image] = field(default_factory=list)


def group_channels(jobs: list[Job], n_channels: int) -> list[Job]:
    """Join nnU-Net style channel files (``case_0000``, ``case_0001``, ...) into one job per case."""
    pattern = re.compile(r"^(.*)_(\d{4})$")
    cases: dict[str, dict[int, Path]] = {}
    for job in jobs:
        m = pattern.match(job.name)
        if not m:
            raise InputError(f"{job.source}: the model needs {n_channels} channels; name files case_0000, case_0001, ....")
        cases.setdefault(m.group(1), {})[int(m.group(2))] = job.source
    out = []
    for name, files in sorted(cases.items()):
        missing = [f"{name}_{c:04d}" for c in range(n_channels) if c not in files]
        if missing:
            raise InputError(f"{files[min(files)].parent}: case {name} lacks channel file(s) {', '.join(missing)}.")
        out.append(Job(name, files[0], channels=[files[c] for c in range(n_channels)]))
    return out


def _jobs(path: Path, series: Optional[str]) -> list[Job]:
    if not path.exists():
        raise InputError(f"{path}: input not found.")
    if path.is_file():
        return [Job(case_name(path), path)]
    files = sorted(p for p in path.iterdir() if is_image_file(p) and not p.name.startswith("."))
    if files:
        return [Job(case_name(f), f) for f in files]
    from delineo.io.dicom import list_series

    if not list_series(path):
        raise InputError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series in this folder.")
    return [Job(path.name or "series", path)]


def _read(job: Job, series: Optional[str]) -> Image:
    if job.source.is_dir():
        from delineo.io.dicom import read_dicom_series

        return read_dicom_series(job.source, series)
    return read_image(job.source)


def output_path(job: Job, output: Path, single: bool, fmt: Optional[str]) -> Path:
    """The output file (or overlay folder) of one job."""
    if single and fmt != "overlay" and (image_suffix(output) or output.suffix.lower() == ".dcm"):
        return output
    if fmt is None:  # keep the input's own format
        suffix = image_suffix(job.source) or ".nii.gz"
        return output / f"{job.name}{suffix}"
    return output / f"{job.name}{SUFFIX_BY_FORMAT[fmt]}"


def mask_path(out: Path, fmt: Optional[str]) -> Path:
    """The file :func:`write_prediction` writes the mask to for ``out`` (it adds a missing suffix)."""
    if fmt in ("nifti", "nrrd"):
        suffixes = (".nii.gz", ".nii") if fmt == "nifti" else (".nrrd",)
        return out if image_suffix(out) in suffixes else out.with_name(out.name + suffixes[0])
    if fmt in ("dicom-seg", "rtstruct") and not out.suffix:
        return out.with_name(out.name + ".dcm")
    return out


def _write_fmt(job: Job, fmt: Optional[str]) -> Optional[str]:
    """The format a job's mask is written in: None keeps the input file's own format; DICOM
    input defaults to NIfTI (with a sidecar)."""
    return fmt or ("nifti" if job.source.is_dir() else None)


def predict_paths(model: Path, input_path: Path, output: Path, probabilities: bool = False, tta: Optional[bool] = None,
                  device: str = "auto", progress: bool = True, fmt: Optional[str] = None,
                  series: Optional[str] = None, anonymise: bool = False, uncertainty: Optional[str] = None, patient_data: bool = False,
                  skip_existing: bool = False, precision: Optional[str] = None,
                  max_memory: Optional[str] = None) -> list[Path]:
    """Predict every image under ``input_path``; return the written mask paths.

    ``fmt`` is one of nifti, nrrd, dicom-seg, rtstruct, overlay (default: the input's format,
    NIfTI for DICOM input). ``series`` picks one series (UID or number) of a DICOM folder.
    ``tta`` None follows the experiment's ``infer.tta``; True or False overrides it.
    ``skip_existing`` leaves out cases whose mask is already there (to finish an interrupted
    folder: every file is written atomically and the mask last, so an existing mask is complete).
    """
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"--format {fmt}: unknown format (choose one of {', '.join(FORMATS)}).")
    predictor = load_predictor(model, device=device, tta=tta, uncertainty=uncertainty)  # checkpoint or .delineo
    if precision or max_memory:  # --precision / --max-memory over the experiment's infer section
        from delineo.infer.shard import apply_options

        apply_options(predictor, precision, max_memory)
    input_path, output = Path(input_path), Path(output)
    jobs = _jobs(input_path, series)
    single = len(jobs) == 1 and (input_path.is_file() or jobs[0].source.is_dir())
    if not single and image_suffix(output):
        raise InputError(f"{output}: a folder input needs an output folder, not a file name.")
    n_ch = len(predictor.channels)
    if n_ch > 1:
        jobs = group_channels(jobs, n_ch)
        single = len(jobs) == 1 and input_path.is_file()
    if skip_existing:  # the mask is written last, atomically: its presence means the case is complete
        done = [j for j in jobs if mask_path(output_path(j, output, single, fmt), _write_fmt(j, fmt)).exists()]
        if done:
            log.info("--skip-existing: %d of %d case(s) already predicted", len(done), len(jobs))
        jobs = [j for j in jobs if j not in done]
        for j in jobs:  # temporary files a killed run left for the cases still to do (see delineo.io.atomic)
            mask = mask_path(output_path(j, output, single, fmt), _write_fmt(j, fmt))
            names = (mask.name, case_name(mask) + "_probabilities" + (image_suffix(mask) or ".nii.gz"))
            for name in names if mask.parent.is_dir() else ():
                for stale in mask.parent.glob(f".{name}.*.tmp*"):
                    stale.unlink(missing_ok=True)
    for job in jobs:  # read and check every input before writing anything
        if job.channels:
            job.images = [read_image(p) for p in job.channels]
            job.image = job.images[0]
        else:
            job.image = _read(job, series)
            job.images = [job.image]
        if fmt in ("dicom-seg", "rtstruct", "overlay") and not job.source.is_dir():
            raise InputError(f"{job.source}: format {fmt} needs a DICOM series as input, not a {image_suffix(job.source)} file.")
    if anonymise and fmt in ("dicom-seg", "rtstruct", "overlay"):
        raise InputError(f"--anonymise: format {fmt} must carry the patient's identifiers; use nifti or nrrd.")
    model_name = f"{predictor.name} ({Path(str(model)).name})"
    written = []
    for job in tqdm(jobs, desc="predict", unit="case", disable=not progress or single):
        t0 = time.perf_counter()
        mask, probs, extras = predictor.predict(job.images)
        job_fmt = _write_fmt(job, fmt)
        out = mask_path(output_path(job, output, single, fmt), job_fmt)
        # extras and probabilities first, the mask last: a crash leaves no mask without its companions
        for key, extra in extras.items():  # e.g. a pipeline's --uncertainty map, beside the mask
            write_image(extra, out.with_name(case_name(out) + f"_{key}" + (image_suffix(out) or ".nii.gz")))
        if (probabilities or predictor.save_probabilities) and probs is None:
            log.warning("%s: probabilities not written: under --max-memory only labels are kept", job.source)
        elif probabilities or predictor.save_probabilities:
            suffix = image_suffix(out) or ".nii.gz"
            prob_out = out.with_name(case_name(out) + "_probabilities" + suffix)
            write_image(probs, prob_out)
        if job_fmt is None:
            write_image(mask, out)  # same format as the input file
        else:
            out = write_prediction(mask, job.image, out, job_fmt, predictor.labels, colors=predictor.colors,
                                   model_name=model_name, anonymise=anonymise, patient_data=patient_data)
        log.info("%s -> %s in %.2f s", job.source, out, time.perf_counter() - t0)
        written.append(out)
    return written
