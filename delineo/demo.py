"""``delineo demo``: the main job end to end on the embedded sample (48 hippocampus MRI crops,
CC-BY-SA 4.0): train a small 3D U-Net on the CPU, evaluate it on held-out cases, predict one
held-out case, write the report, and print where everything is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from delineo.config import apply_overrides, config_from_dict

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"


def demo_config(minutes: Optional[float] = None, overrides: Optional[list[str]] = None):
    import yaml

    data = yaml.safe_load((SAMPLE_DIR / "demo.yaml").read_text())
    if minutes is not None:
        data["train"]["max_minutes"] = minutes
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, source=str(SAMPLE_DIR / "demo.yaml"), base_dir=SAMPLE_DIR)


def run_demo(out: Path, minutes: Optional[float] = None, overrides: Optional[list[str]] = None,
             progress: bool = True) -> dict:
    """Run the demo into ``out``; return the evaluation summary (with the predicted file)."""
    from delineo.evaluate.run import evaluate_run
    from delineo.infer.run import predict_paths
    from delineo.train.loop import train

    t0 = time.perf_counter()
    cfg = demo_config(minutes, overrides)
    out = Path(out)
    runs = out / "runs"
    run_dir = runs / cfg.name / "fold_0"
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    if resume:
        log.info("continuing the demo run found in %s", run_dir)
    train(cfg, runs, fold=0, resume=resume, progress=progress)
    summary = evaluate_run(run_dir, progress=progress)
    held_out = json.loads((run_dir / "cases.json").read_text())["val"][0]
    image = SAMPLE_DIR / "hippocampus" / "imagesTr" / f"{held_out}_0000.nii.gz"
    predicted = predict_paths(run_dir, image, out / "prediction" / f"{held_out}.nii.gz", progress=progress)[0]
    minutes_taken = (time.perf_counter() - t0) / 60
    labels = summary.get("labels", {})
    per_label = ", ".join(f"{name} {vals['dice']['mean']:.3f}" for name, vals in labels.items())
    print(
        f"\nDelineo demo finished in {minutes_taken:.1f} min.\n"
        f"  held-out mean Dice: {summary['mean_dice']:.3f} ({per_label}) over {summary['n_cases']} cases\n"
        f"  report:      {run_dir / 'report.html'}\n"
        f"  metrics:     {run_dir / 'metrics' / 'cases.csv'}\n"
        f"  model:       {run_dir / 'checkpoints' / 'best.pt'}\n"
        f"  prediction:  {predicted} (input {image})\n"
        f"  try:         delineo predict {run_dir} YOUR_SCAN.nii.gz OUT.nii.gz"
    )
    summary["prediction"] = str(predicted)
    summary["run_dir"] = str(run_dir)
    return summary
