"""The models the viewer offers: found once in the ``--models`` folder, loaded on first use.

A request names a model by an id the server made from its place in the folder, never by a path,
and nothing uploaded is ever loaded as a model: models come only from the folder the operator
chose when starting the server. Checkpoints are read with Delineo's safe loader (tensors and
plain values, no pickle).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from delineo.errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class ModelEntry:
    id: str
    name: str
    path: Path
    kind: str  # "run" | "checkpoint" | "pipeline"
    labels: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    error: str = ""

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "error": self.error,
                "labels": [{"value": v, "name": n, "color": list(self.colors.get(v, (255, 0, 0)))}
                           for v, n in sorted(self.labels.items())]}


def _id(rel: str) -> str:
    return hashlib.sha1(rel.encode()).hexdigest()[:16]


class ModelLibrary:
    """Models under ``root``: run folders (``checkpoints/best.pt``), ``.pt`` files, ``.delineo`` files."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser().resolve() if root else None
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.scan()

    def scan(self) -> list[ModelEntry]:
        found: dict[str, ModelEntry] = {}
        if self.root and self.root.is_dir():
            for path in sorted(self.root.rglob("*")):
                rel = path.relative_to(self.root)
                if len(rel.parts) > 6 or any(p.startswith(".") for p in rel.parts):
                    continue
                kind = None
                if path.is_dir() and (path / "checkpoints" / "best.pt").is_file():
                    kind = "run"
                elif path.is_file() and path.suffix == ".pt" and path.parent.name != "checkpoints":
                    kind = "checkpoint"
                elif path.is_file() and path.suffix == ".delineo":
                    kind = "pipeline"
                if kind:
                    entry = ModelEntry(_id(str(rel)), str(rel), path, kind)
                    self._describe(entry)
                    found[entry.id] = entry
        self._entries = found
        return list(found.values())

    def _describe(self, entry: ModelEntry) -> None:
        from delineo.io.export import resolve_colors

        try:
            if entry.kind == "pipeline":  # the manifest is inside the file: load it once
                labels = dict(self.predictor(entry).labels)
            else:
                from delineo.modelfile.checkpoint import load_checkpoint

                ckpt = load_checkpoint(entry.path)
                labels = {int(k): str(v) for k, v in ckpt["meta"]["labels"].items()}
            entry.labels = {int(k): str(v) for k, v in labels.items()}
            entry.colors = resolve_colors(entry.labels)
        except Exception as exc:  # a broken file is listed with its reason, not fatal for the server
            entry.error = str(exc)
            log.warning("model %s: %s", entry.path, exc)

    def preload(self) -> threading.Thread:
        """Load every usable model in a background thread, so the first Run does not pay for it."""

        def work() -> None:
            for entry in self.list():
                if not entry.error:
                    try:
                        self.predictor(entry)
                    except Exception as exc:  # reported when a job uses it
                        log.warning("model %s could not be preloaded: %s", entry.name, exc)

        thread = threading.Thread(target=work, name="delineo-preload", daemon=True)
        thread.start()
        return thread

    def list(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def get(self, mid: str) -> ModelEntry:
        entry = self._entries.get(str(mid))
        if entry is None:
            raise LookupError(f"model '{str(mid)[:40]}' does not exist.")
        if entry.error:
            raise InputError(f"model {entry.name}: {entry.error}")
        return entry

    def predictor(self, entry: ModelEntry) -> Any:
        """The loaded model through :func:`delineo.infer.loaders.load_predictor` (run folders,
        checkpoints and ``.delineo`` files alike); cached, and loading is serialised so two jobs
        never load the same model twice."""
        with self._lock:
            if entry.id not in self._loaded:
                from delineo.infer.loaders import load_predictor

                self._loaded[entry.id] = load_predictor(entry.path, device="cpu")
            return self._loaded[entry.id]

    def segment(self, entry: ModelEntry, image: Any, progress: Progress) -> np.ndarray:
        """The label mask of ``image`` (a Delineo Image) on its own grid."""
        progress(0.1, "loading model")
        model = self.predictor(entry)
        progress(0.3, "segmenting")
        mask, _, _ = model.predict([image])
        progress(0.9, "saving mask")
        return np.asarray(mask.array).astype(np.uint8)

    def explain(self, entry: ModelEntry, image_path: Path, out_dir: Path, method: str, label: int | None,
                progress: Progress, region: Path | None = None) -> Path:
        """A heat map of ``method`` for ``label`` in the image's geometry (NIfTI path).

        ``region`` (a NIfTI on the image's grid holding one lesion as ``label``) restricts what
        is explained to that lesion: ``delineo explain``'s ``true-positive`` target with the
        lesion as the reference is ``J = sum p(label) * lesion``, the region target with the
        lesion as its mask (:func:`delineo.explain.targets.make_target`), carried to the
        network's grid by the same preprocessing as the scan."""
        if entry.kind == "pipeline":
            raise InputError(f"model {entry.name}: explanations need a single network (a run folder or checkpoint).")
        from delineo.explain.api import METHODS
        from delineo.explain.run import explain_scan

        spec = METHODS.get(method)
        if spec is None or spec.kind == "synthetic":
            raise InputError(f"explain method '{str(method)[:40]}' is not one of {', '.join(explain_methods())}.")
        layer = None
        if spec.needs_layer:
            from delineo.explain.layers import conv_layers

            layer = default_layer(conv_layers(self.predictor(entry).predictor.model))
        progress(0.2, f"explaining ({method})")
        if region is not None:
            report = explain_scan(entry.path, image_path, out_dir, method, target="true-positive", label=label,
                                  layer=layer, reference=region)
        else:
            report = explain_scan(entry.path, image_path, out_dir, method, label=label, layer=layer)
        return Path(report["map"])


def default_layer(convs: list[str]) -> str:
    """Grad-CAM-type methods: the deepest encoder convolution (coarse but class-discriminative)."""
    enc = [c for c in convs if "enc" in c or "down" in c or "bottleneck" in c]
    pool = enc or convs
    if not pool:
        raise InputError("the model has no convolution layer to explain.")
    return pool[-1]


def explain_methods() -> list[str]:
    """Methods the viewer offers: those that map the scan (not activation maximisation)."""
    from delineo.explain.api import METHODS

    return [m for m, spec in METHODS.items() if spec.kind != "synthetic"]
