"""The ``.delineo`` file: a whole pipeline (every stage, member, weight and chosen option) as one
artefact that ``delineo predict`` runs and ``delineo info`` describes.

Layout: a ZIP archive with

- ``manifest.json``: format version, Delineo version, pipeline name, labels and colours,
  input channels, and per stage its kind, its JSON spec (members' resolved configs and metas,
  combine rule, TTA, fusion, thresholds, post-processing and the search tables) and the name of
  its tensor entry; plus the SHA-256 of every other entry;
- ``manifest.sha256``: the SHA-256 of ``manifest.json``;
- ``tensors/<i>.pt``: one flat ``{name: tensor}`` dict per stage, read with
  ``torch.load(weights_only=True)`` (tensors and plain containers only).

Why a ZIP of ``.pt`` dicts rather than safetensors: no new dependency, and ``weights_only``
already refuses anything but tensors. Loading never executes code from the file, never writes
the members to disk (no extraction, so no path traversal), reads each entry with a size bound
that does not trust the header (no zip bomb), and checks every checksum before use. A bad
checksum or a file from an incompatible format version is one sentence (``InputError``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from delineo.errors import InputError
from delineo.io.atomic import atomic_path

log = logging.getLogger(__name__)

#: the major number changes when an older reader could not run the file
PIPELINE_FORMAT = "delineo-pipeline/1"
SUFFIX = ".delineo"
MAX_MANIFEST_BYTES = 64 << 20
MAX_ENTRY_BYTES = 8 << 30
MAX_ENTRIES = 4096


@dataclass
class PipelineFile:
    """What a ``.delineo`` file holds, in memory: the manifest and each stage's tensors."""

    manifest: dict[str, Any]
    tensors: list[dict[str, torch.Tensor]] = field(default_factory=list)  # one dict per stage


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buf)
    return buf.getvalue()


def write_pipeline_file(path: str | Path, pf: PipelineFile) -> Path:
    """Write ``pf`` atomically to ``path`` (the manifest gains format, version and checksums)."""
    from delineo import __version__

    path = Path(path)
    manifest = json.loads(json.dumps(pf.manifest))  # a deep copy that proves it is JSON-able
    manifest["format"] = PIPELINE_FORMAT
    manifest["delineo_version"] = __version__
    manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    entries: dict[str, bytes] = {}
    for i, (stage, tensors) in enumerate(zip(manifest["stages"], pf.tensors)):
        name = f"tensors/{i}.pt"
        entries[name] = _tensor_bytes(tensors)
        stage["tensors"] = name
    manifest["entries"] = {name: sha256(data) for name, data in entries.items()}
    text = json.dumps(manifest, indent=1, sort_keys=False).encode()
    with atomic_path(path, suffix=SUFFIX) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            zf.writestr("manifest.json", text)
            zf.writestr("manifest.sha256", sha256(text))
            for name, data in entries.items():  # float weights barely compress: stored, not deflated
                zf.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return path


def _read_entry(zf: zipfile.ZipFile, path: Path, name: str, limit: int) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise InputError(f"{path}: damaged pipeline file, entry '{name}' is missing.") from None
    if info.file_size > limit:
        raise InputError(f"{path}: refused, entry '{name}' claims {info.file_size} bytes (limit {limit}).")
    with zf.open(info) as fh:
        data = fh.read(limit + 1)  # never more than the limit, whatever the header says
    if len(data) > limit:
        raise InputError(f"{path}: refused, entry '{name}' inflates beyond {limit} bytes.")
    return data


def read_manifest(path: str | Path) -> tuple[dict[str, Any], zipfile.ZipFile]:
    """Open a ``.delineo`` file and return its checked manifest and the open archive."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pipeline file not found.")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a Delineo pipeline file ({type(exc).__name__}: not a ZIP archive).") from None
    names = zf.namelist()
    if len(names) > MAX_ENTRIES:
        raise InputError(f"{path}: refused, {len(names)} entries (a pipeline file holds at most {MAX_ENTRIES}).")
    for name in names:
        if name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name:
            raise InputError(f"{path}: refused, entry name '{name}' is not a plain relative path.")
    if "manifest.json" not in names:
        raise InputError(f"{path}: not a Delineo pipeline file (no manifest.json inside).")
    text = _read_entry(zf, path, "manifest.json", MAX_MANIFEST_BYTES)
    expected = _read_entry(zf, path, "manifest.sha256", 128).decode("ascii", "replace").strip()
    if sha256(text) != expected:
        raise InputError(f"{path}: checksum mismatch for manifest.json; the file is damaged or was modified.")
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path}: damaged pipeline file, manifest.json is not JSON.") from None
    fmt = str(manifest.get("format", ""))
    if fmt.split("/")[0] != PIPELINE_FORMAT.split("/")[0]:
        raise InputError(f"{path}: not a Delineo pipeline file (format '{fmt}').")
    if fmt.split("/")[-1] != PIPELINE_FORMAT.split("/")[-1]:
        raise InputError(f"{path}: pipeline format '{fmt}' (written by Delineo {manifest.get('delineo_version', '?')}) "
                         f"is not supported by this Delineo, which reads {PIPELINE_FORMAT}.")
    return manifest, zf


def read_pipeline_file(path: str | Path) -> PipelineFile:
    """Read and verify a ``.delineo`` file: every checksum, then the tensors (``weights_only``)."""
    path = Path(path)
    manifest, zf = read_manifest(path)
    with zf:
        entries = manifest.get("entries", {})
        tensors = []
        for stage in manifest.get("stages", []):
            name = stage.get("tensors")
            if name not in entries:
                raise InputError(f"{path}: damaged pipeline file, stage {stage.get('name')} has no checksummed tensors.")
            data = _read_entry(zf, path, name, MAX_ENTRY_BYTES)
            if sha256(data) != entries[name]:
                raise InputError(f"{path}: checksum mismatch for {name}; the file is damaged or was modified.")
            try:
                loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
                raise InputError(f"{path}: refused {name}, it is not plain tensors ({type(exc).__name__}).") from None
            if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in loaded.items()):
                raise InputError(f"{path}: refused {name}, it is not a flat dict of tensors.")
            tensors.append(loaded)
    return PipelineFile(manifest, tensors)


def is_pipeline_file(path: str | Path) -> bool:
    """True for a ``.delineo`` file (by suffix, or a ZIP holding manifest.json)."""
    path = Path(path)
    if path.suffix.lower() == SUFFIX:
        return True
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return "manifest.json" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
