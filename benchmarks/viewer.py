"""Viewer speeds through its HTTP API (in-process ASGI client, so the figures are the server's),
and where the time of a CT goes.

1. A hippocampus-size case from Run to a stored mask (target: contours on screen in under 2 s).
2. A 512x512x100 CT DICOM series from upload to contours (target: under 60 s on 2 CPU cores
   with the liver model): upload + series read + viewer volume, Run (read, preprocess, network,
   restore, mask write), then what the browser fetches to draw the contours (mask, contour
   voxels, structures table). The series is the embedded CT sample
   (delineo/sample_data/ct_liver, liver_001) resampled to 512x512 and --ct-slices slices and
   written as a CT DICOM series (delineo.io.dicom_series), zipped as a user would upload it.
3. --profile: the same CT steps once more under cProfile in this thread, reported as shares of
   the time by stage (reading, resampling/normalising, network, restore, writing, contour
   encoding, structures table).

    python benchmarks/viewer.py --model HIPPO_RUN_OR_DELINEO [--ct-model RUN | --train-ct-model]
                                [--ct-slices 100] [--profile]

--train-ct-model first trains the viewer's liver model on the embedded CT sample (a 2D U-Net,
filters 16-128, whole 512x512 slices at inference; a few minutes). The published liver set-up
(examples/liver.yaml, DeepLabV3 on ResNet-152) is far too large for the 60 s target on two
cores: one 512x512 slice takes seconds there, so 100 slices take many minutes whatever the viewer
does. Run it under `nice -n 19` on a shared machine, and read the figures with the load average
printed at the start.

The browser side (first paint, Run to contours on screen) is measured by tests/test_serve_e2e.py
(test-artifacts/serve/timings.txt).
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import os
import pstats
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "delineo" / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_001_0000.nii.gz"
CT_SAMPLE = ROOT / "delineo" / "sample_data" / "ct_liver"

#: The viewer's liver model (--train-ct-model): small enough for whole 512x512 slices on a CPU.
LIVER_VIEWER = {
    "name": "liver-viewer",
    "data": {"source": {"type": "msd", "path": str(CT_SAMPLE)}, "folds": 3, "seed": 0},
    "preprocess": {"orientation": "RAS", "crop_foreground": False, "intensity": [{"preset": "ct", "window": [-250, 250]}]},
    "sampling": {"mode": "2d", "axis": 2, "patch_size": [256, 256], "foreground_fraction": 0.5, "batch_size": 4},
    "model": {"name": "unet", "filters": [16, 32, 64, 128], "norm": "batch"},
    "train": {"epochs": 1, "iterations_per_epoch": 20, "val_every": 1, "num_threads": 2,
              "optimizer": {"name": "adam", "lr": 0.003}},
}


def train_liver_model(out: Path) -> Path:
    from delineo.config import config_from_dict
    from delineo.train.loop import train

    t0 = time.perf_counter()
    run = train(config_from_dict(LIVER_VIEWER), out, fold=0, progress=False)
    shutil.rmtree(out / LIVER_VIEWER["name"] / "cache", ignore_errors=True)
    print(f"liver model trained on the embedded CT sample in {time.perf_counter() - t0:.0f} s: {run}")
    return run


def ct_zip(n_slices: int, size: int = 512) -> bytes:
    """The embedded CT (liver_001) resampled to size x size x n_slices (linear, field of view
    kept), as a ZIP of a CT DICOM series."""
    from scipy import ndimage

    from delineo.io.dicom_series import write_dicom_series
    from delineo.io.files import read_image
    from delineo.io.image import Image

    ct = read_image(CT_SAMPLE / "imagesTr" / "liver_001_0000.nii.gz")
    array = np.asarray(ct.array, dtype=np.float32)
    target = (size, size, n_slices)
    zoom = [t / s for t, s in zip(target, array.shape)]
    resampled = np.rint(ndimage.zoom(array, zoom, order=1, prefilter=False)).astype(np.int16)
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] @ np.diag([s / t for s, t in zip(array.shape, resampled.shape)])
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_dicom_series(Image(resampled, affine), Path(tmp) / "ct", "CT", patient_id="BENCH")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.glob("*.dcm")):
                zf.write(f, f"ct/{f.name}")
    return buf.getvalue()


def run_job(c, sid: str, model: str) -> tuple[float, dict]:
    t0, c0 = time.perf_counter(), time.process_time()
    jid = c.post(f"/api/studies/{sid}/run", json={"model": model}).json()["id"]
    while (job := c.get(f"/api/jobs/{jid}").json())["state"] not in ("done", "failed"):
        time.sleep(0.01 if time.perf_counter() - t0 < 2 else 0.2)  # polling must not eat the CPU it measures
    assert job["state"] == "done", job["message"]
    CPU[0] = time.process_time() - c0
    return time.perf_counter() - t0, job


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    CPU[0] = time.process_time() - c0
    return time.perf_counter() - t0, out


#: CPU seconds of the last timed step (the whole process: the server runs in it, in threads)
CPU = [0.0]


def ct_over_http(c, data: bytes, model: str | None) -> None:
    """Wall seconds and CPU seconds (all threads) of each step; on an idle 2-core machine the wall
    time of a step is between its CPU seconds / 2 (both cores busy) and its CPU seconds."""
    total = cpu = 0.0
    wall, r = timed(c.post, "/api/studies", files={"files": ("ct.zip", data)})
    assert r.status_code == 201, r.text
    study = r.json()
    total, cpu = total + wall, cpu + CPU[0]
    print(f"CT DICOM {study['shape']} ({len(data) / 2**20:.0f} MB zip): upload + read + viewer volume {wall:.2f} s "
          f"({CPU[0]:.2f} CPU s)")
    wall, _ = timed(c.get, f"/api/studies/{study['id']}/image.nii.gz")
    print(f"  viewer volume download: {wall:.2f} s ({CPU[0]:.2f} CPU s)")
    if model is None:
        return
    wall, job = run_job(c, study["id"], model)
    total, cpu = total + wall, cpu + CPU[0]
    print(f"  Run -> mask stored: {wall:.2f} s (job {job['seconds']:.2f} s; {CPU[0]:.2f} CPU s)")
    base = f"/api/studies/{study['id']}/masks/{job['result']['mask']}"
    for what, url in (("mask", f"{base}/versions/1/mask.nii.gz"), ("contour voxels", f"{base}/versions/1/contour.nii.gz"),
                      ("structures table", f"{base}/components?version=1")):
        wall, r = timed(c.get, url)
        assert r.status_code == 200, r.text
        total, cpu = total + wall, cpu + CPU[0]
        print(f"  {what}: {wall:.2f} s ({CPU[0]:.2f} CPU s)")
    print(f"CT upload -> contours (server side): {total:.2f} s wall, {cpu:.2f} CPU s  [target < 60 s on 2 cores]")


#: Profile stages: (label, module path suffix, function); cumulative times, chosen not to nest.
STAGES = [
    ("unpack ZIP", "delineo/io/archive.py", "extract_archive"),
    ("list DICOM series", "delineo/io/dicom.py", "list_series"),
    ("read DICOM series", "delineo/io/dicom.py", "read_series"),
    ("read viewer volume (NIfTI)", "delineo/io/files.py", "read_image"),
    ("write viewer volume", "delineo/io/files.py", "write_image"),
    ("preprocess (reorient, resample, normalise)", "delineo/preprocess/pipeline.py", "preprocess"),
    ("network (slice by slice / sliding window)", "delineo/infer/sliding.py", "slice_wise"),
    ("network (slice by slice / sliding window)", "delineo/infer/sliding.py", "sliding_window"),
    ("network (slice by slice / sliding window)", "delineo/infer/sliding.py", "slice_wise_labels"),
    ("network (slice by slice / sliding window)", "delineo/infer/sliding.py", "sliding_window_labels"),
    ("restore to the scan's grid", "delineo/preprocess/pipeline.py", "restore"),
    ("labels + post-processing", "delineo/infer/predictor.py", "labels_from_probs"),
    ("labels + post-processing", "delineo/postprocess/components.py", "postprocess_labels"),
    ("contour voxels + gzip", "delineo/serve/analysis.py", "boundary"),
    ("contour voxels + gzip", "gzip.py", "compress"),
    ("structures table", "delineo/serve/analysis.py", "components"),
]


def profile_ct(data: bytes, models: Path, model_id: str) -> None:
    """The CT steps of the server called directly in this thread under cProfile."""
    import nibabel as nib

    from delineo.serve import analysis, ingest
    from delineo.serve.models import ModelLibrary
    from delineo.serve.store import Workspace

    tmp = Path(tempfile.mkdtemp())
    try:
        ws = Workspace(tmp / "ws")
        library = ModelLibrary(models)
        entry = library.get(model_id)
        library.predictor(entry)  # loading the model is not part of a run (preloaded at start)
        upload = tmp / "ct.zip"
        upload.write_bytes(data)
        # CPU time of the whole process (torch's worker threads included), not wall time: on a
        # shared machine wall time measures the other users; CPU seconds are the work to be done
        prof = cProfile.Profile(time.process_time)
        t0, c0 = time.perf_counter(), time.process_time()
        prof.enable()
        study = ingest.ingest(ws, [ingest.Upload("ct.zip", upload)], 2 << 30)
        image = ingest.read_volume(ws, study["id"])  # what a Run reads
        mask = library.segment(entry, image, lambda f, m: None)
        info = ws.create_mask(study["id"], mask, {"id": entry.id, "name": entry.name, "labels": {}}, who="bench")
        img = nib.load(str(ws.version_path(study["id"], info["id"], 1)))
        edge = analysis.boundary(np.asarray(img.dataobj).astype(np.uint8))
        gzip.compress(nib.Nifti1Image(edge, img.affine).to_bytes(), compresslevel=1)
        analysis.components(np.asarray(img.dataobj).astype(np.uint8), np.asarray(img.affine), {1: "liver"})
        prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    shares: dict[str, float] = {}
    for label, path, name in STAGES:
        for (file, _, func), (_, _, _, cum, _) in stats.items():
            if func == name and file.replace(os.sep, "/").endswith(path):
                shares[label] = shares.get(label, 0.0) + cum
    print(f"\nprofile of the CT steps (cProfile on process CPU time: {cpu:.1f} CPU s in {wall:.1f} s wall; "
          "cProfile adds overhead to Python-heavy steps):")
    for label, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {label:45s} {seconds:7.2f} CPU s  {100 * seconds / cpu:5.1f} %")
    rest = cpu - sum(shares.values())
    print(f"  {'everything else':45s} {rest:7.2f} CPU s  {100 * rest / cpu:5.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="hippocampus model (run folder or .delineo)")
    ap.add_argument("--ct-model", type=Path, default=None, help="CT liver model (run folder or .delineo)")
    ap.add_argument("--train-ct-model", action="store_true", help="train the viewer's liver model on the embedded CT first")
    ap.add_argument("--ct-slices", type=int, default=100)
    ap.add_argument("--profile", action="store_true", help="profile the CT steps by stage")
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    from delineo.serve.app import Settings, create_app

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; nice {os.nice(0)}")
    tmp = Path(tempfile.mkdtemp())
    try:
        models = tmp / "models"
        models.mkdir()
        ct_model = args.ct_model
        if ct_model is None and args.train_ct_model:
            ct_model = train_liver_model(tmp / "train")
        for name, path in (("hippocampus", args.model), ("ct", ct_model)):
            if path is not None:
                (shutil.copytree if path.is_dir() else shutil.copy)(path, models / (name + ("" if path.is_dir() else path.suffix)))
        app = create_app(Settings(workspace=tmp / "ws", models=models))
        app.state.library.preload().join()  # as `delineo serve` does at start
        c = TestClient(app)
        c.headers["Authorization"] = f"Bearer {app.state.token}"
        by_name = {m["name"].split("/")[0].split(".")[0]: m["id"] for m in c.get("/api/models").json()}
        t0 = time.perf_counter()
        sid = c.post("/api/studies", files={"files": (CASE.name, CASE.read_bytes())}).json()["id"]
        print(f"hippocampus upload: {time.perf_counter() - t0:.2f} s")
        for attempt in ("first", "again"):
            wall, job = run_job(c, sid, by_name["hippocampus"])
            print(f"hippocampus Run -> mask stored, {attempt}: {wall:.2f} s (job {job['seconds']:.2f} s)")
        t0 = time.perf_counter()
        data = ct_zip(args.ct_slices)
        print(f"(CT series of {args.ct_slices} slices written and zipped in {time.perf_counter() - t0:.1f} s)")
        ct_over_http(c, data, by_name.get("ct"))
        if args.profile and "ct" in by_name:
            profile_ct(data, models, by_name["ct"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
