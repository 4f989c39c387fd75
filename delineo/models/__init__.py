"""Networks; importing this package registers the built-in ones with ``delineo.registry.MODELS``."""

from delineo.models import unet  # noqa: F401
from delineo.models import attention_unet, backbones, deoxys, heads  # noqa: F401
from delineo.models.unet import UNet

__all__ = ["UNet"]
