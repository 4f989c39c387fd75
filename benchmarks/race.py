"""The race, in one script: Delineo against nnU-Net v2 on the same hippocampus cases.

    python benchmarks/race.py [--data ../shared/data/hippocampus] [--minutes 20] [--max-test 20]
                              [--nnunet-venv ~/nnunet_venv]

The full race, as the note reports it (about 50 minutes on 2 cores: 20 minutes of training each,
plus preprocessing, nnU-Net's final validation and the predictions):

    python benchmarks/race.py --minutes 20 --max-test 20 --nnunet-venv ~/nnunet_venv

A quick check that both sides run end to end (a few minutes):

    python benchmarks/race.py --minutes 1 --max-test 3 --max-train 12 --max-val 3 \\
        --nnunet-venv ~/nnunet_venv

Both rows use one split: Delineo's (``examples/hippocampus.yaml`` with ``data.test_fraction=0.15``,
seeded patient-level folds), computed here before either tool runs. Delineo trains its fold 0; nnU-Net
gets a raw dataset (``Dataset004_Hippocampus``: links to the same files, ``_0000`` channel suffix,
``dataset.json``) holding exactly fold 0's training and validation cases, and a ``splits_final.json``
whose fold 0 is the same train/validation partition; the test cases are predicted by both and scored
by Delineo's Dice (``delineo.evaluate.metrics.score_case``), so both rows use one metric.

Figures of each row: dataset preprocessing seconds and peak memory of the same cases (Delineo: its case
cache in this process, peak RSS; nnU-Net: ``nnUNetv2_plan_and_preprocess -c 3d_fullres
--verify_dataset_integrity``, which also fingerprints and plans, peak of the summed RSS of its process
tree), training iterations per second (network time only, and the whole loop with data loading) with
batch and patch, prediction seconds per case with and without mirroring (after one untimed start-up
case), and the held-out Dice of each. Then, like for like, Delineo's trainer step on nnU-Net's network
widths, patch and batch (its plan's ``features_per_stage``; instance norm, leaky ReLU), fp32 and bf16,
against nnU-Net's own iterations per second (``--same-steps``, 0 to skip).

nnU-Net has no time budget. Its row trains ``nnUNetTrainer_DelineoRace`` (written by this script into
the nnU-Net venv, where ``nnUNetv2_train -tr`` finds trainers): nnU-Net's own trainer, plans, network,
augmentation and loss, with two changes only: it stops when ``--minutes`` have passed (checked before
every step, as Delineo's trainer does) and its poly learning-rate schedule advances with the elapsed
share of that budget instead of the epoch count (as Delineo's schedules do under a budget); it logs its
training iterations and their network time per epoch; nnU-Net's final sliding-window validation of
fold 0 is skipped (both tools are scored on the test split instead). ``nnUNetv2_predict`` runs sequentially (``-npp 0 -nps 0``) on the test
images; seconds per case come from the spacing of its output files (reading, preprocessing, network,
export), the first case, which carries start-up, excluded; its start-up is printed apart.

nnU-Net v2 is an optional extra and never a project or test dependency: install it into its own venv
(``python -m venv ~/nnunet_venv && ~/nnunet_venv/bin/pip install torch nnunetv2``)
and pass ``--nnunet-venv``; without it the script looks for ``nnUNetv2_train`` on PATH and, when there
is none, prints Delineo's figures alone. The CPU is shared here: compare ratios within one run, never
absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("race")

DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
TRAINER = "nnUNetTrainer_DelineoRace"

# nnU-Net's trainer with a wall-clock budget; written into the nnU-Net venv's trainer package because
# nnUNetv2_train resolves -tr by searching that package. It runs in the nnU-Net venv, never here.
TRAINER_SOURCE = '''"""Written by Delineo's benchmarks/race.py: nnU-Net's own trainer with a wall-clock budget.

nnU-Net stops after num_epochs; the race gives both tools the same minutes. Only the stopping rule
(the budget in DELINEO_RACE_BUDGET_S, checked before every step) and the poly schedule's progress
(elapsed share of the budget instead of epochs) differ from nnUNetTrainer; each epoch logs its training
iterations, their network seconds and their loop seconds ("race: ...") for the race's it/s.
"""
import os
import time

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_DelineoRace(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net records its constructor's named arguments (for checkpoints): no *args here
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.race_budget_s = float(os.environ.get("DELINEO_RACE_BUDGET_S", "1200"))
        self.race_t0 = None

    def race_progress(self) -> float:
        return min(1.0, (time.perf_counter() - self.race_t0) / self.race_budget_s)

    def race_set_lr(self) -> None:
        lr = self.initial_lr * (1 - self.race_progress()) ** 0.9
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def on_train_epoch_start(self):
        self.network.train()
        self.race_set_lr()
        self.print_to_log_file("")
        self.print_to_log_file(f"Epoch {self.current_epoch}")
        self.print_to_log_file(f"Current learning rate: {np.round(self.optimizer.param_groups[0]['lr'], decimals=5)}")
        self.logger.log("lrs", self.optimizer.param_groups[0]["lr"], self.current_epoch)

    def run_training(self):
        self.on_train_start()
        self.race_t0 = time.perf_counter()
        while self.current_epoch < self.num_epochs and self.race_progress() < 1:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs, t_net, loop0 = [], 0.0, time.perf_counter()
            for i in range(self.num_iterations_per_epoch):
                if i and self.race_progress() >= 1:
                    break
                self.race_set_lr()
                batch = next(self.dataloader_train)
                t0 = time.perf_counter()
                outputs.append(self.train_step(batch))
                t_net += time.perf_counter() - t0
            loop = time.perf_counter() - loop0
            self.print_to_log_file(
                f"race: {len(outputs)} training iterations, network {t_net:.3f} s, loop {loop:.3f} s")
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = []
                for i in range(self.num_val_iterations_per_epoch):
                    if i and self.race_progress() >= 1:
                        break
                    val.append(self.validation_step(next(self.dataloader_val)))
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        # the race scores both tools on the held-out test split with one metric; nnU-Net's own
        # sliding-window validation of fold 0 (minutes per case on 2 cores) adds nothing to it
        self.print_to_log_file("race: nnU-Net's final validation skipped (the test split is scored instead)")
'''


# ------------------------------------------------------------------ the split both tools use
def race_config(args: argparse.Namespace, extra: Sequence[str] = ()):
    """The race's experiment: the default hippocampus one on ``--data``, with ``extra`` overrides last."""
    from delineo.config import load_config

    return load_config(ROOT / "examples" / "hippocampus.yaml",
                       [f"data.source.path={args.data.resolve()}", f"train.max_minutes={args.minutes}",
                        "data.test_fraction=0.15", f"train.precision={args.precision}",
                        f"infer.precision={args.precision}", "augment.flip.p=0.5", *args.overrides, *extra])


def race_splits(cfg, dataset, max_train: Optional[int], max_val: Optional[int]) -> dict:
    """Delineo's splits for this experiment (what ``delineo train`` would write), with fold 0 cut to
    ``max_train``/``max_val`` cases for quick checks; cut validation cases move to fold 1's list, so
    the saved splits still cover every case and the trainer accepts them."""
    from delineo.data.splits import make_splits

    d = cfg.data
    splits = make_splits(dataset.cases, d.folds, d.seed, d.stratify, d.test_fraction, d.val_fraction, d.test_folds)
    fold = splits["folds"][0]
    if max_train:
        fold["train"] = fold["train"][:max_train]
    if max_val and len(fold["val"]) > max_val:
        if len(splits["folds"]) < 2:
            raise SystemExit("--max-val needs at least two folds")
        dropped, fold["val"] = fold["val"][max_val:], fold["val"][:max_val]
        splits["folds"][1]["val"] = sorted(splits["folds"][1]["val"] + dropped)
    return splits


def test_cases(dataset, splits: dict, max_test: int) -> list:
    by_id = {c.case_id: c for c in dataset.cases}
    return [by_id[i] for i in splits["test"]][:max_test]


def mean_dice(mask: np.ndarray, label_path: str, labels: dict) -> float:
    """Mean over labels of Delineo's Dice against the reference file (one metric for both rows)."""
    from delineo.evaluate.metrics import score_case
    from delineo.io import read_image

    ref = read_image(label_path)
    if mask.shape != ref.array.shape:
        raise SystemExit(f"prediction of {label_path} has shape {mask.shape}, the reference {ref.array.shape}")
    s = score_case(mask, ref.array, ref.spacing, labels)
    return float(np.mean([s[n]["dice"] for n in labels.values()]))


# ------------------------------------------------------------------ Delineo's row
def delineo_row(args: argparse.Namespace, cfg, dataset, splits: dict) -> dict:
    from delineo.data.cache import CaseCache
    from delineo.infer.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from delineo.infer.predictor import Predictor
    from delineo.io import read_image
    from delineo.train.loop import train

    work = Path(tempfile.mkdtemp(prefix="race_delineo_"))
    exp = work / "runs" / cfg.name
    exp.mkdir(parents=True)
    (exp / "splits.json").write_text(json.dumps(splits, indent=1))  # the trainer reuses it
    by_id = {c.case_id: c for c in dataset.cases}
    fold = splits["folds"][0]
    cases = [by_id[i] for i in fold["train"] + fold["val"]]  # what the trainer preprocesses (nnU-Net's too)
    row: dict = {"batch": cfg.sampling.batch_size, "patch": list(cfg.sampling.patch_size or [])}
    reset_peak_rss()
    base = rss_bytes()
    t0 = time.perf_counter()
    CaseCache(work / "cache", cfg.preprocess, dataset.labels).prepare(cases, progress=False)
    row["preprocess_s"] = time.perf_counter() - t0
    row["preprocess_cases"] = len(cases)
    row["preprocess_peak_mb"] = peak_rss_bytes() / 2**20
    row["preprocess_added_mb"] = (peak_rss_bytes() - base) / 2**20
    c0 = time.process_time()
    t0 = time.perf_counter()
    run = train(cfg, work / "runs", fold=0, cache_root=work / "cache", progress=not args.quiet)
    row["train_wall_s"] = time.perf_counter() - t0
    rows = list(csv.DictReader(open(run / "log.csv")))
    its = sum(int(r["iterations"]) for r in rows)
    row["iterations"] = its
    row["train_it_s"] = its / sum(float(r["net_seconds"]) for r in rows)
    row["train_it_loop_s"] = its / sum(float(r["net_seconds"]) + float(r["data_seconds"]) for r in rows)
    import torch

    row["train_it_cpu_s"] = its / ((time.process_time() - c0) / torch.get_num_threads())
    row["epochs"] = len(rows)
    test = test_cases(dataset, splits, args.max_test)
    for tta in (False, True):
        pred = Predictor.from_checkpoint(run, device="cpu", tta=tta)
        pred.predict_images([read_image(test[0].images[0])])  # untimed: start-up (precision probe), as nnU-Net's
        secs, dices = [], []
        for case in test:
            image = read_image(case.images[0])
            t0 = time.perf_counter()
            mask, _ = pred.predict_images([image])
            secs.append(time.perf_counter() - t0)
            dices.append(mean_dice(mask.array, case.label, dataset.labels))
        key = "mirror" if tta else "plain"
        row[f"predict_s_{key}"] = float(np.mean(secs))
        row[f"dice_{key}"] = float(np.mean(dices))
    row["test_cases"] = len(test)
    shutil.rmtree(work, ignore_errors=True)
    return row


def same_network_row(args: argparse.Namespace, splits: dict, arch: dict) -> dict:
    """Delineo's training step on nnU-Net's network and patch: its plan's widths per stage (one
    Delineo level each), instance norm, leaky ReLU, patch and batch, timed in fp32 (what nnU-Net
    runs on a CPU) and bf16 with the trainer's own ``Trainer.step`` on a few fold-0 cases; median
    seconds of ``--same-steps`` steps after two warm-up steps. Delineo's blocks differ from
    nnU-Net's PlainConvUNet in the down-sampling (pooling, not strided convolutions), so the row
    compares the tools' training loops on networks of the same widths, depth, patch and batch."""
    import torch

    from delineo.train.loop import Trainer

    fold = splits["folds"][0]
    only = (fold["train"][:4], fold["val"][:1])
    row: dict = {}
    for precision in ("fp32", "bf16"):
        work = Path(tempfile.mkdtemp(prefix="race_same_"))
        try:
            same = race_config(args, [f"model.filters={list(arch['features'])}", "model.norm=instance",
                                      "model.act=leakyrelu", f"sampling.patch_size={list(arch['patch'])}",
                                      f"sampling.batch_size={arch['batch']}", f"train.precision={precision}"])
            (work / "runs" / same.name).mkdir(parents=True)
            (work / "runs" / same.name / "splits.json").write_text(json.dumps(splits, indent=1))
            trainer = Trainer(same, work / "runs", fold=0, cache_root=work / "cache", progress=False, track=False,
                              only=only)
            trainer.setup()
            rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
            secs = []
            for _ in range(args.same_steps + 2):
                xt, yt = trainer.batch(rng, gen)
                t0 = time.perf_counter()
                trainer.step(xt, yt)
                secs.append(time.perf_counter() - t0)
            row[f"same_it_s_{precision}"] = 1.0 / float(np.median(secs[2:]))
            row["same_params"] = sum(p.numel() for p in trainer.model.parameters())
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return row


# ------------------------------------------------------------------ nnU-Net's row, through its CLI
def find_nnunet(venv: Optional[Path]) -> Optional[Path]:
    """The ``bin`` folder holding nnU-Net's commands: ``venv/bin``, else the one of ``nnUNetv2_train`` on PATH."""
    if venv is not None:
        return venv / "bin"
    found = shutil.which("nnUNetv2_train")
    return Path(found).parent if found else None


def tree_rss_bytes(pid: int) -> int:
    """Summed RSS of ``pid`` and all its descendants now (Linux /proc; nnU-Net works in worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(children.get(p, []))
    return total


def run_cli(cmd: list[str], env: dict, logfile: Path, what: str, memory: bool = False) -> tuple[float, int]:
    """Run one nnU-Net command (output to ``logfile``); (wall seconds, peak summed RSS of its process
    tree sampled every 0.1 s when ``memory``, else 0: sampling costs CPU the command would use). A
    failure stops the race with the command and its log named."""
    log.info("%s: %s", what, " ".join(cmd))
    peak = 0
    with open(logfile, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.1):
                peak = max(peak, tree_rss_bytes(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if memory:
            sampler.start()
        rc = proc.wait()
        seconds = time.perf_counter() - t0
        done.set()
        if memory:
            sampler.join()
    if rc != 0:
        tail = "".join(logfile.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"nnU-Net's {what} failed (exit {rc}): {' '.join(cmd)}; log {logfile}:\n{tail}")
    return seconds, peak


def write_raw_dataset(raw: Path, dataset, splits: dict, test: list) -> Path:
    """``raw/Dataset004_Hippocampus`` with fold 0's training and validation cases (links to the
    originals, channel suffix ``_0000``) and the test images in ``raw/test_images``."""
    from delineo.data.sources import Case

    by_id = {c.case_id: c for c in dataset.cases}
    fold = splits["folds"][0]
    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    ending = ".nii.gz"
    for cid in fold["train"] + fold["val"]:
        case: Case = by_id[cid]
        if len(case.images) != 1 or not str(case.images[0]).endswith(ending) or not str(case.label).endswith(ending):
            raise SystemExit(f"{case.images[0]}: the race expects one-channel .nii.gz cases (MSD Task04 layout)")
        (folder / "imagesTr" / f"{cid}_0000{ending}").symlink_to(Path(case.images[0]).resolve())
        (folder / "labelsTr" / f"{cid}{ending}").symlink_to(Path(case.label).resolve())
    labels = {"background": 0, **{name: int(value) for value, name in dataset.labels.items()}}
    meta = {"channel_names": {str(i): ch for i, ch in enumerate(dataset.channels)}, "labels": labels,
            "numTraining": len(fold["train"]) + len(fold["val"]), "file_ending": ending,
            "name": "Hippocampus (Delineo race split)"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    tests = raw / "test_images"
    tests.mkdir()
    for case in test:
        (tests / f"{case.case_id}_0000{ending}").symlink_to(Path(case.images[0]).resolve())
    return folder


def install_trainer(bindir: Path, env: dict) -> Path:
    """Write the budgeted trainer next to nnU-Net's own trainers in its venv (the only place
    ``nnUNetv2_train -tr`` looks)."""
    python = bindir / "python"
    out = subprocess.run([str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{python} cannot import nnunetv2: {out.stderr.strip().splitlines()[-1:]}")
    target = Path(out.stdout.strip()) / "training" / "nnUNetTrainer" / f"{TRAINER}.py"
    if not target.exists() or target.read_text() != TRAINER_SOURCE:
        target.write_text(TRAINER_SOURCE)
    return target


def nnunet_row(args: argparse.Namespace, bindir: Path, dataset, splits: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix="race_nnunet_"))
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    for p in (raw, pre, res):
        p.mkdir()
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
               DELINEO_RACE_BUDGET_S=str(args.minutes * 60), PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("nnUNet_def_n_proc", str(args.nnunet_processes))  # its validation/export pools (default 8)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    test = test_cases(dataset, splits, args.max_test)
    write_raw_dataset(raw, dataset, splits, test)
    install_trainer(bindir, env)
    procs = str(args.nnunet_processes)
    row: dict = {}
    secs, peak = run_cli([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                          "--verify_dataset_integrity", "-npfp", procs, "-np", procs],
                         env, work / "plan_and_preprocess.log", "plan_and_preprocess", memory=True)
    fold = splits["folds"][0]
    row.update(preprocess_s=secs, preprocess_peak_mb=peak / 2**20,
               preprocess_cases=len(fold["train"]) + len(fold["val"]))
    (pre / DATASET_NAME / "splits_final.json").write_text(json.dumps([{"train": fold["train"], "val": fold["val"]}]))
    plans = json.loads((pre / DATASET_NAME / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    row.update(batch=plans["batch_size"], patch=plans["patch_size"],
               features=plans.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage"))
    secs, _ = run_cli([str(bindir / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-device", "cpu",
                       "-tr", TRAINER], env, work / "train.log", "training")
    row["train_wall_s"] = secs
    out_dir = res / DATASET_NAME / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    logs = sorted(out_dir.glob("training_log_*.txt"))
    text = logs[-1].read_text() if logs else ""
    epochs = re.findall(r"race: (\d+) training iterations, network ([\d.]+) s, loop ([\d.]+) s", text)
    if not epochs:
        raise RuntimeError(f"no 'race:' lines in nnU-Net's training log {logs[-1] if logs else out_dir}")
    its = sum(int(n) for n, _, _ in epochs)
    row.update(iterations=its, epochs=len(epochs), train_it_s=its / sum(float(t) for _, t, _ in epochs),
               train_it_loop_s=its / sum(float(t) for _, _, t in epochs))
    summary = out_dir / "validation" / "summary.json"
    if summary.exists():
        row["val_dice"] = json.loads(summary.read_text())["foreground_mean"]["Dice"]
    from delineo.io import read_image

    for tta in (False, True):
        key = "mirror" if tta else "plain"
        pred_dir = work / f"predict_{key}"
        cmd = [str(bindir / "nnUNetv2_predict"), "-i", str(raw / "test_images"), "-o", str(pred_dir),
               "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu",
               "-npp", "0", "-nps", "0", "--disable_progress_bar"] + ([] if tta else ["--disable_tta"])
        start = time.time()
        secs, _ = run_cli(cmd, env, work / f"predict_{key}.log", f"prediction ({key})")
        files = {c.case_id: pred_dir / f"{c.case_id}.nii.gz" for c in test}
        missing = [str(f) for f in files.values() if not f.exists()]
        if missing:
            raise RuntimeError(f"nnUNetv2_predict wrote no {missing[0]} (log {work / f'predict_{key}.log'})")
        done = sorted(f.stat().st_mtime for f in files.values())
        per_case = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else secs
        row[f"predict_s_{key}"] = per_case
        row[f"predict_startup_s_{key}"] = done[0] - start - per_case
        row[f"dice_{key}"] = float(np.mean([mean_dice(read_image(files[c.case_id]).array, c.label, dataset.labels)
                                            for c in test]))
    row["test_cases"] = len(test)
    if args.keep:
        log.warning("nnU-Net's folders kept in %s", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return row


# ------------------------------------------------------------------ the table
ROWS = [("preprocess_cases", "cases preprocessed", "{:.0f}"), ("preprocess_s", "preprocessing s", "{:.2f}"),
        ("preprocess_peak_mb", "preprocessing peak RSS MB", "{:.0f}"),
        ("batch", "batch", "{}"), ("patch", "patch", "{}"), ("epochs", "epochs", "{:.0f}"),
        ("iterations", "training iterations", "{:.0f}"), ("train_wall_s", "training command s", "{:.0f}"),
        ("train_it_s", "train it/s (network)", "{:.3f}"), ("train_it_loop_s", "train it/s (loop, with data)", "{:.3f}"),
        ("predict_s_plain", "predict s/case", "{:.3f}"), ("predict_s_mirror", "predict s/case, mirrored", "{:.3f}"),
        ("dice_plain", "held-out Dice", "{:.3f}"), ("dice_mirror", "held-out Dice, mirrored", "{:.3f}")]


def fmt(value, pattern: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return pattern.format(value)


def print_table(args: argparse.Namespace, d: dict, n: Optional[dict]) -> None:
    print(f"\n== race on {args.data.name}: {args.minutes} min of training each, {d['test_cases']} held-out cases, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'':30} {'Delineo':>10}" + (f" {'nnU-Net v2':>11} {'nnU-Net/Delineo':>16}" if n else ""))
    for key, label, pattern in ROWS:
        line = f"{label:30} {fmt(d.get(key), pattern):>10}"
        if n:
            ratio = ""
            if isinstance(d.get(key), float) and isinstance(n.get(key), (int, float)) and d[key]:
                ratio = f"{n[key] / d[key]:.2f}"
            line += f" {fmt(n.get(key), pattern):>11} {ratio:>16}"
        print(line)
    print(f"Delineo: preprocessing added {d['preprocess_added_mb']:.0f} MB to this process; "
          f"train it/s per CPU second and thread {d['train_it_cpu_s']:.3f}")
    if n:
        print(f"nnU-Net: fold-0 validation Dice {fmt(n.get('val_dice'), '{:.3f}')} (its own metric); prediction "
              f"start-up {n['predict_startup_s_plain']:.1f} s / {n['predict_startup_s_mirror']:.1f} s mirrored "
              "(not in s/case); preprocessing includes fingerprint and planning; peak RSS summed over its processes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget of each tool")
    ap.add_argument("--max-test", type=int, default=20, help="held-out cases predicted (both tools)")
    ap.add_argument("--max-train", type=int, default=None, help="fold-0 training cases kept (quick checks)")
    ap.add_argument("--max-val", type=int, default=None, help="fold-0 validation cases kept (quick checks)")
    ap.add_argument("--precision", default="auto", choices=["fp32", "bf16", "auto"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--nnunet-venv", type=lambda s: Path(s).expanduser(), default=None,
                    help="venv with nnunetv2 installed (default: nnUNetv2_train on PATH, else Delineo alone)")
    ap.add_argument("--nnunet-processes", type=int, default=os.cpu_count() or 1,
                    help="nnU-Net's -npfp/-np for preprocessing (default: the CPU count)")
    ap.add_argument("--same-steps", type=int, default=8,
                    help="steps timed of Delineo's trainer on nnU-Net's network and patch (0: skip)")
    ap.add_argument("--keep", action="store_true", help="keep nnU-Net's raw, preprocessed and results folders")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.nnunet_venv is not None and not (args.nnunet_venv / "bin" / "nnUNetv2_train").exists():
        print(f"error: {args.nnunet_venv}: no bin/nnUNetv2_train there; make that venv with "
              f"'python -m venv {args.nnunet_venv} && {args.nnunet_venv}/bin/pip install torch nnunetv2'", file=sys.stderr)
        return 2
    if not (args.data / "imagesTr").is_dir():
        print(f"error: {args.data}: no imagesTr folder, so not an MSD/nnU-Net dataset", file=sys.stderr)
        return 2
    bindir = find_nnunet(args.nnunet_venv)
    from delineo.data.sources import load_dataset

    cfg = race_config(args)
    dataset = load_dataset(cfg.data)
    splits = race_splits(cfg, dataset, args.max_train, args.max_val)
    fold = splits["folds"][0]
    log.info("split: %d training, %d validation, %d test cases (%d predicted)", len(fold["train"]),
             len(fold["val"]), len(splits["test"]), min(args.max_test, len(splits["test"])))
    d = delineo_row(args, cfg, dataset, splits)
    n, failure = None, None
    if bindir is not None:
        try:
            n = nnunet_row(args, bindir, dataset, splits)
        except RuntimeError as exc:
            failure = str(exc)
    same = None
    if n and n.get("features") and args.same_steps:
        same = same_network_row(args, splits, {"features": n["features"], "patch": n["patch"], "batch": n["batch"]})
    print_table(args, d, n)
    if same:
        print(f"same network and patch (nnU-Net's widths {'-'.join(map(str, n['features']))}, patch "
              f"{fmt(n['patch'], '{}')}, batch {n['batch']}; Delineo's U-Net, {same['same_params'] / 1e6:.1f} M "
              f"weights): train it/s (network) Delineo fp32 {same['same_it_s_fp32']:.3f}, bf16 "
              f"{same['same_it_s_bf16']:.3f}; nnU-Net {n['train_it_s']:.3f} (fp32): Delineo/nnU-Net "
              f"{same['same_it_s_fp32'] / n['train_it_s']:.2f}x fp32, {same['same_it_s_bf16'] / n['train_it_s']:.2f}x bf16")
    if bindir is None:
        print("\nnnU-Net v2 not found (no --nnunet-venv, no nnUNetv2_train on PATH): Delineo's figures alone")
    if failure:
        print(f"\nerror: {failure}", file=sys.stderr)
        return 1
    print("the CPU is shared: compare ratios within one run only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
