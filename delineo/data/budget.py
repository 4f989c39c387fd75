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
4. A timed probe of candidate set-ups on this device, the way ``delineo train`` runs them
   (:class:`Prober`: a real trainer on a few cases, its own sampling and augmentation, step and
   validation), coarsest-last: the finest spacing (1x, 1.5x, 2x, 3x the target) whose expected
   iterations reach :data:`MIN_STEPS` wins; then the largest batch that still does; then the
   wider network if it also does.
5. Expected iterations (:func:`expected_steps`): the budget less the setup (the preprocessing
   cache, which the trainer does not count; ``train.max_minutes`` is what remains), less the
   validation passes that ``val_every`` implies and the first step's and validation's warm-up,
   divided by the step (data + network, loss and optimiser). The ``train.max_minutes`` comment
   writes this breakdown out.
"""

from __future__ import annotations

import logging
import math
import dataclasses
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)

#: training steps a budget must hold for the plan to count as trainable in it (a CPU reaches
#: the hippocampus plateau in about 1000-2000 steps of batch 4)
MIN_STEPS = 1000
FOV_CONTEXT = 1.25
MIN_FOV_MM = 32.0
FACTORS = (1.0, 1.5, 2.0, 3.0)
#: cases the probe preprocesses and trains on (its patches are drawn from them) ...
PROBE_TRAIN_CASES = 3
#: ... and validates (the validation time per case is scaled to the fold's validation cases)
PROBE_VAL_CASES = 1
#: timed training steps per candidate after the warm-up step, and data batches timed in all
PROBE_STEPS = 2
PROBE_BATCHES = 4


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


def expected_steps(train_s: float, step_s: float, val_s: float, cycle_steps: int, warmup_s: float = 0.0,
                   val_warmup_s: float = 0.0) -> float:
    """Training steps the trainer makes in ``train_s`` counted seconds.

    The trainer counts its steps and its validations against ``train.max_minutes`` (not the
    setup, not the checkpoints): every ``cycle_steps`` steps (``iterations_per_epoch x
    val_every``) a validation pass of ``val_s`` seconds, the first one ``val_warmup_s`` longer,
    and once the first step's ``warmup_s`` (kernels built on first use). Steps stop when the time
    is spent; the final validation then runs past the budget and costs no steps."""
    if not math.isfinite(step_s) or step_s <= 0:
        return 0.0
    avail = max(train_s - warmup_s, 0.0)
    first = cycle_steps * step_s + val_s + val_warmup_s
    if avail < first:
        return min(avail / step_s, cycle_steps)
    avail -= first
    cycle = cycle_steps * step_s + val_s
    full = math.floor(avail / cycle)
    rest = avail - full * cycle
    return (1 + full) * cycle_steps + min(rest / step_s, cycle_steps)


@dataclass
class Candidate:
    """One probed set-up and what its probe measured, in seconds of an unshared machine."""

    mode: str
    factor: float
    spacing: list[float]
    patch: list[int]
    batch: int
    filters: list[int]
    data_s: float = math.inf  # per step: sampling and augmentation of a batch of real cached cases
    net_s: float = 0.0  # per step: forward, loss, backward, optimiser (Trainer.step)
    val_s: float = 0.0  # one validation pass over the fold's validation cases
    warmup_s: float = 0.0  # once: the first step's extra time (kernels built on first use)
    val_warmup_s: float = 0.0  # once: the first validation's extra time
    setup_s: float = 0.0  # once, before the budget starts: preprocessing every case of the fold
    cycle_steps: int = 100  # steps between validations (iterations_per_epoch x val_every)
    n_val: int = 0
    n_cases: int = 0
    precision: str = "fp32"

    @property
    def step_s(self) -> float:
        return self.data_s + self.net_s

    def train_s(self, budget_s: float) -> float:
        """The trainer's budget (``train.max_minutes``): the user's budget less the setup, which the
        trainer does not count, but never less than half of it."""
        return max(budget_s - self.setup_s, budget_s / 2)

    def steps(self, budget_s: float) -> float:
        return expected_steps(self.train_s(budget_s), self.step_s, self.val_s, self.cycle_steps, self.warmup_s,
                              self.val_warmup_s)

    def validations(self, budget_s: float) -> int:
        """Validation passes inside the budget (the final one, after it, not included)."""
        return int(self.steps(budget_s) // self.cycle_steps) if self.n_val else 0


def _levels_and_patch(shape: np.ndarray, max_levels: int = 5) -> tuple[int, list[int]]:
    levels = 2  # a U-Net needs two levels; a tiny patch is padded up to the divisor
    while levels < max_levels and shape.min() / 2 ** levels >= 4:
        levels += 1
    divisor = 2 ** (levels - 1)
    return levels, [int(max(divisor, int(np.ceil(s / divisor)) * divisor)) for s in shape]


def _cpu_seconds(fn: Any, threads: int) -> tuple[Any, float]:
    """``fn()``'s result and the seconds it takes on an unshared machine, measured on a shared one:
    the calling thread's CPU seconds, or this process's CPU seconds per thread when more, never
    more than the wall time. The wall clock counts the other users' turns; CPU seconds do not.
    Spread over ``threads``, the process's CPU seconds include what the intra-op threads lose
    waiting for each other (spinning), as they do in training: a step at two threads is not
    half a step at one (measured here: far less than the 1.8x speed-up the old probe assumed)."""
    t0, c0, own0 = time.perf_counter(), time.process_time(), time.thread_time()
    out = fn()
    wall, cpu, own = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - own0
    return out, min(wall, max(own, cpu / max(threads, 1)))


def _cuda_seconds(fn: Any, threads: int) -> tuple[Any, float]:
    """``fn()``'s result and its wall seconds up to the GPU's finishing it."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def apply_candidate(plan: dict[str, Any], c: Candidate, precision: str, thick: int, needs_resampling: bool
                    ) -> dict[str, Any]:
    """``plan`` with ``c``'s spacing, sampling, width and precision (train and infer)."""
    plan = dict(plan)
    plan["preprocess"] = {**plan["preprocess"], "spacing": c.spacing if needs_resampling else None}
    samp = dict(plan["sampling"])
    samp.update({"mode": c.mode, "patch_size": c.patch, "batch_size": c.batch,
                 "axis": thick if c.mode == "2d" else samp.get("axis", 2)})
    plan["sampling"] = samp
    plan["model"] = {**plan["model"], "filters": c.filters}
    plan["train"] = {**plan["train"], "precision": precision}
    plan["infer"] = {**plan.get("infer", {}), "precision": precision}
    return plan


class Prober:
    """Times candidates the way ``delineo train`` runs them: a real :class:`~delineo.train.loop.Trainer`
    set up on a few cases of fold 0 (preprocessed at the candidate's spacing into a scratch
    cache), its own ``batch`` (sampling and augmentation of the cached cases) and ``step``
    (forward under the precision, loss, backward, optimiser, channels-last as configured) and its
    own ``validate`` (whole-case sliding-window prediction, scoring, writing).

    Times are what each call would take on an unshared machine, measured at the thread count
    training will use (:func:`_cpu_seconds`: CPU seconds, not the wall clock, which on a shared
    CPU counts the other users too). The old probe timed the network alone on random tensors in
    one thread and assumed a 1.8x speed-up on two; a real ``delineo train`` made a third of the
    steps it planned.
    On CUDA the wall clock after a synchronising call is the measure (a GPU is not time-shared
    the same way); the CPU-side sampling is timed the same way."""

    def __init__(self, plan: dict[str, Any], work: Any, device: torch.device, thick: int,
                 spacings: np.ndarray) -> None:
        from delineo.config import config_from_dict
        from delineo.data.sources import load_dataset
        from delineo.data.splits import fold_cases, make_splits

        self.plan, self.work, self.device, self.thick, self.spacings = plan, work, device, thick, spacings
        self.threads = torch.get_num_threads()
        cfg = config_from_dict(plan, source="the plan")
        self.dataset = load_dataset(cfg.data)
        d = cfg.data
        splits = make_splits(self.dataset.cases, d.folds, d.seed, d.stratify, d.test_fraction,
                             val_fraction=d.val_fraction, test_folds=d.test_folds)
        self.train_ids, self.val_ids = fold_cases(splits, 0)
        self.only = (self.train_ids[:PROBE_TRAIN_CASES], self.val_ids[:PROBE_VAL_CASES])
        self.runs = 0
        self.setup_s: dict[Any, float] = {}  # per preprocessing (cache folder): the fold's setup

    def needs_resampling(self, c: Candidate) -> bool:
        sp = np.asarray(c.spacing)
        return bool(np.any(np.abs(self.spacings - sp).max(axis=0) > 0.05 * sp))

    def __call__(self, c: Candidate, precision: str) -> Candidate:
        """Fill ``c``'s measured fields. ``precision`` (train and infer): fp32 or bf16 for a
        candidate; ``auto`` for the plan as written, resolved by the trainer's own probe at the
        thread count training will use (so that its cached verdict is the one training reads)."""
        from delineo.config import config_from_dict
        from delineo.data.cache import CaseCache
        from delineo.preprocess.region import region_axes
        from delineo.train.loop import Trainer

        plan = apply_candidate(self.plan, c, precision, self.thick, self.needs_resampling(c))
        cfg = config_from_dict(plan, source="the probe's plan")
        by_id = {case.case_id: case for case in self.dataset.cases}
        cases = [by_id[i] for i in self.only[0] + self.only[1]]
        cache = CaseCache(self.work / "cache", cfg.preprocess, self.dataset.labels,
                          region_axes(cfg.sampling.mode, cfg.sampling.axis))
        if cache.dir not in self.setup_s:
            todo = [case for case in cases if not cache.is_cached(case)]
            _, prep = _cpu_seconds(lambda: cache.prepare(todo, progress=False), self.threads)
            # preprocessing is per case: every case of the fold takes about as long
            self.setup_s[cache.dir] = prep / max(len(todo), 1) * (len(self.train_ids) + len(self.val_ids))
        c.setup_s = self.setup_s[cache.dir]
        self.runs += 1
        trainer = Trainer(cfg, self.work / f"run{self.runs}", fold=0, cache_root=self.work / "cache",
                          progress=False, track=False, only=self.only)
        trainer.setup()  # precision auto is resolved (and its verdict cached) as training will resolve it
        c.precision = trainer.precision
        tc = cfg.train
        c.cycle_steps = tc.iterations_per_epoch * tc.val_every
        c.n_val, c.n_cases = len(self.val_ids), len(self.train_ids) + len(self.val_ids)
        n = self.threads
        timed = _cpu_seconds if self.device.type != "cuda" else _cuda_seconds
        rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        batches, data = [], []
        for _ in range(max(PROBE_BATCHES, PROBE_STEPS + 1)):
            batch, seconds = timed(lambda: trainer.batch(rng, gen), n)
            batches.append(batch)
            data.append(seconds)
        nets = [timed(lambda: trainer.step(*batch), n)[1] for batch in batches[: PROBE_STEPS + 1]]
        c.net_s = float(np.median(nets[1:]))
        c.data_s = float(np.mean(data[1:]))
        c.warmup_s = max(nets[0] - c.net_s, 0.0) + max(data[0] - c.data_s, 0.0)
        if trainer.val_cases:
            out = [self.work / "predictions"]
            _, first = timed(lambda: trainer.validate(out), n)
            _, again = timed(lambda: trainer.validate(out), n)
            c.val_s = again / len(trainer.val_cases) * c.n_val
            c.val_warmup_s = max(first - again, 0.0)
        log.info("probe: %s spacing %s patch %s batch %d filters %s %s: %.3f s/step (data %.3f, network %.3f), "
                 "validation %.1f s, setup %.1f s", c.mode, c.spacing, c.patch, c.batch, c.filters, c.precision,
                 c.step_s, c.data_s, c.net_s, c.val_s, c.setup_s)
        return c


def budget_plan(fp: Any, plan: dict[str, Any], budget_s: float, device: str = "cpu",
                probe: bool = True, progress: bool = True) -> tuple[dict[str, Any], dict[str, str], list[Candidate]]:
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

    plan = dict(plan)
    plan["train"] = {**plan["train"], "device": dev.type}  # the device the budget was probed on
    batches = (4, 2) if mode == "3d" else (32, 16, 8)
    probed: list[Candidate] = []
    chosen: Optional[Candidate] = None
    with tempfile.TemporaryDirectory(prefix="delineo-plan-") as tmp, \
            tqdm(total=len(FACTORS) * len(batches) + 2, desc="probe", unit="set-up", leave=False,
                 disable=not (probe and progress)) as bar:
        prober = Prober(plan, Path(tmp), dev, thick, spacings) if probe else None
        for f in FACTORS:
            for b in batches:
                c = candidate(f, b, wide=False)
                if prober is not None:
                    prober(c, probe_prec)
                    bar.update()
                probed.append(c)
                if prober is None or c.steps(budget_s) >= MIN_STEPS:
                    chosen = c
                    break
            if chosen:
                break
        fits = chosen is not None
        if chosen is None:  # nothing holds MIN_STEPS: the cheapest set-up, and say so
            chosen = max(probed, key=lambda c: c.steps(budget_s))
            log.warning("no probed set-up fits %d steps in %.0f s on %s; planning the fastest one", MIN_STEPS,
                        budget_s, dev)
        elif prober is not None:
            wide = prober(candidate(chosen.factor, chosen.batch, wide=True), probe_prec)
            bar.update()
            probed.append(wide)
            if wide.steps(budget_s) >= MIN_STEPS:
                chosen = wide
        if prober is not None and want != probe_prec:  # the plan as written: precision resolved as training will
            final = prober(dataclasses.replace(chosen), want)
            # the trainer's precision probe ran first and built the kernels: the first step's and
            # validation's warm-up are the candidate's, which ran without it
            final.warmup_s = max(final.warmup_s, chosen.warmup_s)
            final.val_warmup_s = max(final.val_warmup_s, chosen.val_warmup_s)
            chosen = final
            probed.append(chosen)
            bar.update()

    needs = bool(np.any(np.abs(spacings - np.asarray(chosen.spacing)).max(axis=0) > 0.05 * np.asarray(chosen.spacing)))
    plan = apply_candidate(plan, chosen, want, thick, needs)
    steps = chosen.steps(budget_s)
    train_s = chosen.train_s(budget_s) if probe else budget_s
    plan["train"] = {**plan["train"], "max_minutes": round(train_s / 60, 3)}
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
        "train.device": f"the device the budget was probed on ({dev.type})",
        "train.max_minutes": _accounting(chosen, budget_s, dev, probe),
        "train.precision": ("auto: bf16 where its timed probe is faster and gradients agree (this CPU has bf16 units)"
                            + (f"; resolved here to {chosen.precision}, as training will" if probe else "")
                            if want == "auto" else "fp32: no native bfloat16 on this device"),
        "infer.precision": "as train.precision, checked on the first batch by label agreement",
    }
    return plan, comments, probed


def _accounting(c: Candidate, budget_s: float, dev: torch.device, probe: bool) -> str:
    """The comment on ``train.max_minutes``: where the budget goes and the iterations it buys."""
    if not probe:
        return f"the budget ({budget_s / 60:.1f} min), checked inside epochs; not probed"
    steps = c.steps(budget_s)
    return (f"budget {budget_s:.0f} s = setup {c.setup_s:.0f} s (preprocessing cache of {c.n_cases} cases, "
            f"before the trainer's clock) + {c.train_s(budget_s):.0f} s counted by the trainer, checked before "
            f"every step: {steps:.0f} steps x {c.step_s:.3f} s (data {c.data_s:.3f} s + network, loss and "
            f"optimiser {c.net_s:.3f} s, {c.precision}) + {c.validations(budget_s)} validations x {c.val_s:.1f} s "
            f"({c.n_val} cases, every {c.cycle_steps} steps) + warm-up {c.warmup_s + c.val_warmup_s:.1f} s; then "
            f"a final validation ({c.val_s:.1f} s). Probed on {dev.type} at {torch.get_num_threads()} threads, in CPU "
            f"seconds per thread (not the wall clock, which counts other users). Expected iterations: {steps:.0f}")


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
