"""Encoder freezing (``train.freeze_encoder_epochs``): train only the decoder for the first N
epochs, then everything, as the pneumothorax solutions did with their ImageNet-pre-trained
encoders, so that the random decoder's first, large gradients cannot wreck the pre-trained
features.

While frozen, the encoder's parameters take no optimiser step (their gradient is ``None``, so
momentum and weight decay leave them alone too) and its batch-norm layers stay in eval mode, so
the running statistics of the pre-trained encoder do not drift either: the encoder is exactly
what it was until it is unfrozen.
"""

from __future__ import annotations

import logging

from torch import nn

from delineo.errors import ConfigError

log = logging.getLogger(__name__)


def encoder_of(model: nn.Module) -> list[nn.Module]:
    """The encoder modules: ``model.backbone`` (``deeplabv3``, ``backbone_unet``) or, for a
    ``classifier``, every child but its linear head. Other models have no separate encoder."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return [backbone]
    head = getattr(model, "_head", None)
    if callable(head) and hasattr(model, "forward_features"):
        fc = head()
        return [m for m in model.children() if m is not fc]
    raise ConfigError(f"train.freeze_encoder_epochs needs a model with a backbone encoder (deeplabv3, "
                      f"backbone_unet, classifier); {type(model).__name__} has none.")


class EncoderFreezer:
    """Freezes the encoder of ``model`` for epochs ``< epochs`` and unfreezes it afterwards.

    Single process: ``requires_grad`` is switched off, which also skips the encoder's backward
    pass. Under DDP the parameter set must not change after the wrapper is built, so there the
    encoder's gradients are dropped after the all-reduce instead (:meth:`drop_grads`).
    """

    def __init__(self, model: nn.Module, epochs: int, distributed: bool = False) -> None:
        self.modules = encoder_of(model)
        self.epochs, self.distributed = epochs, distributed
        self.frozen = False

    def params(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def start_epoch(self, epoch: int) -> None:
        """Call after ``model.train()`` at the start of every epoch."""
        frozen = epoch < self.epochs
        if frozen != self.frozen:
            log.info("epoch %d: encoder %s", epoch, "frozen" if frozen else "unfrozen")
        self.frozen = frozen
        if not self.distributed:
            for p in self.params():
                p.requires_grad_(not frozen)
        if frozen:
            for m in self.modules:
                for sub in m.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()

    def drop_grads(self) -> None:
        """Call between backward and the optimiser step: no step for a frozen encoder."""
        if self.frozen:
            for p in self.params():
                p.grad = None
