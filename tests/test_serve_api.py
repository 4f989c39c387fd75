"""The viewer's HTTP API through the ASGI test client: upload, list, run, poll, correct, approve,
export, and the refusals (no token, traversal, oversize, unknown types, stale edits)."""

from __future__ import annotations

import gzip
import io
import shutil
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from delineo.serve.app import Settings, create_app  # noqa: E402
from delineo.serve.jobs import Busy, JobQueue  # noqa: E402
from delineo.serve.store import Workspace  # noqa: E402

from .serve_fixtures import CASE, hippocampus_dicom_zip, serve_models  # noqa: F401,E402
from .test_dicom_series import seg_on_grid  # noqa: E402


def client(tmp: Path, models: Path | None = None, **kw) -> TestClient:
    app = create_app(Settings(workspace=tmp, models=models, **kw))
    c = TestClient(app)
    c.headers["Authorization"] = f"Bearer {app.state.token}"
    c.headers["X-Delineo-User"] = "Dr Test"
    return c


def upload(c: TestClient, path: Path, name: str | None = None):
    return c.post("/api/studies", files={"files": (name or path.name, path.read_bytes())})


def wait_job(c: TestClient, jid: str, timeout: float = 60) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = c.get(f"/api/jobs/{jid}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {jid} did not finish")


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array.astype(np.uint8), affine)
    return gzip.compress(img.to_bytes())


def test_token_is_required(tmp_path):
    app = create_app(Settings(workspace=tmp_path))
    c = TestClient(app)
    r = c.get("/api/studies")
    assert r.status_code == 401 and "token" in r.json()["detail"]
    assert c.get("/api/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/static/niivue.umd.js").status_code == 401
    r = c.get(f"/?token={app.state.token}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower()
    # the cookie set by the first page load authorises the page, its assets and the API
    page = c.get("/")
    assert page.status_code == 200 and "niivue.umd.js" in page.text
    assert c.get("/static/niivue.umd.js").status_code == 200
    assert c.get("/api/studies").json() == []


def test_upload_run_correct_approve_export_nifti(tmp_path, serve_models):
    c = client(tmp_path / "ws", serve_models)
    models = c.get("/api/models").json()
    assert [m["name"] for m in models] == ["hippo-tiny/fold_0"]
    assert [(l["value"], l["name"]) for l in models[0]["labels"]] == [(1, "Anterior"), (2, "Posterior")]

    r = upload(c, CASE)
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["status"] == "ready" and study["shape"] == [35, 51, 35] and study["modality"] == "MR"
    assert [s["id"] for s in c.get("/api/studies").json()] == [study["id"]]
    img = nib.Nifti1Image.from_bytes(gzip.decompress(c.get(f"/api/studies/{study['id']}/image.nii.gz").content))
    ref = nib.load(str(CASE))
    np.testing.assert_allclose(img.affine, ref.affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), np.asarray(ref.dataobj), atol=1e-4)

    r = c.post(f"/api/studies/{study['id']}/run", json={"model": models[0]["id"]})
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "done", job["message"]
    mid = job["result"]["mask"]
    mask = c.get(f"/api/studies/{study['id']}/masks/{mid}").json()
    assert mask["status"] == "draft" and [v["version"] for v in mask["versions"]] == [1]
    assert mask["versions"][0]["who"] == "model hippo-tiny/fold_0 (run by Dr Test)"

    v1 = nib.Nifti1Image.from_bytes(gzip.decompress(
        c.get(f"/api/studies/{study['id']}/masks/{mid}/versions/1/mask.nii.gz").content))
    arr = np.asarray(v1.dataobj).astype(np.uint8)
    assert arr.shape == (35, 51, 35) and arr.any()
    rows = c.get(f"/api/studies/{study['id']}/masks/{mid}/components").json()
    assert sum(r["voxels"] for r in rows) == int(np.count_nonzero(arr))
    assert all(r["volume_ml"] == pytest.approx(r["voxels"] / 1000, abs=1e-4) for r in rows)  # 1 mm voxels

    base = f"/api/studies/{study['id']}/masks/{mid}"
    assert c.get(f"{base}/export?format=nifti").status_code == 409  # not approved yet
    edited = arr.copy()
    edited[:] = 0
    edited[10:14, 20:25, 15:18] = 1  # one 4x5x3 box: 60 voxels, diameter sqrt(3^2+4^2+2^2)
    body = nifti_bytes(edited, v1.affine)
    r = c.post(f"{base}/versions?parent=1", content=body)
    assert r.status_code == 201, r.text
    assert [v["who"] for v in r.json()["versions"]][-1] == "Dr Test"
    r = c.post(f"{base}/versions?parent=1", content=body)  # based on an outdated version
    assert r.status_code == 409 and "version 2 was saved since" in r.json()["detail"]
    bad = edited.copy()
    bad[0, 0, 0] = 7
    r = c.post(f"{base}/versions?parent=2", content=nifti_bytes(bad, v1.affine))
    assert r.status_code == 400 and "[7]" in r.json()["detail"]
    rows = c.get(f"{base}/components").json()
    assert len(rows) == 1 and rows[0]["voxels"] == 60 and rows[0]["diameter_mm"] == pytest.approx(29 ** 0.5, abs=0.01)
    assert rows[0]["centre_voxel"] in [[11, 22, 16], [12, 22, 16], [11, 22, 17], [12, 22, 17]]

    assert c.post(f"{base}/status", json={"status": "approved", "version": 1}).status_code == 409
    r = c.post(f"{base}/status", json={"status": "approved", "version": 2})
    assert r.status_code == 200 and r.json()["status"] == "approved"
    assert r.json()["events"][-1]["who"] == "Dr Test"
    r = c.get(f"{base}/export?format=nifti")
    assert r.status_code == 200
    out = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    np.testing.assert_array_equal(np.asarray(out.dataobj), edited)
    np.testing.assert_allclose(out.affine, ref.affine)
    # a NIfTI study has no DICOM images to reference: the SEG comes in a ZIP with the scan written
    # as a DICOM series (modality chosen, OT by default), its frames on the mask voxel for voxel
    assert c.get(f"{base}/export?format=dicom-seg&modality=XA").status_code == 400
    r = c.get(f"{base}/export?format=dicom-seg&modality=MR")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].endswith('_seg_with_series.zip"')
    unpacked = tmp_path / "seg_zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        zf.extractall(unpacked)
    series = sorted((unpacked / "series").glob("*.dcm"))
    assert len(series) == 35
    from delineo.io.dicom import read_dicom_series

    scan = read_dicom_series(unpacked / "series")
    assert scan.modality == "MR"
    np.testing.assert_allclose(scan.affine, ref.affine, atol=1e-5)
    np.testing.assert_array_equal(scan.array, np.asarray(ref.dataobj))
    placed = seg_on_grid(next(unpacked.glob("*_seg.dcm")), ref.shape, ref.affine)
    assert set(placed) == {"Anterior"}
    np.testing.assert_array_equal(placed["Anterior"], edited == 1)
    r = c.get(f"{base}/export?format=rtstruct&modality=MR")
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        rt_names = zf.namelist()
        rt = pydicom.dcmread(io.BytesIO(zf.read(next(n for n in rt_names if n.endswith("_rtstruct.dcm")))))
    # the RTSTRUCT references the same derived series as the SEG (written once per study)
    assert sorted(n for n in rt_names if n.startswith("series/")) == [f"series/{f.name}" for f in series]
    ref_series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == pydicom.dcmread(series[0], stop_before_pixels=True).SeriesInstanceUID
    assert sorted(p.name for p in (tmp_path / "ws" / "studies" / study["id"] / "exports").glob("*.zip")) == [
        f"{mid}_v002_rtstruct_with_series.zip", f"{mid}_v002_seg_with_series.zip"]
    # every version stays on disk
    assert sorted(p.name for p in (tmp_path / "ws" / "studies" / study["id"] / "masks" / mid).glob("v*.nii.gz")) == [
        "v001.nii.gz", "v002.nii.gz"]

    # an explanation of label 2 (the one this tiny model predicts) as a heat map on the study's grid
    methods = c.get("/api/info").json()["explain_methods"]
    assert "saliency" in methods and "activation-maximisation" not in methods
    assert c.post(f"/api/studies/{study['id']}/explain", json={"model": models[0]["id"], "method": "nope"}).status_code == 400
    r = c.post(f"/api/studies/{study['id']}/explain", json={"model": models[0]["id"], "method": "saliency", "label": 2})
    assert r.status_code == 202
    ej = wait_job(c, r.json()["id"], 120)
    assert ej["state"] == "done", ej["message"]
    heat = nib.Nifti1Image.from_bytes(gzip.decompress(
        c.get(f"/api/studies/{study['id']}/explain/{ej['result']['explanation']}.nii.gz").content))
    assert heat.shape[:3] == (35, 51, 35) and np.allclose(heat.affine, ref.affine)
    magnitude = np.abs(np.asarray(heat.dataobj))
    lo, hi = ej["result"]["display"]
    # this barely trained model's softmax saturates, so its gradients may all be zero: then the
    # job says so (the UI tells the user) instead of showing an empty colour bar
    assert ej["result"]["empty"] == (not magnitude.any())
    if magnitude.any():
        assert 0 < lo < hi <= ej["result"]["max"] == pytest.approx(float(magnitude.max()))

    # a restarted server shows the same studies, masks and history
    c2 = client(tmp_path / "ws", serve_models)
    assert [s["id"] for s in c2.get("/api/studies").json()] == [study["id"]]
    again = c2.get(base).json()
    assert again["status"] == "approved" and len(again["versions"]) == 2 and again["events"][0]["version"] == 2
    assert c2.get(f"/api/jobs/{job['id']}").json()["state"] == "done"


def test_dicom_zip_to_dicom_seg_and_rtstruct(tmp_path, serve_models, hippocampus_dicom_zip):
    import highdicom as hd
    import pydicom

    c = client(tmp_path / "ws", serve_models)
    r = upload(c, hippocampus_dicom_zip)
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["kind"] == "dicom" and study["shape"] == [35, 51, 35] and len(study["series"]) == 1
    model = c.get("/api/models").json()[0]["id"]
    job = wait_job(c, c.post(f"/api/studies/{study['id']}/run", json={"model": model}).json()["id"])
    assert job["state"] == "done", job["message"]
    base = f"/api/studies/{study['id']}/masks/{job['result']['mask']}"
    assert c.post(f"{base}/status", json={"status": "approved", "version": 1}).status_code == 200
    arr = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(c.get(f"{base}/versions/1/mask.nii.gz").content)).dataobj)

    r = c.get(f"{base}/export?format=dicom-seg")
    assert r.status_code == 200, r.text
    seg = hd.seg.segread(io.BytesIO(r.content))
    names = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    present = sorted(int(v) for v in np.unique(arr) if v)
    assert sorted(names.values()) == sorted({1: "Anterior", 2: "Posterior"}[v] for v in present)
    assert seg.StudyInstanceUID == pydicom.dcmread(next((tmp_path / "ws" / "studies" / study["id"]).rglob("*.dcm")),
                                                   stop_before_pixels=True).StudyInstanceUID
    r = c.get(f"{base}/export?format=rtstruct")
    assert r.status_code == 200
    rt = pydicom.dcmread(io.BytesIO(r.content))
    assert rt.Modality == "RTSTRUCT" and len(rt.StructureSetROISequence) == len(present)


def test_hostile_uploads_are_refused(tmp_path):
    c = client(tmp_path / "ws", max_upload_mb=0.05)
    # path traversal inside a ZIP
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.dcm", b"\0" * 128 + b"DICM")
    r = c.post("/api/studies", files={"files": ("study.zip", buf.getvalue())})
    assert r.status_code == 400 and "outside" in r.json()["detail"]
    assert not (tmp_path / "evil.dcm").exists() and not list((tmp_path / "ws").rglob("evil.dcm"))
    assert c.get("/api/studies").json() == []
    # oversize: refused while it arrives
    r = c.post("/api/studies", files={"files": ("big.nii.gz", b"\0" * 100_000)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # unknown file types
    r = c.post("/api/studies", files={"files": ("run.sh", b"echo hi")})
    assert r.status_code == 400 and "unsupported file type" in r.json()["detail"]
    r = c.post("/api/studies", files={"files": ("x.nii.gz", b"not an image")})
    assert r.status_code == 400 and "x.nii.gz" in r.json()["detail"] and str(tmp_path) not in r.json()["detail"]
    assert c.get("/api/studies").json() == []
    # ids, not paths
    for url in ("/api/studies/..%2F..%2Fetc/image.nii.gz", "/api/studies/../../etc/passwd",
                "/static/..%2Fapp.py", "/api/studies/0123456789abcdef/image.nii.gz"):
        assert c.get(url).status_code == 404, url
    r = c.post("/api/studies/0123456789abcdef/run", json={"model": "../../../tmp/x.pt"})
    assert r.status_code == 404


def test_zip_bomb_is_refused(tmp_path):
    c = client(tmp_path / "ws", max_upload_mb=1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (50 << 20))  # 50 MB of zeros packs to ~50 kB
    assert len(buf.getvalue()) < 1 << 20
    r = c.post("/api/studies", files={"files": ("bomb.zip", buf.getvalue())})
    assert r.status_code == 400, r.text
    assert c.get("/api/studies").json() == []


def test_queue_is_bounded_and_says_busy(tmp_path):
    q = JobQueue(Workspace(tmp_path), workers=1, max_queued=2)
    gate = threading.Event()
    jobs = [q.submit("segment", "s", {}, lambda p: (gate.wait(10), {})[1]) for _ in range(3)]
    time.sleep(0.2)
    states = [q.get(j["id"]) for j in jobs]
    assert [s["state"] for s in states] == ["running", "queued", "queued"]
    assert states[2]["message"] == "busy, queued: 1 job(s) ahead, 1 running" and states[2]["queue_position"] == 2
    with pytest.raises(Busy):
        q.submit("segment", "s", {}, lambda p: {})
    gate.set()
    t0 = time.time()
    while any(q.get(j["id"])["state"] != "done" for j in jobs) and time.time() - t0 < 10:
        time.sleep(0.02)
    assert all(q.get(j["id"])["state"] == "done" for j in jobs)


def test_interrupted_jobs_are_marked_after_restart(tmp_path):
    ws = Workspace(tmp_path)
    ws.save_job({"id": "00000000000000aa", "kind": "segment", "study": "s", "params": {}, "state": "running",
                 "progress": 0.3, "message": "segmenting", "submitted": "2026-01-01T00:00:00+00:00"})
    q = JobQueue(ws)
    job = q.get("00000000000000aa")
    assert job["state"] == "interrupted" and "run it again" in job["message"]


def test_delineo_pipeline_file_is_offered_and_runs(tmp_path, serve_models):
    """A ``.delineo`` file in --models runs through the same loader registry as ``delineo predict``."""
    import yaml

    from delineo.cli import main

    models = tmp_path / "models"
    models.mkdir()
    spec = tmp_path / "p.yaml"
    spec.write_text(yaml.safe_dump({"name": "hippo-pipe", "stages": [
        {"name": "seg", "kind": "segment", "runs": [str(serve_models / "hippo-tiny" / "fold_0")]}]}))
    assert main(["-q", "pipeline", "build", str(spec), "--out", str(models / "hippo.delineo")]) == 0
    shutil.copytree(serve_models / "hippo-tiny", models / "hippo-tiny")
    c = client(tmp_path / "ws", models)
    listed = {m["name"]: m for m in c.get("/api/models").json()}
    assert set(listed) == {"hippo.delineo", "hippo-tiny/fold_0"} and listed["hippo.delineo"]["kind"] == "pipeline"
    assert [l["name"] for l in listed["hippo.delineo"]["labels"]] == ["Anterior", "Posterior"]
    sid = upload(c, CASE).json()["id"]
    arrays = []
    for name in ("hippo.delineo", "hippo-tiny/fold_0"):
        job = wait_job(c, c.post(f"/api/studies/{sid}/run", json={"model": listed[name]["id"]}).json()["id"])
        assert job["state"] == "done", job["message"]
        data = c.get(f"/api/studies/{sid}/masks/{job['result']['mask']}/versions/1/mask.nii.gz").content
        arrays.append(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(data)).dataobj))
    np.testing.assert_array_equal(arrays[0], arrays[1])  # one run as a pipeline predicts what the run predicts


def test_structure_boundary_and_diameter():
    from delineo.serve.analysis import boundary, components, largest_diameter

    cube = np.zeros((7, 7, 7), np.uint8)
    cube[2:5, 2:5, 2:5] = 2
    edge = boundary(cube)
    assert np.count_nonzero(edge) == 26 and edge[3, 3, 3] == 0 and set(np.unique(edge)) == {0, 2}
    rows = components(cube, np.diag([2.0, 1.0, 1.0, 1.0]), {2: "lesion"})
    assert rows[0]["volume_ml"] == pytest.approx(27 * 2 / 1000) and rows[0]["centre_voxel"] == [3, 3, 3]
    assert rows[0]["diameter_mm"] == pytest.approx(np.sqrt(4 ** 2 + 2 ** 2 + 2 ** 2), abs=0.01)
    flat = np.array([[x, y, 0.0] for x in range(20) for y in range(10)])  # one slice: hull is degenerate
    assert largest_diameter(flat) == pytest.approx(np.hypot(19, 9), abs=1e-6)


def test_dicom_folder_with_two_series_is_listed_and_picked(tmp_path):
    from .serve_fixtures import SAMPLE, dicom_series_from_nifti

    folder = tmp_path / "export"
    dicom_series_from_nifti(CASE, folder / "a")
    other = SAMPLE / "imagesTr" / "hippocampus_003_0000.nii.gz"
    dicom_series_from_nifti(other, folder / "b")
    (folder / "README.txt").write_text("not an image")
    files = [("files", (f"export/{p.relative_to(folder)}", p.read_bytes())) for p in sorted(folder.rglob("*")) if p.is_file()]
    c = client(tmp_path / "ws")
    r = c.post("/api/studies", files=files)
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["status"] == "pick-series" and len(study["series"]) == 2
    assert c.get(f"/api/studies/{study['id']}/image.nii.gz").status_code == 409  # nothing chosen yet
    assert c.post(f"/api/studies/{study['id']}/series", json={"uid": "1.2.3"}).status_code == 400
    want = nib.load(str(other)).shape
    for s in study["series"]:
        picked = c.post(f"/api/studies/{study['id']}/series", json={"uid": s["uid"]}).json()
        if tuple(picked["shape"]) == want:
            break
    else:
        raise AssertionError("the second case's series was not offered")
    assert picked["status"] == "ready" and picked["series_uid"] == s["uid"]
    img = nib.Nifti1Image.from_bytes(gzip.decompress(c.get(f"/api/studies/{study['id']}/image.nii.gz").content))
    assert img.shape == want


def test_broken_dicom_series_is_reported_by_upload_name(tmp_path):
    from .serve_fixtures import dicom_series_from_nifti, zip_folder

    series = dicom_series_from_nifti(CASE, tmp_path / "series")
    (series / "slice017.dcm").unlink()  # a missing slice
    archive = zip_folder(series, tmp_path / "gap.zip")
    c = client(tmp_path / "ws")
    r = c.post("/api/studies", files={"files": ("patient_gap.zip", archive.read_bytes())})
    detail = r.json()["detail"]
    assert r.status_code == 400 and detail.startswith("patient_gap.zip") and "missing" in detail, detail
    assert str(tmp_path) not in detail and c.get("/api/studies").json() == []


def test_mha_upload_and_live_job_events(tmp_path, serve_models):
    import json

    from delineo.io import read_image, write_image

    mha = write_image(read_image(CASE), tmp_path / "scan.mha")
    c = client(tmp_path / "ws", serve_models)
    study = upload(c, mha).json()
    assert study["status"] == "ready" and study["shape"] == [35, 51, 35]
    model = c.get("/api/models").json()[0]["id"]
    job = c.post(f"/api/studies/{study['id']}/run", json={"model": model}).json()
    states = []
    with c.stream("GET", f"/api/events?study={study['id']}") as events:  # server-sent events
        for line in events.iter_lines():
            if line.startswith("data: "):
                mine = [j for j in json.loads(line[6:])["jobs"] if j["id"] == job["id"]]
                states.append((mine[0]["state"], mine[0]["progress"]))
                if mine[0]["state"] in ("done", "failed"):
                    break
    assert states[-1] == ("done", 1.0), states
    progress = [p for _, p in states]
    assert progress == sorted(progress)  # progress only moves forward


def test_ct_dicom_gets_ct_window_presets(tmp_path):
    from .conftest import needs_shared
    from .serve_fixtures import zip_folder

    ct = needs_shared() / "ct-abdomen" / "dicom"
    archive = zip_folder(ct, tmp_path / "ct.zip")
    c = client(tmp_path / "ws")
    study = c.post("/api/studies", files={"files": ("ct.zip", archive.read_bytes())}).json()
    assert study["modality"] == "CT" and study["shape"] == [512, 512, 20] and study["window"] == "soft tissue"
    assert study["windows"]["lung"] == [-1350.0, 150.0] and study["windows"]["bone"] == [-500.0, 1300.0]
    assert set(study["windows"]) == {"auto", "soft tissue", "liver", "lung", "bone"}
    img = nib.Nifti1Image.from_bytes(gzip.decompress(c.get(f"/api/studies/{study['id']}/image.nii.gz").content))
    assert img.get_data_dtype() == np.int16 and int(np.asarray(img.dataobj).min()) <= -1000  # HU, air


def test_explain_one_lesion_uses_that_component_as_the_target(tmp_path, serve_models):
    """Explain for a clicked lesion: the heat map is the region target with that connected
    component as its mask (J = sum p * lesion), computed here again through the public
    explain API on the network's grid; it differs from the whole-label map, and (2D model,
    slice by slice) it is zero on every slice the lesion does not touch."""
    from delineo.explain import explain_full
    from delineo.infer.predictor import Predictor
    from delineo.io.files import read_image
    from delineo.io.image import Image
    from delineo.preprocess.pipeline import preprocess, restore

    c = client(tmp_path / "ws", serve_models)
    model = c.get("/api/models").json()[0]
    sid = upload(c, CASE).json()["id"]
    ref = nib.load(str(CASE))
    mask = np.zeros(ref.shape, np.uint8)
    mask[8:14, 18:26, 5:11] = 2    # posterior, 288 voxels: component 1 (slices 5-10)
    mask[20:24, 30:34, 20:23] = 2  # posterior, 48 voxels: component 2 (slices 20-22)
    mask[25:28, 10:13, 28:30] = 1  # anterior, elsewhere
    ws = c.app.state.workspace
    mid = ws.create_mask(sid, mask, {"id": model["id"], "name": model["name"],
                                     "labels": {"1": "Anterior", "2": "Posterior"}}, who="test")["id"]
    rows = c.get(f"/api/studies/{sid}/masks/{mid}/components").json()
    row = next(r for r in rows if r["label"] == 2 and r["component"] == 2)
    assert row["voxels"] == 48

    url = f"/api/studies/{sid}/explain"
    body = {"model": model["id"], "method": "saliency", "label": 2, "mask": mid, "version": 1}
    assert c.post(url, json={**body, "component": 3}).status_code == 400  # label 2 has two components
    assert c.post(url, json={**body, "component": 2, "label": None}).status_code == 400
    assert c.post(url, json={**body, "component": 2, "mask": "0" * 16}).status_code == 404
    assert c.post(url, json={**body, "component": 2, "version": 9}).status_code == 404
    r = c.post(url, json={**body, "component": row["component"]})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["lesion"] == {"mask": mid, "version": 1, "component": 2}
    job = wait_job(c, r.json()["id"], 180)
    assert job["state"] == "done", job["message"]
    assert job["result"]["lesion"]["voxels"] == 48 and job["result"]["lesion"]["centre_voxel"] == row["centre_voxel"]
    served = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(
        c.get(f"{url}/{job['result']['explanation']}.nii.gz").content)).dataobj)

    # the same map through the public API: region target, mask = the component on the network's grid
    predictor = Predictor.from_checkpoint(serve_models / "hippo-tiny" / "fold_0", device="cpu")
    meta, cfg = predictor.meta, predictor.cfg
    image = read_image(CASE)
    lesion = np.zeros(ref.shape, np.uint8)
    lesion[20:24, 30:34, 20:23] = 1
    x, lesion_pre, record = preprocess([image], Image(lesion, image.affine), cfg.preprocess)
    kw = dict(mode=meta.mode, axis=meta.axis, context=meta.context, label=2)
    model_net = predictor.model.float()

    def heat(m: np.ndarray) -> np.ndarray:
        full = restore(m if m.ndim == 4 else m[None], record)
        return np.abs(full).mean(axis=0)

    expected = heat(explain_full(model_net, x, "saliency", target="region", mask=lesion_pre > 0, **kw).map)
    whole_pre = preprocess([image], Image((mask == 2).astype(np.uint8), image.affine), cfg.preprocess)[1]
    whole = heat(explain_full(model_net, x, "saliency", target="region", mask=whole_pre > 0, **kw).map)
    assert expected.any(), "the known answer is a zero map: the check would prove nothing"
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-7 * float(expected.max()))
    assert not np.allclose(served, whole, rtol=1e-3, atol=1e-3 * float(whole.max()))
    per_slice = np.abs(served).reshape(-1, served.shape[2]).max(axis=0)  # 2D model along k
    assert meta.mode == "2d" and meta.axis == 2
    assert set(np.flatnonzero(per_slice)) <= {20, 21, 22} and per_slice[20:23].all()
    assert np.abs(whole[..., 5:11]).max() > 0  # the label-wide map also explains the other lesion


def test_diameter_from_surface_voxels_equals_all_voxels():
    """The structures table measures the diameter on surface voxels only (speed): the same number
    as the brute-force farthest pair over every voxel, on an irregular blob with anisotropic voxels."""
    from scipy import ndimage
    from scipy.spatial.distance import pdist

    from delineo.serve.analysis import components

    rng = np.random.default_rng(3)
    blob = ndimage.binary_dilation(rng.random((24, 20, 12)) > 0.985, iterations=2)
    lab, _ = ndimage.label(blob, structure=np.ones((3, 3, 3)))
    biggest = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    affine = np.diag([0.7, 1.3, 2.5, 1.0])
    affine[:3, 3] = [5.0, -3.0, 1.0]
    rows = components(biggest.astype(np.uint8), affine, {1: "blob"})
    points = np.argwhere(biggest) * np.array([0.7, 1.3, 2.5])
    assert rows[0]["voxels"] == int(biggest.sum()) > 100
    assert rows[0]["diameter_mm"] == pytest.approx(float(pdist(points).max()), abs=0.01)


def test_boundary_matches_its_definition_voxel_by_voxel():
    """Contour voxels = labelled voxels with a face neighbour of another value or outside the grid."""
    from delineo.serve.analysis import boundary

    rng = np.random.default_rng(0)
    m = ((rng.random((9, 7, 5)) > 0.4) * rng.integers(1, 4, (9, 7, 5))).astype(np.uint8)
    expected = np.zeros_like(m)
    for i, j, k in np.argwhere(m):
        for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            n = (i + d[0], j + d[1], k + d[2])
            if not all(0 <= n[a] < m.shape[a] for a in range(3)) or m[n] != m[i, j, k]:
                expected[i, j, k] = m[i, j, k]
    np.testing.assert_array_equal(boundary(m), expected)


def test_truncated_dicom_slice_is_named_not_read_as_a_gap(tmp_path):
    from .serve_fixtures import dicom_series_from_nifti, zip_folder

    series = dicom_series_from_nifti(CASE, tmp_path / "series")
    cut = series / "slice017.dcm"
    cut.write_bytes(cut.read_bytes()[:600])  # a copy interrupted mid-header
    archive = zip_folder(series, tmp_path / "cut.zip")
    c = client(tmp_path / "ws")
    r = c.post("/api/studies", files={"files": ("patient_cut.zip", archive.read_bytes())})
    detail = r.json()["detail"]
    assert r.status_code == 400 and "slice017.dcm" in detail and "truncated" in detail, detail
    assert "spacing" not in detail and "missing" not in detail, detail
    assert str(tmp_path) not in detail and c.get("/api/studies").json() == []
