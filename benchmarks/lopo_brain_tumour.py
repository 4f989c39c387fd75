"""Benchmark: does a 2D tumour model generalise to a patient it never saw? Leave-one-patient-out
over the three patients of ``../shared/data/brain-tumour-pgbm``.

    nice -n 19 python benchmarks/lopo_brain_tumour.py [--minutes 6] [--set KEY=VALUE ...]

For each patient P (pgbm003, pgbm006, pgbm008) a model is trained on the studies of the other
two patients only (a folder of links to their files, so nothing of P can reach training, not
even through validation: ``--fold none``, a fixed budget and the last weights, a poly schedule
in place of the recipe's plateau, which needs validation) and every study of P is predicted and
scored: Dice, HD95, lesion recall / precision and volumes (the helpers of
``benchmarks/pipeline_brain_tumour.py``). ``pipeline_brain_tumour.py`` trains on one patient;
this benchmark asks what a second training patient adds, with every patient tested once.

Set-up: the brain_tumour recipe at the benchmark size of ``pipeline_brain_tumour.py`` (2 mm in
plane, 64 x 64 patches, batch 8) plus intensity augmentation (brightness, contrast, gamma:
scanners differ between these patients) and bf16 on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_brain_tumour import (  # noqa: E402  (a sibling benchmark, not a package)
    DELINEO, _fmt, _mean, comparison_table, evaluate_study, fold_summary, run_measured)

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("lopo_brain_tumour")

PATIENT = r"^(pgbm\d+)_"
SETUP = ["data.val_fraction=null", "data.test_fraction=0.0", "data.folds=2", "preprocess.spacing=[2.0,2.0,6.5]",
         "sampling.patch_size=[64,64]", "sampling.batch_size=8", "train.iterations_per_epoch=25",
         "train.num_threads=2", "train.precision=bf16", "train.device=cpu", "train.early_stopping_patience=null",
         "train.schedule={name: poly, exponent: 0.9}",
         "augment.brightness={p: 0.15, range: [-0.1, 0.1]}", "augment.contrast={p: 0.15, range: [0.75, 1.25]}",
         "augment.gamma={p: 0.15, range: [0.7, 1.5]}"]


def lopo_folds(case_ids: list[str], pattern: str = PATIENT) -> list[tuple[str, list[str], list[str]]]:
    """(test patient, training case ids, test case ids) for every patient, in patient order; a case
    id the pattern does not match is its own patient."""
    by_patient: dict[str, list[str]] = {}
    for cid in sorted(case_ids):
        m = re.match(pattern, cid)
        by_patient.setdefault(m.group(1) if m else cid, []).append(cid)
    if len(by_patient) < 2:
        raise ValueError(f"leave-one-patient-out needs two patients or more, found {len(by_patient)}")
    return [(p, [c for q, cs in by_patient.items() if q != p for c in cs], cs) for p, cs in by_patient.items()]


def link_subset(data: Path, case_ids: list[str], dest: Path) -> Path:
    """An MSD folder at ``dest`` holding links to ``case_ids``' images and labels of ``data`` only,
    with ``data``'s dataset.json (numTraining updated); remade from scratch each time."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    for cid in case_ids:
        images = sorted((data / "imagesTr").glob(f"{cid}_[0-9][0-9][0-9][0-9].nii.gz"))
        label = data / "labelsTr" / f"{cid}.nii.gz"
        if not images or not label.is_file():
            raise FileNotFoundError(f"{data}: case {cid} has no images or no label")
        for f in images:
            (dest / "imagesTr" / f.name).symlink_to(f.resolve())
        (dest / "labelsTr" / label.name).symlink_to(label.resolve())
    meta = json.loads((data / "dataset.json").read_text())
    meta["numTraining"] = len(case_ids)
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dest


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brain-tumour-pgbm")
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget per left-out patient")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "lopo_brain_tumour")
    ap.add_argument("--only", default="", help="comma-separated test patients (default: all)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import yaml

    from delineo.config import load_config
    from delineo.recipes import recipe_path
    from delineo.train.loop import train

    data = args.data.resolve()
    ids = sorted(p.name[:-len(".nii.gz")] for p in (data / "labelsTr").glob("*.nii.gz"))
    folds = lopo_folds(ids)
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    rows: dict[str, list[dict[str, Any]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for patient, train_ids, test_ids in folds:
        if only and patient not in only:
            continue
        out = args.out / patient
        subset = link_subset(data, train_ids, out / "data")
        cfg = load_config(recipe_path("brain_tumour") / "experiment.yaml",
                          [f"data.source.path={subset}", f"name=without_{patient}", *SETUP,
                           f"train.max_minutes={args.minutes}", *args.overrides])
        t0 = time.perf_counter()
        run = train(cfg, out / "runs", None, progress=False)
        t_train = time.perf_counter() - t0
        spec = out / "model.yaml"
        spec.write_text(yaml.safe_dump({"name": f"tumour_without_{patient}",
                                        "stages": [{"name": "tumour", "kind": "segment", "runs": [str(run)]}]}))
        model = out / "model.delineo"
        run_measured([*DELINEO, "-q", "pipeline", "build", str(spec), "--out", str(model), "--device", "cpu"])
        title = f"without {patient} (trained on {', '.join(sorted({c.split('_')[0] for c in train_ids}))})"
        for cid in test_ids:
            row, _ = evaluate_study(model, data, cid, out / f"eval_{cid}")
            rows.setdefault(title, []).append(row)
        info[patient] = {**fold_summary(run), "train_studies": len(train_ids), "minutes": t_train / 60}

    print(f"\n== brain-tumour-pgbm, leave one patient out, {args.minutes:g} min per model")
    for patient, f in info.items():
        print(f"without {patient}: {f['train_studies']} training studies, {f['epochs']} epochs, {f['iterations']} "
              f"iterations ({f['s_per_iter']:.2f} s each, {f['minutes']:.1f} min wall), training loss "
              f"{_fmt(f['loss_first'])} -> {_fmt(f['loss_last'])}")
    print("\n" + comparison_table(rows))
    every = [r for studies in rows.values() for r in studies]
    per_patient = [_mean([r["dice"] for r in studies]) for studies in rows.values()]
    print(f"\nmean Dice over {len(every)} held-out studies {_fmt(_mean([r['dice'] for r in every]))}; "
          f"over {len(per_patient)} patients {_fmt(_mean(per_patient))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
