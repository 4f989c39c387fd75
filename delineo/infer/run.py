"""``delineo predict``: segment a file or a folder of files with a checkpoint and write each
mask (and optionally its probabilities) with exactly the shape, affine and orientation of its
input. All inputs are checked before any output is written, so bad input leaves nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm import tqdm

from delineo.errors import InputError
from delineo.infer.predictor import Predictor
from delineo.io.files import IMAGE_SUFFIXES, case_name, image_suffix, is_image_file, read_image, write_image

log = logging.getLogger(__name__)


def _inputs(path: Path) -> list[Path]:
    if not path.exists():
        raise InputError(f"{path}: input not found.")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if is_image_file(p) and not p.name.startswith("."))
    if not files:
        raise InputError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
    return files


def output_path(inp: Path, output: Path, single: bool) -> Path:
    if single and image_suffix(output):
        return output
    suffix = image_suffix(inp) or ".nii.gz"
    return output / f"{case_name(inp)}{suffix}"


def predict_paths(model: Path, input_path: Path, output: Path, probabilities: bool = False, tta: bool = False,
                  device: str = "auto", progress: bool = True) -> list[Path]:
    """Predict every image under ``input_path``; return the written mask paths."""
    predictor = Predictor.from_checkpoint(model, device=device, tta=tta)
    files = _inputs(Path(input_path))
    single = len(files) == 1 and Path(input_path).is_file()
    if not single and image_suffix(output):
        raise InputError(f"{output}: a folder input needs an output folder, not a file name.")
    n_ch = len(predictor.meta.channels)
    if n_ch > 1:
        raise InputError(f"{model}: this model needs {n_ch} channels; predict them with the Python API "
                         "(Predictor.predict_images) or an MSD-style folder of _0000.. files.")
    images = []
    for f in files:  # validate every input before writing anything
        images.append(read_image(f))
    written = []
    for f, image in tqdm(list(zip(files, images)), desc="predict", unit="case", disable=not progress or single):
        t0 = time.perf_counter()
        mask, probs = predictor.predict_images([image])
        out = output_path(f, Path(output), single)
        write_image(mask, out)
        if probabilities or predictor.cfg.infer.save_probabilities:
            prob_out = out.with_name(case_name(out) + "_probabilities" + (image_suffix(out) or ".nii.gz"))
            write_image(probs, prob_out)
        log.info("%s -> %s in %.2f s", f, out, time.perf_counter() - t0)
        written.append(out)
    return written
