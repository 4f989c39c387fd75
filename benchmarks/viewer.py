"""Viewer speeds through its HTTP API (in-process ASGI client, so the figures are the server's):
a hippocampus-size case from Run to a stored mask, and a CT DICOM series from upload to a stored
mask. The CT series is ../shared/data/ct-abdomen/dicom (20 slices of 512x512), optionally
repeated along the slice axis (--ct-slices 100) to reach a full abdominal series.

    python benchmarks/viewer.py --model RUN_OR_DELINEO [--ct-model RUN_OR_DELINEO] [--ct-slices 100]

The browser side (first paint, Run to contours on screen) is measured by tests/test_serve_e2e.py
(test-artifacts/serve/timings.txt).
"""

from __future__ import annotations

import argparse
import copy
import io
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "delineo" / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_001_0000.nii.gz"
CT = ROOT.parent / "shared" / "data" / "ct-abdomen" / "dicom"


def ct_zip(n_slices: int) -> bytes:
    """The CT series as a ZIP, its 20 slices repeated (new UIDs, shifted positions) to ``n_slices``."""
    import pydicom
    from pydicom.uid import generate_uid

    files = sorted(CT.glob("*.dcm"))
    headers = [pydicom.dcmread(f) for f in files]
    headers.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    step = float(headers[1].ImagePositionPatient[2]) - float(headers[0].ImagePositionPatient[2])
    series = generate_uid()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(n_slices):
            ds = copy.deepcopy(headers[k % len(headers)])
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            pos = list(headers[0].ImagePositionPatient)
            pos[2] = float(pos[2]) + k * step
            ds.ImagePositionPatient = pos
            ds.InstanceNumber = k + 1
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            zf.writestr(f"ct/{k:04d}.dcm", out.getvalue())
    return buf.getvalue()


def run_job(c, sid: str, model: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    jid = c.post(f"/api/studies/{sid}/run", json={"model": model}).json()["id"]
    while (job := c.get(f"/api/jobs/{jid}").json())["state"] not in ("done", "failed"):
        time.sleep(0.01)
    assert job["state"] == "done", job["message"]
    return time.perf_counter() - t0, job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="hippocampus model (run folder or .delineo)")
    ap.add_argument("--ct-model", type=Path, default=None, help="CT model (default: skip the CT run)")
    ap.add_argument("--ct-slices", type=int, default=100)
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    from delineo.serve.app import Settings, create_app

    tmp = Path(tempfile.mkdtemp())
    try:
        models = tmp / "models"
        models.mkdir()
        for name, path in (("hippocampus", args.model), ("ct", args.ct_model)):
            if path is not None:
                (shutil.copytree if path.is_dir() else shutil.copy)(path, models / (name + ("" if path.is_dir() else path.suffix)))
        app = create_app(Settings(workspace=tmp / "ws", models=models))
        c = TestClient(app)
        c.headers["Authorization"] = f"Bearer {app.state.token}"
        by_name = {m["name"].split("/")[0].split(".")[0]: m["id"] for m in c.get("/api/models").json()}
        t0 = time.perf_counter()
        sid = c.post("/api/studies", files={"files": (CASE.name, CASE.read_bytes())}).json()["id"]
        print(f"hippocampus upload: {time.perf_counter() - t0:.2f} s")
        for attempt in ("first (model loading)", "warm"):
            wall, job = run_job(c, sid, by_name["hippocampus"])
            print(f"hippocampus Run -> mask stored, {attempt}: {wall:.2f} s (job {job['seconds']:.2f} s)")
        if CT.is_dir():
            data = ct_zip(args.ct_slices)
            t0 = time.perf_counter()
            r = c.post("/api/studies", files={"files": ("ct.zip", data)})
            assert r.status_code == 201, r.text
            study = r.json()
            print(f"CT DICOM {study['shape']} ({len(data) / 2**20:.0f} MB zip): upload + read + viewer volume "
                  f"{time.perf_counter() - t0:.2f} s")
            if "ct" in by_name:
                wall, job = run_job(c, study["id"], by_name["ct"])
                print(f"CT Run -> mask stored: {wall:.2f} s (job {job['seconds']:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
