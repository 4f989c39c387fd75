"""``delineo explain``: explain a trained model's segmentation of one scan.

The scan is preprocessed exactly as in training, explained on that grid (patch by patch or
slice by slice, blended like prediction), and the map is mapped back to the scan's own grid:
a NIfTI map in the input geometry and a PNG panel of the slices where the structure is largest
(or the slices asked for).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from delineo.errors import InputError
from delineo.explain.api import METHODS, explain_full, sanity
from delineo.explain.layers import list_layers
from delineo.explain.outputs import save_map_nifti, save_panels
from delineo.infer.predictor import Predictor
from delineo.io.files import IMAGE_SUFFIXES, case_name, is_image_file, read_image
from delineo.io.image import Image
from delineo.preprocess.pipeline import preprocess, restore

log = logging.getLogger(__name__)


def channel_inputs(inputs: Path | Sequence[Path], channels: Sequence[str]) -> tuple[str, list[Path]]:
    """(case name, one path per model channel, in order) from what ``delineo explain`` was given.

    The conventions are ``delineo predict``'s, narrowed to one case: a single file or DICOM
    folder for a one-channel model; for an N-channel model either N files (or DICOM folders) in
    channel order, or a folder holding one case's nnU-Net channel files ``case_0000``,
    ``case_0001``, ... (N files named ``case_NNNN`` are put in channel order too). Anything else is
    refused with one sentence naming the inputs and the channels the model expects, because
    explaining a multi-channel model on one channel would run it on input it never saw.
    """
    from delineo.infer.run import Job, group_channels

    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise InputError("explain: an INPUT image is required (or use --list-layers).")
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: input not found.")
    n = len(channels)
    expects = f"the model expects {n} channel(s) ({', '.join(channels)})"
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = sorted(f for f in folder.iterdir() if is_image_file(f) and not f.name.startswith("."))
        if not files:  # a DICOM series folder: one channel
            if n != 1:
                raise InputError(f"{folder}: a DICOM folder is one channel, but {expects}; give {n} inputs in "
                                 "channel order.")
            return folder.name or "series", [folder]
        if n == 1:
            if len(files) != 1:
                raise InputError(f"{folder}: {len(files)} images in the folder; explain takes one case, give its file.")
            return case_name(files[0]), files
        jobs = group_channels([Job(case_name(f), f) for f in files], n)
        if len(jobs) != 1:
            raise InputError(f"{folder}: {len(jobs)} cases ({', '.join(j.name for j in jobs[:5])}"
                             f"{', ...' if len(jobs) > 5 else ''}); explain takes one case, give its {n} channel files.")
        return jobs[0].name, jobs[0].channels
    if len(paths) != n:
        raise InputError(f"{', '.join(map(str, paths))}: {expects}, got {len(paths)} input(s); give one file (or "
                         f"DICOM folder) per channel in that order, or a folder with case_0000 ... case_{n - 1:04d}"
                         f" ({', '.join(IMAGE_SUFFIXES[:2])}, ...).")
    if n == 1:
        p = paths[0]
        return (case_name(p) if p.is_file() else p.name), paths
    named = [Job(case_name(p), p) for p in paths]
    try:  # case_0000, case_0001, ... of one case: channel order from the names
        grouped = group_channels(named, n)
    except InputError:
        grouped = []
    if len(grouped) == 1:
        return grouped[0].name, grouped[0].channels
    return case_name(paths[0]) if paths[0].is_file() else paths[0].name, paths


def channel_attribution(attribution: np.ndarray, prediction: np.ndarray, channels: Sequence[str]) -> dict[str, Any]:
    """Per input channel: mean ``|map|`` and its share of the map's magnitude inside and outside
    the predicted structure (each share list sums to 1, or is all zeros when that region carries
    no attribution). Measured on the network's grid, where every voxel weighs the same."""
    import torch

    from delineo.explain.attribution import channel_shares

    a = torch.as_tensor(np.asarray(attribution, dtype=np.float64))
    shares = channel_shares(a, torch.as_tensor(np.asarray(prediction)))
    mean_abs = a.abs().flatten(1).mean(1).tolist()
    return {"channels": list(channels), "mean_abs": [float(v) for v in mean_abs],
            "share_inside": shares["inside"], "share_outside": shares["outside"]}


def explain_scan(model_path: Path, input_path: Path | Sequence[Path], out_dir: Path, method: Optional[str] = None,
                 target: Optional[str] = None, layer: Optional[str] = None, slices: Optional[Sequence[int]] = None,
                 label: Optional[int] = None, threshold: Optional[float] = None, reference: Optional[Path] = None,
                 run_sanity: bool = False, params: Optional[dict[str, Any]] = None,
                 option_names: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Explain one scan; return paths, timing and (with ``run_sanity``) the sanity report.

    ``input_path`` is one path or one per model channel (see :func:`channel_inputs`).
    ``method``, ``target``, ``layer``, ``threshold`` and ``params`` left as None come from the
    experiment's ``explain:`` section (held in the checkpoint); given ones override it.
    ``option_names`` maps a parameter to the command-line option that set it, so a misplaced
    option is named in the error. For a map with one value per input channel the report holds
    ``channel_attribution`` (see :func:`channel_attribution`), also written as
    ``<case>_<method>_channels.json``.
    """
    predictor = Predictor.from_checkpoint(model_path, device="cpu")
    meta, cfg = predictor.meta, predictor.cfg
    ex = cfg.explain
    method = method or ex.method
    target = target or ex.target
    layer = layer or ex.layer
    threshold = ex.threshold if threshold is None else threshold
    params = {**ex.params, **(params or {})}
    # --param label= / threshold= mean what --label / --threshold mean (they were passed twice)
    if "label" in params:
        given = params.pop("label")
        if label is not None and given != label:
            raise InputError(f"--param label={given} contradicts --label {label}.")
        label = None if given is None else int(given)
    if "threshold" in params:
        threshold = float(params.pop("threshold"))
    _check_option_names(method, params, option_names or {})
    name, paths = channel_inputs(input_path, meta.channels)
    images = [read_image(p) for p in paths]
    image = images[0]
    ref_img = read_image(reference) if reference else None
    x, ref_pre, record = preprocess(images, ref_img, cfg.preprocess)
    if label is None and len(meta.labels) == 1:
        label = next(iter(meta.labels))
    # label values -> the network's class indices (outputs are ordered by sorted label value)
    order = sorted(meta.labels)
    if label is not None and label not in order:
        raise InputError(f"--label {label}: the model's labels are {meta.labels}.")
    channel = None if label is None else order.index(label) + 1
    if ref_pre is not None and len(order) == 1:
        ref_pre = (ref_pre > 0).astype(np.uint8)  # one label (a union model): any labelled voxel
    elif ref_pre is not None:
        lut = np.zeros(int(max(max(order), ref_pre.max())) + 1, dtype=np.uint8)
        lut[order] = np.arange(1, len(order) + 1)
        ref_pre = lut[ref_pre]
    kwargs = dict(mode=meta.mode, patch_size=meta.patch_size if meta.mode == "3d" else None, axis=meta.axis,
                  context=meta.context, threshold=threshold, label=channel, reference=ref_pre)
    model = predictor.model.float().to(memory_format=__import__("torch").contiguous_format)
    t0 = time.perf_counter()
    result = explain_full(model, x, method, target, layer, **kwargs, **(params or {}))
    seconds = time.perf_counter() - t0
    out_dir = Path(out_dir)
    stem = f"{name}_{method}"
    m = result.map
    if method == "activation-maximisation":
        return _save_pattern(m, record, out_dir, stem, seconds, result.info)
    full = restore(m if m.ndim == 4 else m[None], record)
    full = full if m.ndim == 4 else full[0]
    pred = restore(result.prediction.astype(np.uint8), record, is_label=True)
    nifti = save_map_nifti(full, image, out_dir / f"{stem}.nii.gz")
    png = save_panels(out_dir / f"{stem}.png", np.asarray(image.array, dtype=np.float32), full, pred,
                      None if ref_img is None else _reference_mask(np.asarray(ref_img.array), label), slices=slices, axis=meta.axis
                      if meta.mode != "3d" else 2, title=f"{method}: {name}")
    report: dict[str, Any] = {"map": str(nifti), "panels": str(png), "seconds": seconds, "info": result.info,
                              "inputs": [str(p) for p in paths]}
    if len(meta.channels) > 1:
        if m.ndim == x.ndim and m.shape[0] == len(meta.channels):  # one map per input channel
            per = channel_attribution(m, result.prediction, meta.channels)
            report["channel_attribution"] = per
            report["channels_json"] = str(_write_json(out_dir / f"{stem}_channels.json",
                                                      {"case": name, "method": method, **per}))
        else:
            log.info("%s: %s gives one map for all %d input channels (no per-channel attribution); "
                     "an input method (saliency, integrated-gradients, channel-contribution, ...) gives one per channel",
                     name, method, len(meta.channels))
    if run_sanity:
        rep = sanity(model, x, method, flag_above=ex.sanity_flag_above, target=target, layer=layer, **kwargs,
                     **(params or {}))
        report["sanity"] = rep
    log.info("%s: %s in %.2f s -> %s, %s", name, method, seconds, nifti, png)
    return report


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    import json

    from delineo.io.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return path


def _check_option_names(method: str, params: dict[str, Any], option_names: dict[str, str]) -> None:
    """A command-line option the method does not take is named in one sentence (not as a parameter)."""
    import inspect

    from delineo.explain.api import get_method

    spec = get_method(method)
    accepted = inspect.signature(spec.fn).parameters
    for key, option in option_names.items():
        if key in params and key not in accepted:
            users = sorted(n for n, m in METHODS.items() if key in inspect.signature(m.fn).parameters)
            raise InputError(f"{option}: applies to --method {' / '.join(users)}, not to {spec.name}.")


def _reference_mask(ref: np.ndarray, label: Optional[int]) -> np.ndarray:
    """The reference of the explained label (all foreground when no label is chosen)."""
    return ref == label if label is not None else ref > 0


def _save_pattern(pattern: np.ndarray, record, out_dir: Path, stem: str, seconds: float, info: dict) -> dict[str, Any]:
    """Activation maximisation yields a synthetic network input, not a map of the scan: it is
    written on a grid with the training spacing (NIfTI) and as a PNG of its channels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from delineo.io.files import write_image

    arr = np.asarray(pattern, dtype=np.float32)
    vol = arr if arr.ndim == 4 else arr[..., None]  # 2D patterns get a singleton slice axis
    nifti = write_image(Image(vol, np.diag(list(record.spacing) + [1.0])), out_dir / f"{stem}.nii.gz")
    n = vol.shape[0]
    fig = Figure(figsize=(2.5 * n, 2.8))
    for c in range(n):
        ax = fig.add_subplot(1, n, c + 1)
        ax.imshow(vol[c, :, :, vol.shape[3] // 2].T, cmap="gray", origin="lower")
        ax.set_title(f"input channel {c}", fontsize=8)
        ax.axis("off")
    png = out_dir / f"{stem}.png"
    FigureCanvasAgg(fig).print_png(str(png))
    return {"map": str(nifti), "panels": str(png), "seconds": seconds, "info": info}


def model_layers(model_path: Path) -> list[str]:
    return list_layers(Predictor.from_checkpoint(model_path, device="cpu").model)


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``--param steps=64`` -> {'steps': 64} (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--param {item}: expected name=value.")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out
