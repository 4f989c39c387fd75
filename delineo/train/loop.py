"""The training loop: one code path for CPU, one GPU, and several processes under ``torchrun``.

Resumability is designed in, not bolted on: every epoch draws its samples, augmentations and
dropout masks from generators seeded by (seed, epoch, rank), and ``last.pt`` (written
atomically after every epoch) holds the weights, optimiser, schedule, log rows and elapsed
time. A run killed at any point (even ``kill -9`` mid-epoch) and resumed with ``--resume``
therefore repeats the interrupted epoch exactly and ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from delineo.augment.transforms import Augmenter
from delineo.config import ExperimentConfig, save_config
from delineo.data.cache import CaseCache
from delineo.data.sources import Case, load_dataset, output_channels, reference_for, segmenter_labels
from delineo.data.splits import fold_cases, load_or_make_splits
from delineo.errors import DelineoError, InputError
from delineo.io.atomic import write_text_atomic
from delineo.io.files import write_image
from delineo.io.image import Image
from delineo.infer.predictor import Predictor, build_model, pick_device
from delineo.modelfile.checkpoint import ModelMeta, read_checkpoint_file, save_checkpoint
from delineo.losses import deep_supervised
from delineo import precision as mixed
from delineo.preprocess.region import region_axes
from delineo.registry import LOSSES, OPTIMIZERS, SCHEDULES
from delineo.train.classify import MONITOR, class_targets, validate_classifier
from delineo.train.freeze import EncoderFreezer
from delineo.train.init_from import init_from
from delineo.train.optim import set_momentum
from delineo.track.tracker import NullTracker, start_tracker
from delineo.sampling.mirror import with_flip_copies
from delineo.sampling.patches import PatchSampler, default_patch_size

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def run_dir_for(runs_root: Path, cfg: ExperimentConfig, fold: Optional[int]) -> Path:
    return Path(runs_root) / cfg.name / (f"fold_{fold}" if fold is not None else "all")


def memory_format(cfg: ExperimentConfig, dims: int) -> torch.memory_format:
    if not cfg.train.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if dims == 3 else torch.channels_last


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    best_metric: float = -math.inf
    best_epoch: int = -1
    elapsed: float = 0.0
    bad_validations: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains one fold of an experiment into ``run_dir``."""

    def __init__(self, cfg: ExperimentConfig, runs_root: Path, fold: Optional[int] = 0, resume: bool = False,
                 cache_root: Optional[Path] = None, progress: bool = True, track: bool = True,
                 only: Optional[tuple[list[str], list[str]]] = None) -> None:
        self.cfg, self.fold, self.resume, self.progress = cfg, fold, resume, progress
        #: (train ids, validation ids) kept of the fold: the budget planner's probe sets up a real
        #: trainer on a few cases (delineo.data.budget) instead of preprocessing the whole dataset
        self.only = only
        self.track = track  # False for runs that are not trainings (lr-find): nothing in the database
        self.device = pick_device(cfg.train.device)
        self.dist = init_distributed(self.device)
        if self.device.type == "cuda" and self.dist.world > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.exp_dir = Path(runs_root) / cfg.name
        self.run_dir = run_dir_for(runs_root, cfg, fold)
        self.cache_root = Path(cache_root) if cache_root else self.exp_dir / "cache"
        self.show = progress and self.dist.main

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, d = self.cfg, self.dist
        last = self.run_dir / "checkpoints" / "last.pt"
        if last.exists() and not self.resume:
            raise DelineoError(f"{self.run_dir}: already holds a run; use --resume to continue it or remove the folder.")
        self.dataset = load_dataset(cfg.data)
        by_id = {c.case_id: c for c in self.dataset.cases}
        if d.main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            self.splits = load_or_make_splits(self.exp_dir / "splits.json", self.dataset.cases, cfg.data.folds,
                                              cfg.data.seed, cfg.data.stratify, cfg.data.test_fraction,
                                              val_fraction=cfg.data.val_fraction, test_folds=cfg.data.test_folds)
        d.barrier()
        if not d.main:
            self.splits = json.loads((self.exp_dir / "splits.json").read_text())
        train_ids, val_ids = fold_cases(self.splits, self.fold)
        if self.only is not None:
            keep_train, keep_val = set(self.only[0]), set(self.only[1])
            train_ids = [i for i in train_ids if i in keep_train]
            val_ids = [i for i in val_ids if i in keep_val]
        self.train_cases = [by_id[i] for i in train_ids]
        self.val_cases = [by_id[i] for i in val_ids]
        self.cache = CaseCache(self.cache_root, cfg.preprocess, self.dataset.labels,
                               region_axes(cfg.sampling.mode, cfg.sampling.axis))
        if d.main:
            t0 = time.perf_counter()
            self.cache.prepare(self.train_cases + self.val_cases, progress=self.show)
            log.info("preprocessing ready in %.1f s (%d cases)", time.perf_counter() - t0,
                     len(self.train_cases) + len(self.val_cases))
        d.barrier()
        shard = self.train_cases[d.rank :: d.world] if d.world > 1 else self.train_cases
        self.train_data = [self.cache.load(c) for c in shard]
        if cfg.sampling.flip_copies:  # mirrored copies as extra training cases (delineo.sampling.mirror)
            self.train_data = with_flip_copies(self.train_data, cfg.sampling.flip_copies)
        s = cfg.sampling
        dims = 3 if s.mode == "3d" else 2
        n_ch = len(self.dataset.channels)
        in_ch = n_ch * (2 * s.context + 1 if s.mode == "2.5d" else 1)
        self.classify = cfg.train.task == "classification"
        out_ch = output_channels(cfg.model, self.dataset.labels, self.classify)
        torch.manual_seed(cfg.train.seed)
        labels = dict(self.dataset.labels) if self.classify else segmenter_labels(self.dataset.labels, out_ch)
        if len(labels) < len(self.dataset.labels) and not self.classify:
            log.info("one output for labels %s: the model learns their union, '%s'", self.dataset.labels,
                     next(iter(labels.values())))
        meta = ModelMeta(in_ch, out_ch, dims, s.mode, [], s.axis, s.context if s.mode == "2.5d" else 0,
                         labels, list(self.dataset.channels))
        self.model = build_model(cfg, meta).to(self.device)
        if cfg.train.init_from and not (self.resume and last.exists()):  # a resumed run has its own weights
            init_from(self.model, cfg.train.init_from, out_ch)
        self.memory_format = memory_format(cfg, dims)
        self.model = self.model.to(memory_format=self.memory_format)
        meta.divisor = int(getattr(self.model, "divisor", 16))
        shapes = [c.image.shape[1:] for c in self.train_data]
        meta.patch_size = list(s.patch_size) if s.patch_size else default_patch_size(shapes, s.mode, s.axis, meta.divisor)
        self.meta = meta
        self.sampler = PatchSampler(self.train_data, s.mode, meta.patch_size, s.axis, s.context, s.foreground_fraction,
                                    s.positive_only, s.slice_filter)
        if self.sampler.selection is not None and d.main:  # counts for the log and the report
            write_text_atomic(self.run_dir / "slice_filter.json", json.dumps(self.sampler.selection.counts, indent=1))
        self.augmenter = Augmenter(cfg.augment, dims)
        self.loss_fn = LOSSES.build(cfg.loss, "loss", num_classes=out_ch)
        self.optimizer = OPTIMIZERS.build(cfg.train.optimizer, "train.optimizer", params=self.model.parameters())
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.schedule = SCHEDULES.build(cfg.train.schedule or {"name": "constant"}, "train.schedule")
        self.precision = self._resolve_precision()
        self.amp = cfg.train.amp and self.device.type == "cuda" and self.precision == "fp32"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = TrainState()
        if self.resume and last.exists():
            for stale in last.parent.glob(".*.tmp*"):  # half-written files of a killed run
                stale.unlink()
            self._load(last)
        self.net = self.model
        if d.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.freezer = (EncoderFreezer(self.model, cfg.train.freeze_encoder_epochs, d.world > 1)
                        if cfg.train.freeze_encoder_epochs else None)
        if d.main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            write_text_atomic(self.run_dir / "cases.json", json.dumps(
                {"fold": self.fold, "train": [c.case_id for c in self.train_cases],
                 "val": [c.case_id for c in self.val_cases]}, indent=1))
        # the experiment database (rank 0 only; never raises, never blocks an epoch)
        self.tracker = (start_tracker(self.run_dir, cfg.to_dict(), self.fold, self.resume, self.exp_dir.parent)
                        if d.main and self.track else NullTracker())
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("%s: %s with %.2f M parameters, %s patches %s, %d train / %d val cases, device %s x%d",
                 self.run_dir, cfg.model.get("name"), n_params / 1e6, s.mode, meta.patch_size,
                 len(self.train_cases), len(self.val_cases), self.device, d.world)

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict[str, Any]:
        st = self.state
        return {
            "format": "delineo-checkpoint/1",
            "config": self.cfg.to_dict(),
            "meta": self.meta.to_dict(),
            "model_state": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": {"epoch": st.epoch, "best_metric": st.best_metric, "best_epoch": st.best_epoch,
                      "elapsed": st.elapsed, "bad_validations": st.bad_validations, "rows": st.rows},
        }

    def _save(self, path: Path, ckpt: dict[str, Any]) -> None:
        save_checkpoint(path, ckpt)

    def _load(self, path: Path) -> None:
        try:
            ckpt = read_checkpoint_file(path, map_location=self.device)
        except InputError as exc:
            raise InputError(f"{path}: cannot resume, {exc}") from None
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.scaler.load_state_dict(ckpt["scaler"])
        s = ckpt["state"]
        self.state = TrainState(s["epoch"], s["best_metric"], s["best_epoch"], s["elapsed"], s["bad_validations"],
                                list(s["rows"]))
        log.info("resuming %s at epoch %d", path, self.state.epoch)

    # ------------------------------------------------------------------ train
    def progress_fraction(self, epoch_fraction: float = 0.0, epoch_seconds: float = 0.0) -> float:
        """Training progress in [0, 1]: epochs done (plus the fraction of the current one) over
        ``train.epochs``, or time spent over ``train.max_minutes`` when that is further."""
        tc = self.cfg.train
        p = (self.state.epoch + epoch_fraction) / tc.epochs
        if tc.max_minutes:
            p = max(p, (self.state.elapsed + epoch_seconds) / (tc.max_minutes * 60))
        return min(p, 1.0)

    def apply_schedule(self, epoch_fraction: float = 0.0, epoch_seconds: float = 0.0) -> None:
        """Set lr (and momentum) for the next step. Called every iteration, so that progress-based
        schedules (one-cycle, cosine, poly) are smooth within long epochs, as per-batch schedulers
        are; epoch-based ones (step, exponential, cyclic, plateau) change between epochs only."""
        st = self.state
        progress = self.progress_fraction(epoch_fraction, epoch_seconds)
        factor = self.schedule.factor(st.epoch, progress)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * factor
        m = self.schedule.momentum(st.epoch, progress)
        if m is not None:
            set_momentum(self.optimizer, m)

    def train_epoch(self) -> dict[str, float]:
        cfg, st = self.cfg, self.state
        tc = cfg.train
        seed = _seed_for(tc.seed, st.epoch, self.dist.rank)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout masks
        self.net.train()
        self.augmenter.epoch = st.epoch  # transforms switched on from an epoch (augment.cutout.from_epoch)
        if self.freezer is not None:
            self.freezer.start_epoch(st.epoch)
        losses, t_data, t_net = [], 0.0, 0.0
        # A single process may end an epoch early when the time budget runs out, so that a budget
        # shorter than one long epoch (big networks on a CPU) is still kept; under DDP the ranks
        # would have to agree every step, so there the budget is checked between epochs only.
        single = self.dist.world == 1
        remaining = tc.max_minutes * 60 - st.elapsed if tc.max_minutes and single else None
        bar = tqdm(range(tc.iterations_per_epoch), desc=f"epoch {st.epoch}", unit="it", leave=False,
                   disable=not self.show)
        epoch_start = time.perf_counter()
        for i in bar:
            t0 = time.perf_counter()
            if remaining is not None and losses and t0 - epoch_start >= remaining:
                log.info("time budget reached after %d of %d iterations of epoch %d", len(losses),
                         tc.iterations_per_epoch, st.epoch)
                break
            # wall-clock progress inside an epoch differs between DDP ranks: there, iterations only
            self.apply_schedule(i / tc.iterations_per_epoch, t0 - epoch_start if single else 0.0)
            xt, yt = self.batch(rng, gen)
            t1 = time.perf_counter()
            loss = self.step(xt, yt)
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_net += t2 - t1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        tenth = max(1, len(losses) // 10)  # shows whether the loss moves inside a long epoch
        return {"train_loss": float(np.mean(losses)), "train_loss_start": float(np.mean(losses[:tenth])),
                "train_loss_end": float(np.mean(losses[-tenth:])), "lr": self.optimizer.param_groups[0]["lr"],
                "iterations": len(losses), "data_seconds": t_data, "net_seconds": t_net}

    def step(self, xt: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch: forward under the resolved precision, the loss in
        float32, backward, clipping, the optimiser. The budget planner times this very method."""
        tc = self.cfg.train
        with mixed.autocast(self.device, self.precision) if self.precision == "bf16" else \
                torch.autocast(self.device.type, enabled=self.amp):
            out = self.net(xt)
        loss = deep_supervised(self.loss_fn, _float(out), yt)  # the loss in float32, always
        if not torch.isfinite(loss):
            raise DelineoError(f"{self.run_dir}: the loss became {loss.item()} at epoch {self.state.epoch}; "
                               "lower train.optimizer.lr.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.freezer is not None:
            self.freezer.drop_grads()
        if tc.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def _resolve_precision(self) -> str:
        """train.precision as fp32 or bf16; ``auto`` times one training step of this network both ways."""
        want = self.cfg.train.precision
        if want != "auto":
            return mixed.resolve(want, self.device, "train")
        xt, yt = self.batch(np.random.default_rng(0), torch.Generator().manual_seed(0))
        probe = mixed.training_probe(self.model.train(), xt, lambda out: deep_supervised(self.loss_fn, _float(out), yt))
        what = f"train|{self.cfg.model}|{tuple(xt.shape)}|{self.memory_format}"
        return mixed.resolve("auto", self.device, what, probe)

    def batch(self, rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented training batch on the device; classifiers get one class per sample."""
        x, y = self.sampler.sample(self.cfg.sampling.batch_size, rng)
        xt, yt = self.augmenter(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), gen)
        if self.classify:
            yt = class_targets(yt, self.meta.out_channels)
        xt = xt.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return xt, yt.to(self.device, non_blocking=True)

    # -------------------------------------------------------------- validate
    def validate(self, save_dirs: list[Path]) -> dict[str, float]:
        """Predict every validation case whole, as ``predict`` does, and score it per patient."""
        if self.classify:
            return validate_classifier(self, save_dirs)
        predictor = Predictor(self.model, self.cfg, self.meta, self.device, tta=False)
        per_label: dict[str, list[float]] = {name: [] for name in self.meta.labels.values()}
        case_means = []
        for case in tqdm(self.val_cases, desc="validate", unit="case", leave=False, disable=not self.show):
            cached = self.cache.load(case)
            seg, _ = predictor.predict_preprocessed(np.asarray(cached.image), cached.record, cached.region)
            ref = self._reference(case)
            dices = []
            for value, name in self.meta.labels.items():
                d = dice(seg == value, ref.array == value)
                per_label[name].append(d)
                dices.append(d)
            case_means.append(float(np.mean(dices)))
            for folder in save_dirs:
                write_image(ref.with_array(seg.astype(np.uint8)), folder / f"{case.case_id}.nii.gz")
        self.model.train()
        out = {f"val_dice_{n}": float(np.mean(v)) for n, v in per_label.items()}
        out["val_dice"] = float(np.mean(case_means))
        return out

    def _reference(self, case: Case) -> Image:
        if not hasattr(self, "_refs"):
            self._refs: dict[str, Image] = {}
        if case.case_id not in self._refs:
            _, label = case.load()
            self._refs[case.case_id] = label.with_array(reference_for(label.array, self.dataset.labels,
                                                                      self.meta.labels))
        return self._refs[case.case_id]

    # -------------------------------------------------------------------- run
    def run(self) -> Path:
        self.setup()
        cfg, st, d = self.cfg, self.state, self.dist
        tc = cfg.train
        # under a time budget the bar counts minutes, so its ETA is the real one
        timed = bool(tc.max_minutes)
        bar = tqdm(total=tc.max_minutes if timed else tc.epochs,
                   initial=min(st.elapsed / 60, tc.max_minutes) if timed else st.epoch, desc="train",
                   unit="min" if timed else "epoch", disable=not self.show,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min [{elapsed}<{remaining}{postfix}]" if timed else None)
        while st.epoch < tc.epochs:
            if tc.max_minutes and st.elapsed >= tc.max_minutes * 60:
                break  # a resumed run whose budget is already spent
            t0, c0 = time.perf_counter(), time.process_time()
            row: dict[str, Any] = {"epoch": st.epoch}
            row.update(self.train_epoch())
            stop = False
            last_epoch = st.epoch + 1 >= tc.epochs
            over_time = bool(tc.max_minutes) and st.elapsed + (time.perf_counter() - t0) >= tc.max_minutes * 60
            if d.main and self.val_cases and ((st.epoch + 1) % tc.val_every == 0 or last_epoch or over_time):
                is_snapshot = st.epoch in tc.snapshot_epochs or bool(tc.snapshot_every and
                                                                     (st.epoch + 1) % tc.snapshot_every == 0)
                tmp_dir = self.run_dir / "predictions" / ".candidate"
                dirs = [tmp_dir] + ([self.run_dir / "predictions" / f"epoch_{st.epoch:04d}"] if is_snapshot else [])
                metrics = self.validate(dirs)
                row.update(metrics)
                score = metrics[MONITOR if self.classify else "val_dice"]
                self.schedule.observe(score)
                if score > st.best_metric:
                    st.best_metric, st.best_epoch, st.bad_validations = score, st.epoch, 0
                    self._promote(tmp_dir, self.run_dir / "predictions" / "best")
                    row["best"] = 1
                else:
                    st.bad_validations += 1
                    _rmtree(tmp_dir)  # predictions of a model that is not the best are not kept
                if tc.early_stopping_patience and st.bad_validations >= tc.early_stopping_patience:
                    log.info("early stopping after %d validations without improvement", st.bad_validations)
                    stop = True
            row["seconds"] = time.perf_counter() - t0
            # this process's CPU seconds in the epoch (all its threads): against ``seconds`` it says
            # how much of the machine the run had, on a CPU shared with other users
            row["cpu_seconds"] = time.process_time() - c0
            st.elapsed += row["seconds"]
            st.epoch += 1
            st.rows.append(row)
            if tc.max_minutes and st.elapsed >= tc.max_minutes * 60:
                log.info("time budget of %.1f min reached after %d epochs", tc.max_minutes, st.epoch)
                stop = True
            stop = self._agree(stop)
            if d.main:
                ckpt = self._checkpoint()
                if row.get("best") or not self.val_cases:
                    self._save(self.run_dir / "checkpoints" / "best.pt", ckpt)
                self._save(self.run_dir / "checkpoints" / "last.pt", ckpt)
                if tc.checkpoint_every and st.epoch % tc.checkpoint_every == 0:
                    self._save(self.run_dir / "checkpoints" / f"epoch_{st.epoch:04d}.pt", ckpt)
                self._write_log()
                self.tracker.epoch(row, st.epoch)  # st.epoch: epochs done, the database's 1-based epoch
            over = timed and st.elapsed >= tc.max_minutes * 60
            bar.update((bar.total - bar.n if over else min(row["seconds"] / 60, bar.total - bar.n)) if timed else 1)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", dice=f"{row.get('val_dice', float('nan')):.3f}")
            log.info("epoch %d: loss %.4f%s%s lr %.2e %.1fs", row["epoch"], row["train_loss"],
                     f" val dice {row['val_dice']:.4f}" if "val_dice" in row else "",
                     f" val F1 {row[MONITOR]:.4f}" if MONITOR in row else "", row["lr"], row["seconds"])
            if stop:
                break
        bar.close()
        self.tracker.close("finished")
        d.barrier()
        return self.run_dir

    def _agree(self, stop: bool) -> bool:
        """All ranks stop together (rank 0 decides on validation, every rank on time)."""
        if self.dist.world <= 1:
            return stop
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _promote(self, candidate: Path, best: Path) -> None:
        """Replace the best predictions folder with the candidate in one rename."""
        old = best.with_name(".old_best")
        if old.exists():
            _rmtree(old)
        if best.exists():
            os.replace(best, old)
        os.replace(candidate, best)
        if old.exists():
            _rmtree(old)

    def _write_log(self) -> None:
        rows = self.state.rows
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        write_text_atomic(self.run_dir / "log.csv", buf.getvalue())


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _float(out: Any) -> Any:
    """Network outputs (a tensor or a deep-supervision list) as float32, for a float32 loss."""
    if isinstance(out, (list, tuple)):
        return type(out)(o.float() for o in out)
    return out.float()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Binary Dice with both-empty = 1 (the convention of delineo.evaluate.metrics)."""
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


def train(cfg: ExperimentConfig, runs_root: Path, fold: Optional[int] = 0, resume: bool = False,
          cache_root: Optional[Path] = None, progress: bool = True) -> Path:
    """Train one fold (``None``: all non-test cases, no validation) and return its run folder."""
    trainer = Trainer(cfg, runs_root, fold, resume, cache_root, progress)
    try:
        return trainer.run()
    except BaseException as exc:  # the session's status says how it ended
        getattr(trainer, "tracker", NullTracker()).close("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
