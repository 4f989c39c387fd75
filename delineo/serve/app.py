"""The viewer's HTTP API and pages (FastAPI): studies, models, jobs with live progress, masks
with their history, explanations and exports. It calls Delineo's public API only.

Safety by default: every request needs the access token (``Authorization: Bearer``, the
``token`` query parameter of the first page load, which is turned into an HttpOnly cookie, or
that cookie); uploads are capped in size while they arrive; ids in URLs are server-made ids
checked by shape, so no user-supplied path reaches the file system; models come only from the
operator's ``--models`` folder; every asset is served from the package (no internet).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from delineo.errors import DelineoError, InputError
from delineo.serve import analysis, ingest
from delineo.serve.export import SUFFIX as EXPORT_SUFFIX
from delineo.serve.export import export_mask
from delineo.serve.jobs import Busy, JobQueue
from delineo.serve.models import ModelLibrary, explain_methods
from delineo.serve.store import Conflict, NotFound, Workspace, check_id, new_id

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "delineo_token"


@dataclass
class Settings:
    """What ``delineo serve`` configures; the defaults are the safe ones."""

    workspace: Path
    models: Optional[Path] = None
    token: Optional[str] = None  # None: a random one; "" disables authentication (explicit opt-out)
    max_upload_mb: float = 1024.0
    workers: int = 1
    max_queued: int = 16
    user: str = ""


def _who(request: Request, default: str) -> str:
    raw = request.headers.get("x-delineo-user", "") or default
    clean = re.sub(r"[^\w .@'-]", "", raw)[:80].strip()
    return clean or "unknown"


class _UploadLimit:
    """ASGI middleware: refuse request bodies over the cap (413) before they fill the disk."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(send, self.max_bytes)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except _TooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send, max_bytes: int) -> None:
    body = json.dumps({"detail": f"upload refused: larger than the limit of {max_bytes / 2**20:.0f} MB "
                                 "(delineo serve --max-upload-mb)."}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings) -> FastAPI:
    """The ASGI application for ``settings`` (``app.state.token`` holds the access token)."""
    ws = Workspace(settings.workspace)
    library = ModelLibrary(settings.models)
    queue = JobQueue(ws, settings.workers, settings.max_queued)
    token = secrets.token_urlsafe(24) if settings.token is None else settings.token
    default_user = settings.user or _login()
    max_bytes = int(settings.max_upload_mb * 2**20)

    app = FastAPI(title="Delineo viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token, app.state.workspace, app.state.queue, app.state.library = token, ws, queue, library
    app.add_middleware(_UploadLimit, max_bytes=max_bytes)

    # ------------------------------------------------------------------ auth and errors
    def authorised(request: Request) -> bool:
        if not token:
            return True
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and secrets.compare_digest(given.encode(), token.encode())

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if not authorised(request):
            if request.url.path.startswith("/api/"):
                return JSONResponse({"detail": "access token missing or wrong: open the URL printed by "
                                               "'delineo serve' (it ends with ?token=...)."}, status_code=401)
            return HTMLResponse("<!doctype html><title>Delineo</title><p>Access token missing or wrong: open the "
                                "URL printed by <code>delineo serve</code> (it ends with <code>?token=...</code>).",
                                status_code=401)
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data: blob:; "
                                                       "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
                                                       "connect-src 'self' blob: data:")
        return response

    @app.exception_handler(NotFound)
    async def _nf(_: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(LookupError)
    async def _lk(_: Request, exc: LookupError):
        return JSONResponse({"detail": str(exc).strip("'\"")}, status_code=404)

    @app.exception_handler(Conflict)
    async def _cf(_: Request, exc: Conflict):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "30"})

    @app.exception_handler(DelineoError)
    async def _bad(_: Request, exc: DelineoError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # ------------------------------------------------------------------ pages and assets
    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request):
        if token and request.query_params.get("token"):
            response = RedirectResponse("/", status_code=303)  # keep the token out of the address bar
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith(".") or not path.is_file():
            raise NotFound(f"no asset '{name[:40]}'.")
        response = FileResponse(path)
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    # ------------------------------------------------------------------ info, models
    @app.get("/api/info")
    async def info(request: Request):
        return {"user": _who(request, default_user), "models": [m.public() for m in library.list()],
                "explain_methods": explain_methods(), "max_upload_mb": settings.max_upload_mb,
                "workers": queue.workers, "max_queued": queue.max_queued, "presets": ingest.CT_PRESETS}

    @app.get("/api/models")
    async def models():
        return [m.public() for m in library.list()]

    # ------------------------------------------------------------------ studies
    @app.get("/api/studies")
    async def studies():
        return ws.studies()

    @app.post("/api/studies", status_code=201)
    async def upload(request: Request):
        form = await request.form(max_files=20000, max_fields=100)
        tmp = ws.tmp_dir()
        try:
            uploads = []
            parts = [(k, v) for k, v in form.multi_items() if k == "files" and hasattr(v, "filename")]
            for i, (key, value) in enumerate(parts):
                name = str(value.filename or "upload")
                try:
                    ingest.upload_kind(name)  # refuse unknown types before copying
                except InputError:
                    if len(parts) == 1:
                        raise
                    log.info("upload: %s skipped (not an image or DICOM file).", name)
                    continue  # a folder upload: stray notes, thumbnails, etc. are left out
                dest = tmp / f"u{i:06d}"
                with open(dest, "wb") as out:
                    await run_in_threadpool(shutil.copyfileobj, value.file, out, 1 << 20)
                uploads.append(ingest.Upload(name, dest))
            label = form.get("name")
            return await run_in_threadpool(ingest.ingest, ws, uploads, max_bytes, str(label) if label else None)
        finally:
            await form.close()
            shutil.rmtree(tmp, ignore_errors=True)

    @app.get("/api/studies/{sid}")
    async def study(sid: str):
        return ws.study(sid)

    @app.delete("/api/studies/{sid}")
    async def delete_study(sid: str):
        ws.delete_study(sid)
        return {"deleted": sid}

    @app.post("/api/studies/{sid}/series")
    async def choose_series(sid: str, request: Request):
        body = await _json(request)
        return await run_in_threadpool(ingest.pick_series, ws, sid, str(body.get("uid", "")))

    @app.get("/api/studies/{sid}/image.nii.gz")
    async def image(sid: str):
        return FileResponse(ws.image_path(sid), media_type="application/gzip")

    # ------------------------------------------------------------------ jobs
    @app.post("/api/studies/{sid}/run", status_code=202)
    async def run(sid: str, request: Request):
        body = await _json(request)
        ws.image_path(sid)
        entry = library.get(str(body.get("model", "")))
        who = _who(request, default_user)

        def work(progress):
            progress(0.05, "reading the scan")
            img = ingest.read_volume(ws, sid)
            mask = library.segment(entry, img, progress)
            info = ws.create_mask(sid, mask, {"id": entry.id, "name": entry.name,
                                              "labels": {str(k): v for k, v in entry.labels.items()}},
                                  who=f"model {entry.name} (run by {who})")
            return {"mask": info["id"]}

        return queue.submit("segment", sid, {"model": entry.id, "model_name": entry.name}, work)

    @app.post("/api/studies/{sid}/explain", status_code=202)
    async def explain(sid: str, request: Request):
        body = await _json(request)
        image_path = ws.image_path(sid)
        entry = library.get(str(body.get("model", "")))
        method = str(body.get("method", "saliency"))
        if method not in explain_methods():
            raise InputError(f"explain method '{method[:40]}' is not one of {', '.join(explain_methods())}.")
        label = body.get("label")
        label = int(label) if label not in (None, "", "all") else None
        if label is not None and label not in entry.labels:
            raise InputError(f"label {label} is not one of the model's labels {sorted(entry.labels)}.")
        lesion, voxels = await run_in_threadpool(_lesion_request, ws, sid, body, label)

        def work(progress):
            out = ws.tmp_dir()
            try:
                region = None
                if voxels is not None:  # one connected component of a stored mask version
                    import nibabel as nib

                    region = out / "lesion.nii.gz"
                    affine = nib.load(str(image_path)).affine
                    nib.save(nib.Nifti1Image(voxels.astype(np.uint8) * np.uint8(label), affine), str(region))
                path = library.explain(entry, image_path, out, method, label, progress, region=region)
                eid = new_id()
                dest = ws.study_dir(sid) / "explain" / f"{eid}.nii.gz"
                dest.parent.mkdir(exist_ok=True)
                shutil.move(str(path), dest)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            import nibabel as nib

            img = nib.load(str(dest))
            values = np.abs(np.asarray(img.dataobj, dtype=np.float32))
            if values.ndim == 4:  # one map per input channel or layer channel: one heat map to show
                values = values.mean(axis=3) if values.shape[3] > 1 else values[..., 0]
                nib.save(nib.Nifti1Image(values, img.affine), str(dest))
            nonzero = values[np.isfinite(values) & (values > 0)]
            # display range: attributions are heavy-tailed, so the colour bar spans the strongest
            # 10% (90th to 99.9th percentile of the non-zero magnitudes), not 0..max
            lo, hi = (np.percentile(nonzero, [90, 99.9]) if nonzero.size else (0.0, 1.0))
            return {"explanation": eid, "method": method, "label": label, "display": [float(lo), float(max(hi, lo + 1e-12))],
                    "max": float(nonzero.max()) if nonzero.size else 0.0, "empty": not nonzero.size,
                    "lesion": lesion}

        params = {"model": entry.id, "method": method, "label": label}
        if lesion is not None:
            params["lesion"] = {k: lesion[k] for k in ("mask", "version", "component")}
        return queue.submit("explain", sid, params, work)

    @app.get("/api/studies/{sid}/explain/{eid}.nii.gz")
    async def explanation(sid: str, eid: str):
        return FileResponse(ws.explain_path(sid, eid), media_type="application/gzip")

    @app.get("/api/jobs")
    async def jobs(study: Optional[str] = None):
        return queue.list(study)

    @app.get("/api/jobs/{jid}")
    async def job(jid: str):
        return queue.get(check_id(jid, "job"))

    @app.get("/api/events")
    async def events(request: Request, study: Optional[str] = None):
        """Server-sent events: the job list whenever a job changes (live progress)."""

        async def stream():
            version = -1
            last_beat = time.monotonic()
            while not await request.is_disconnected():
                if queue.version != version:
                    version = queue.version
                    data = json.dumps({"jobs": queue.list(study), "counts": queue.counts()})
                    yield f"event: jobs\ndata: {data}\n\n"
                    last_beat = time.monotonic()
                elif time.monotonic() - last_beat > 15:
                    yield ": keep-alive\n\n"
                    last_beat = time.monotonic()
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ masks
    @app.get("/api/studies/{sid}/masks")
    async def masks(sid: str):
        return ws.masks(sid)

    @app.get("/api/studies/{sid}/masks/{mid}")
    async def mask(sid: str, mid: str):
        return ws.mask(sid, mid)

    @app.get("/api/studies/{sid}/masks/{mid}/versions/{version}/mask.nii.gz")
    async def mask_file(sid: str, mid: str, version: int):
        return FileResponse(ws.version_path(sid, mid, version), media_type="application/gzip")

    @app.get("/api/studies/{sid}/masks/{mid}/versions/{version}/contour.nii.gz")
    async def contour_file(sid: str, mid: str, version: int):
        """The version's contour voxels (for the "contours only" display)."""

        def make() -> bytes:
            import gzip

            import nibabel as nib

            img = nib.load(str(ws.version_path(sid, mid, version)))
            edge = analysis.boundary(np.asarray(img.dataobj).astype(np.uint8))
            return gzip.compress(nib.Nifti1Image(edge, img.affine).to_bytes(), compresslevel=1)

        return Response(await run_in_threadpool(make), media_type="application/gzip")

    @app.post("/api/studies/{sid}/masks/{mid}/versions", status_code=201)
    async def save_version(sid: str, mid: str, request: Request, parent: int, note: str = ""):
        """A corrected mask: the NIfTI bytes the viewer's drawing layer saved, as the body."""
        data = await request.body()
        info = ws.mask(sid, mid)
        allowed = {0, *(int(k) for k in info["model"].get("labels", {}))}

        def store():
            array = _nifti_labels(ws, data, allowed)
            return ws.add_version(sid, mid, array, _who(request, default_user), parent, note[:500])

        return await run_in_threadpool(store)

    @app.post("/api/studies/{sid}/masks/{mid}/status")
    async def set_status(sid: str, mid: str, request: Request):
        body = await _json(request)
        return ws.set_status(sid, mid, str(body.get("status", "")), _who(request, default_user),
                             int(body.get("version", -1)), str(body.get("note", ""))[:500])

    @app.get("/api/studies/{sid}/masks/{mid}/components")
    async def mask_components(sid: str, mid: str, version: Optional[int] = None):
        info = ws.mask(sid, mid)
        labels = {int(k): v for k, v in info["model"].get("labels", {}).items()}

        def compute():
            import nibabel as nib

            path = ws.version_path(sid, mid, version)
            img = nib.load(str(path))
            return analysis.components(np.asarray(img.dataobj).astype(np.uint8), np.asarray(img.affine), labels)

        return await run_in_threadpool(compute)

    @app.get("/api/studies/{sid}/masks/{mid}/export")
    async def export(sid: str, mid: str, format: str = "nifti", modality: str = "", patient_name: str = "",
                     patient_id: str = ""):
        """Write the approved version in ``format`` to the study's exports and download it. A
        DICOM-SEG / RTSTRUCT of a study that arrived as a file comes as a ZIP with a derived DICOM
        series of the scan (``modality`` CT, MR or OT, the default) that the object references."""
        fmt = format.lower()
        if fmt not in EXPORT_SUFFIX:
            raise InputError(f"export format '{fmt[:20]}' is not one of {', '.join(EXPORT_SUFFIX)}.")
        info = ws.mask(sid, mid)
        if info.get("status") != "approved":
            raise Conflict(f"mask '{mid}' is {info.get('status', 'draft')}: approve it before exporting.")
        version = int(info["status_version"])

        def write() -> Path:
            from delineo.io.image import Image

            source = ingest.read_source(ws, sid)
            array = ws.read_version(sid, mid, version)
            if tuple(array.shape) != tuple(source.spatial_shape):
                raise Conflict(f"mask '{mid}' does not fit the study's image grid.")
            mask_img = Image(array, source.affine.copy(), "SEG", dict(source.meta))
            labels = {int(k): v for k, v in info["model"].get("labels", {}).items()}
            return export_mask(ws, sid, mid, version, fmt, mask_img, source, labels,
                               f"{info['model'].get('name', 'model')} (Delineo viewer, approved)",
                               modality, patient_name[:64], patient_id[:64])

        path = await run_in_threadpool(write)
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")

    app.router.on_shutdown.append(queue.shutdown)
    return app


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InputError("request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object.")
    return body


def _lesion_request(ws: Workspace, sid: str, body: dict[str, Any],
                    label: int | None) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """The lesion an explanation is restricted to: ``mask``, ``version`` (default the latest) and
    ``component`` (1 = largest) of ``label`` in the request, i.e. a row of the structures table,
    found by :func:`analysis.component_mask` (the table's own ranking) before the job is queued.
    Returns (its description, its voxels), or (None, None) for a request without one."""
    if body.get("component") in (None, ""):
        return None, None
    try:
        rank = int(body["component"])
        version = None if body.get("version") in (None, "") else int(body["version"])
    except (TypeError, ValueError):
        raise InputError("explain: 'component' and 'version' must be whole numbers.") from None
    if label is None:
        raise InputError("explain: a lesion is a component of one label; give 'label' with 'component'.")
    mid = check_id(str(body.get("mask", "")), "mask")
    info = ws.mask(sid, mid)
    version = int(info["versions"][-1]["version"]) if version is None else version
    voxels = analysis.component_mask(ws.read_version(sid, mid, version), label, rank)
    inside = np.argwhere(voxels)
    centre = inside.mean(axis=0)
    return ({"mask": mid, "version": version, "label": label, "component": rank, "voxels": int(len(inside)),
             "centre_voxel": [int(v) for v in inside[np.argmin(((inside - centre) ** 2).sum(1))]]}, voxels)


def _nifti_labels(ws: Workspace, data: bytes, allowed: set[int]) -> np.ndarray:
    """The label array of an uploaded NIfTI mask (raw or gzipped), values checked."""
    import gzip

    import nibabel as nib

    if not data:
        raise InputError("corrected mask: the request body is empty.")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except OSError:
            raise InputError("corrected mask: damaged gzip data.") from None
    try:
        img = nib.Nifti1Image.from_bytes(data)
        array = np.asarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"corrected mask: not a readable NIfTI image ({type(exc).__name__}).") from None
    array = np.squeeze(array)
    if array.ndim != 3 or not np.all(np.isfinite(array)):
        raise InputError(f"corrected mask: expected a 3D label image, got shape {array.shape}.")
    values = {int(v) for v in np.unique(array)}
    if not values <= allowed:
        raise InputError(f"corrected mask: label values {sorted(values - allowed)} are not labels of this model "
                         f"({sorted(allowed - {0})}).")
    return array.astype(np.uint8)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "user"
