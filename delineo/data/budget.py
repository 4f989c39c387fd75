"""Budget-aware planning (``delineo plan DATASET --budget 20m``): the configuration expected to
give the best result in the user's time on this device, decided from the fingerprint and a
short timed probe, and written with a comment on every choice.

The rules, in order (each comment in the written YAML names the fingerprint value and the rule):

1. In-plane spacing: the 90th percentile of the studies' in-plane spacings, so that at most a
   tenth of them are up-sampled (the median up-samples the coarser half, inventing detail and
   making every window cover less anatomy); through-plane: the median.
2. 2D along the thick axis when it is more than 3x the in-plane spacing, else 3D.
3. Field of view: the 90th percentile of the labelled structures' bounding boxes (mm) plus a
   quarter for context, at least 32 mm (small structures still need surroundings) and at most
   the median image extent. The network must see the whole structure and some of what is
   around it; a patch is this field of view in voxels, rounded to the network's divisor.
4. A timed probe of real training steps (forward, loss, backward, optimiser) of candidate
   set-ups on this device, coarsest-last: the finest spacing (1x, 1.5x, 2x, 3x the target)
   whose step lets the budget hold at least :data:`MIN_STEPS` steps (after validation's share)
   wins; then the largest batch that still does; then the wider network if it also does.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

#: training steps a budget must hold for the plan to count as trainable in it (a CPU reaches
#: the hippocampus plateau in about 1000-2000 steps of batch 4)
MIN_STEPS = 1000
#: share of the budget left for validation and checkpoints
VALIDATION_SHARE = 0.2
FOV_CONTEXT = 1.25
MIN_FOV_MM = 32.0
FACTORS = (1.0, 1.5, 2.0, 3.0)
#: speed-up of each thread beyond the first on convolutions (measured about 0.8 on 2 cores here)
PARALLEL_EFFICIENCY = 0.8


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``20m`` / ``1h`` / ``90s`` / ``1h30m`` / a plain number of minutes."""
    if isinstance(text, (int, float)):
        return float(text) * 60
    t = str(text).strip().lower()
    if re.fullmatch(r"[0-9]*\.?[0-9]+", t):
        return float(t) * 60
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*(h|m|min|s)", t)
    if not parts or re.sub(r"([0-9]*\.?[0-9]+)\s*(h|m|min|s)", "", t).strip():
        raise ValueError(f"{text!r} is not a duration; write e.g. 20m, 1h or 90s")
    unit = {"h": 3600, "m": 60, "min": 60, "s": 1}
    return sum(float(v) * unit[u] for v, u in parts)


@dataclass
class Candidate:
    mode: str
    factor: float
    spacing: list[float]
    patch: list[int]
    batch: int
    filters: list[int]
    step_s: float = math.inf

    def steps(self, budget_s: float) -> float:
        return budget_s * (1 - VALIDATION_SHARE) / self.step_s


def _levels_and_patch(shape: np.ndarray, max_levels: int = 5) -> tuple[int, list[int]]:
    levels = 2  # a U-Net needs two levels; a tiny patch is padded up to the divisor
    while levels < max_levels and shape.min() / 2 ** levels >= 4:
        levels += 1
    divisor = 2 ** (levels - 1)
    return levels, [int(max(divisor, int(np.ceil(s / divisor)) * divisor)) for s in shape]


def time_step(c: Candidate, in_channels: int, out_channels: int, device: torch.device, precision: str) -> float:
    """Seconds of one real training step of ``c`` on ``device`` (after a warm-up step)."""
    from delineo.losses import deep_supervised  # noqa: F401  (same loss path as training)
    from delineo.models.unet import UNet

    dims = 3 if c.mode == "3d" else 2
    net = UNet(in_channels, out_channels, dims=dims, filters=c.filters, norm="batch").to(device)
    fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
    net = net.to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(c.batch, in_channels, *c.patch, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, out_channels, (c.batch, *c.patch), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        step()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0
    # On a shared CPU the wall clock measures the other users too, and the CPU time of several
    # threads counts their spin-waiting: one thread's CPU seconds, spread over the threads the
    # training will use at PARALLEL_EFFICIENCY, are what the step costs on an unshared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
    return min(wall, cpu) / (1 + (threads - 1) * PARALLEL_EFFICIENCY)


def budget_plan(fp: Any, plan: dict[str, Any], budget_s: float, device: str = "cpu",
                probe: bool = True) -> tuple[dict[str, Any], dict[str, str], list[Candidate]]:
    """Rewrite the rule-based ``plan`` for ``budget_s`` seconds on ``device``; returns the plan,
    a comment for every decided key (``section.key``) and the probed candidates."""
    from delineo import precision as mixed

    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    spacings = np.asarray(fp.spacings, dtype=float)
    med = np.median(spacings, axis=0)
    thick = int(np.argmax(med))
    inplane_axes = [a for a in range(3) if a != thick]
    inplane_all = spacings[:, inplane_axes].max(axis=1)
    inplane = float(np.percentile(inplane_all, 90))
    anisotropy = med[thick] / max(inplane, 1e-6)
    mode = "2d" if anisotropy > 3 else "3d"
    target = np.array([inplane if a != thick else med[thick] for a in range(3)])
    if mode == "3d" and anisotropy <= 1.2:  # isotropic data: one spacing on every axis
        target[:] = max(inplane, float(np.percentile(spacings.max(axis=1), 50)))
    image_mm = np.median(fp.shapes * spacings, axis=0)
    if len(fp.label_extents):
        label_mm = np.percentile(fp.label_extents, 90, axis=0)
        fov = np.minimum(np.maximum(label_mm * FOV_CONTEXT, MIN_FOV_MM), image_mm)
        fov_note = (f"90th percentile of the labels' extent {np.round(label_mm, 1).tolist()} mm x {FOV_CONTEXT} "
                    f"(at least {MIN_FOV_MM:.0f} mm, at most the median image {np.round(image_mm, 1).tolist()} mm)")
    else:
        fov, fov_note = image_mm, f"no labels read: the median image extent {np.round(image_mm, 1).tolist()} mm"
    n_in = len(fp.channels)
    n_out = len(fp.labels) + 1 if len(fp.labels) > 1 else 2
    want = "auto" if mixed.bf16_native(dev) else "fp32"
    probe_prec = "bf16" if want == "auto" and dev.type == "cpu" else "fp32"

    def candidate(f: float, batch: int, wide: bool) -> Candidate:
        sp = target * f if mode == "3d" else np.array([t * f if a != thick else t for a, t in enumerate(target)])
        vox = fov / sp
        shape = vox if mode == "3d" else np.delete(vox, thick)
        levels, patch = _levels_and_patch(shape)
        base = (24 if wide else 16) if mode == "3d" else (48 if wide else 32)
        return Candidate(mode, f, [round(float(s), 3) for s in sp], patch, batch,
                         [min(base * 2 ** i, 320) for i in range(levels)])

    batches = (4, 2) if mode == "3d" else (32, 16, 8)
    probed: list[Candidate] = []
    chosen: Optional[Candidate] = None
    for f in FACTORS:
        for b in batches:
            c = candidate(f, b, wide=False)
            if probe:
                c.step_s = time_step(c, n_in, n_out, dev, probe_prec)
            probed.append(c)
            log.info("probe: %s spacing %s patch %s batch %d filters %s: %.3f s/step, %.0f steps in budget",
                     c.mode, c.spacing, c.patch, c.batch, c.filters, c.step_s, c.steps(budget_s))
            if not probe or c.steps(budget_s) >= MIN_STEPS:
                chosen = c
                break
        if chosen:
            break
    fits = chosen is not None
    if chosen is None:  # nothing holds MIN_STEPS: the cheapest set-up, and say so
        chosen = min(probed, key=lambda c: c.step_s)
        log.warning("no probed set-up fits %d steps in %.0f s on %s; planning the fastest one", MIN_STEPS, budget_s, dev)
    elif probe:
        wide = candidate(chosen.factor, chosen.batch, wide=True)
        wide.step_s = time_step(wide, n_in, n_out, dev, probe_prec)
        probed.append(wide)
        if wide.steps(budget_s) >= MIN_STEPS:
            chosen = wide

    plan = dict(plan)
    pre = dict(plan["preprocess"])
    needs = bool(np.any(np.abs(spacings - np.asarray(chosen.spacing)).max(axis=0) > 0.05 * np.asarray(chosen.spacing)))
    pre["spacing"] = chosen.spacing if needs else None
    plan["preprocess"] = pre
    samp = dict(plan["sampling"])
    samp.update({"mode": chosen.mode, "patch_size": chosen.patch, "batch_size": chosen.batch,
                 "axis": thick if chosen.mode == "2d" else samp.get("axis", 2)})
    plan["sampling"] = samp
    plan["model"] = {**plan["model"], "filters": chosen.filters}
    train = dict(plan["train"])
    train.update({"max_minutes": round(budget_s / 60, 2), "precision": want})
    plan["train"] = train
    plan["infer"] = {"precision": want}
    steps = chosen.steps(budget_s)
    comments = {
        "preprocess.spacing": (
            f"in-plane {inplane:.3g} mm = 90th percentile of the studies' in-plane spacing "
            f"(median {float(np.median(inplane_all)):.3g}; the coarser studies are not up-sampled), through-plane "
            f"median {med[thick]:.3g} mm" + (f"; x{chosen.factor:g} coarser to fit the budget" if chosen.factor > 1 else "")
            + ("" if needs else "; every study already has it: no resampling")),
        "sampling.mode": f"anisotropy {anisotropy:.2f} (thick axis / in-plane): 2D above 3, else 3D",
        "sampling.axis": f"the thickest axis ({thick}) in 2D" if chosen.mode == "2d" else "unused in 3D",
        "sampling.patch_size": f"field of view {np.round(fov, 1).tolist()} mm: {fov_note}; in voxels, rounded to "
                               f"the divisor",
        "sampling.batch_size": ("not probed" if not probe else
                                f"largest batch whose probed step ({chosen.step_s:.3f} s on {dev.type}) leaves "
                                f"{steps:.0f} >= {MIN_STEPS} steps in the budget" if fits else
                                f"NO probed set-up leaves {MIN_STEPS} steps in the budget: the fastest one "
                                f"({chosen.step_s:.3f} s/step, {steps:.0f} steps); give more time"),
        "model.filters": (f"{len(chosen.filters)} levels (pool while the smallest side stays >= 4 voxels); "
                          f"{'wider' if chosen.filters[0] in (24, 48) else 'base'} width: "
                          + ("the wider net also held the step count" if chosen.filters[0] in (24, 48)
                             else "the wider net did not fit the budget or was not probed")),
        "train.max_minutes": f"the budget ({budget_s / 60:.1f} min), checked inside epochs",
        "train.precision": ("auto: bf16 where its timed probe is faster and gradients agree (this CPU has bf16 units)"
                            if want == "auto" else "fp32: no native bfloat16 on this device"),
        "infer.precision": "as train.precision, checked on the first batch by label agreement",
    }
    return plan, comments, probed


def dump_commented(plan: dict[str, Any], comments: dict[str, str], header: str = "") -> str:
    """YAML of a two-level plan with ``# comment`` lines above the keys that have one."""
    import yaml

    def flow(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, sort_keys=False, width=4096).strip().removesuffix("...").strip()

    lines = [header.rstrip()] if header else []
    for section, body in plan.items():
        if section in comments:
            lines.append(f"# {comments[section]}")
        if not isinstance(body, dict):
            lines.append(f"{section}: {flow(body)}")
            continue
        lines.append(f"{section}:")
        for key, value in body.items():
            note = comments.get(f"{section}.{key}")
            if note:
                lines.append(f"  # {note}")
            lines.append(f"  {key}: {flow(value)}")
    return "\n".join(lines) + "\n"
