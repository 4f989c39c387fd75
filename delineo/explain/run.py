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
from delineo.explain.api import explain_full, sanity
from delineo.explain.layers import list_layers
from delineo.explain.outputs import save_map_nifti, save_panels
from delineo.infer.predictor import Predictor
from delineo.io.files import case_name, read_image
from delineo.preprocess.pipeline import preprocess, restore

log = logging.getLogger(__name__)


def explain_scan(model_path: Path, input_path: Path, out_dir: Path, method: Optional[str] = None,
                 target: Optional[str] = None, layer: Optional[str] = None, slices: Optional[Sequence[int]] = None,
                 label: Optional[int] = None, threshold: Optional[float] = None, reference: Optional[Path] = None,
                 run_sanity: bool = False, params: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Explain one scan; return paths, timing and (with ``run_sanity``) the sanity report.

    ``method``, ``target``, ``layer``, ``threshold`` and ``params`` left as None come from the
    experiment's ``explain:`` section (held in the checkpoint); given ones override it.
    """
    predictor = Predictor.from_checkpoint(model_path, device="cpu")
    meta, cfg = predictor.meta, predictor.cfg
    ex = cfg.explain
    method = method or ex.method
    target = target or ex.target
    layer = layer or ex.layer
    threshold = ex.threshold if threshold is None else threshold
    params = {**ex.params, **(params or {})}
    image = read_image(input_path)
    ref_img = read_image(reference) if reference else None
    x, ref_pre, record = preprocess([image], ref_img, cfg.preprocess)
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
    name = case_name(input_path) if Path(input_path).is_file() else Path(input_path).name
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
    report: dict[str, Any] = {"map": str(nifti), "panels": str(png), "seconds": seconds, "info": result.info}
    if run_sanity:
        rep = sanity(model, x, method, flag_above=ex.sanity_flag_above, target=target, layer=layer, **kwargs,
                     **(params or {}))
        report["sanity"] = rep
    log.info("%s: %s in %.2f s -> %s, %s", name, method, seconds, nifti, png)
    return report


def _reference_mask(ref: np.ndarray, label: Optional[int]) -> np.ndarray:
    """The reference of the explained label (all foreground when no label is chosen)."""
    return ref == label if label is not None else ref > 0


def _save_pattern(pattern: np.ndarray, record, out_dir: Path, stem: str, seconds: float, info: dict) -> dict[str, Any]:
    """Activation maximisation yields a synthetic network input, not a map of the scan: it is
    written on a grid with the training spacing (NIfTI) and as a PNG of its channels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from delineo.io.files import write_image
    from delineo.io.image import Image

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
