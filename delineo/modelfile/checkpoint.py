"""Training checkpoints: tensors and JSON-like values only, written atomically, read safely.

A checkpoint holds the resolved experiment (``config``), what the network expects and produces
(``meta``, a :class:`ModelMeta`), the weights and, for resuming, optimiser and schedule state.
Only plain containers, numbers, strings and tensors go in, so ``torch.load(weights_only=True)``
reads it back: pickled Python objects (which can run arbitrary code when unpickled) are refused.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delineo.errors import InputError
from delineo.io.atomic import atomic_path

log = logging.getLogger(__name__)

#: written into every checkpoint; a reader refuses other major versions with one sentence
CHECKPOINT_FORMAT = "delineo-checkpoint/1"


@dataclass
class ModelMeta:
    """Facts a checkpoint carries besides the config: what the network expects and produces."""

    in_channels: int
    out_channels: int
    dims: int
    mode: str
    patch_size: list[int]
    axis: int
    context: int
    labels: dict[int, str]
    channels: list[str]
    divisor: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        d["patch_size"] = [int(v) for v in self.patch_size]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        d = dict(d)
        d["labels"] = {int(k): v for k, v in d["labels"].items()}
        return cls(**d)


def plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and paths turned into types that
    ``weights_only`` loading accepts (numbers, str, list, dict, tensors)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` atomically (a crash leaves the previous file intact)."""
    data = plain(dict(ckpt))
    data.setdefault("format", CHECKPOINT_FORMAT)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(data, tmp)


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file itself, or ``checkpoints/best.pt`` of a run folder."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "checkpoints" / "best.pt", path / "best.pt", path / "checkpoints" / "last.pt"):
            if cand.is_file():
                return cand
        raise InputError(f"{path}: no checkpoint (checkpoints/best.pt) in this folder.")
    if not path.is_file():
        raise InputError(f"{path}: model checkpoint not found.")
    return path


def read_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``; every failure is one sentence."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # garbage, not a pickle that names foreign objects
            raise InputError(f"{path}: not a readable Delineo checkpoint (UnpicklingError).") from None
        raise InputError(
            f"{path}: refused, the file holds Python objects besides tensors and plain values, and loading them "
            "could run code from the file; if you trust its origin, convert it once with: "
            f"delineo convert-checkpoint {path} {path.with_name(path.stem + '_safe.pt')}") from None
    except Exception as exc:  # torch raises many types for corrupt or truncated files
        raise InputError(f"{path}: not a readable Delineo checkpoint ({type(exc).__name__}).") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "config" not in ckpt:
        raise InputError(f"{path}: not a Delineo checkpoint (no model or config inside).")
    fmt = str(ckpt.get("format", CHECKPOINT_FORMAT))
    if fmt.split("/")[0] != CHECKPOINT_FORMAT.split("/")[0] or fmt.split("/")[-1] != CHECKPOINT_FORMAT.split("/")[-1]:
        raise InputError(f"{path}: checkpoint format '{fmt}' is not supported by this Delineo "
                         f"(it reads {CHECKPOINT_FORMAT}).")
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file, or ``checkpoints/best.pt`` of a run folder (safe: no code runs)."""
    found = find_checkpoint(path)
    ckpt = read_checkpoint_file(found, map_location)
    ckpt["path"] = str(found)
    return ckpt


def convert_legacy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Rewrite a checkpoint that needs full unpickling as a safe one.

    This is the one place that unpickles with ``weights_only=False``; it runs only when a user
    asks for it by name (``delineo convert-checkpoint``) for a file they trust.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"{src}: checkpoint not found.")
    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"{src}: not a readable checkpoint ({type(exc).__name__}).") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "config" not in ckpt:
        raise InputError(f"{src}: not a Delineo checkpoint (no model or config inside).")
    save_checkpoint(dst, ckpt)
    read_checkpoint_file(dst)  # proves the result loads safely
    log.info("%s: converted to %s", src, dst)
    return dst
