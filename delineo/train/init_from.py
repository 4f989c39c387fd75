"""``train.init_from``: start a run from another run's weights (the liver recipe's lesion network
initialised from the liver network, as in Christ et al. 2016).

The checkpoint is read with :func:`delineo.modelfile.load_checkpoint` (``weights_only``: no code
from the file runs). Weights load by name; the one difference allowed is the output layer's
number of outputs (a lesion model with liver + tumour outputs started from a liver model), whose
tensors keep their initialisation. Anything else that differs (a missing or extra layer, another
shape) means another architecture, and is refused in one sentence rather than half-loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from delineo.errors import ConfigError, InputError
from delineo.modelfile.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def init_from(model: nn.Module, source: str | Path, out_channels: int) -> list[str]:
    """Load ``source``'s weights into ``model``; returns the keys that kept their initialisation."""
    try:
        ckpt = load_checkpoint(source)
    except InputError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    theirs: dict[str, torch.Tensor] = ckpt["model_state"]
    their_out = int(ckpt.get("meta", {}).get("out_channels", out_channels))
    own = model.state_dict()
    missing = sorted(k for k in own if k not in theirs and not k.endswith("num_batches_tracked"))
    extra = sorted(k for k in theirs if k not in own and not k.endswith("num_batches_tracked"))
    if missing or extra:
        first = (missing or extra)[0]
        raise ConfigError(f"train.init_from {ckpt['path']}: another architecture ({len(missing)} layers of this model "
                          f"are not in it, {len(extra)} of its layers are not in this model, e.g. '{first}'); "
                          "start from a run of the same model.")
    load, kept = {}, []
    for key, target in own.items():
        src = theirs.get(key)
        if src is None:
            continue
        if src.shape == target.shape:
            load[key] = src.to(target.dtype)
        elif (their_out != out_channels and src.dim() == target.dim() and src.shape[0] == their_out
              and target.shape[0] == out_channels and src.shape[1:] == target.shape[1:]):
            kept.append(key)  # the output layer of another number of labels
        else:
            raise ConfigError(f"train.init_from {ckpt['path']}: '{key}' has shape {tuple(src.shape)} there and "
                              f"{tuple(target.shape)} here; start from a run of the same model and input channels.")
    model.load_state_dict(load, strict=False)
    log.info("weights from %s: %d tensors loaded, %d kept their initialisation (%s)", ckpt["path"], len(load),
             len(kept), ", ".join(kept) or "none")
    return kept
