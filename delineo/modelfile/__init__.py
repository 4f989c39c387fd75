"""The model on disk, read by train, infer and serve alike: the training checkpoint
(``best.pt`` / ``last.pt``) and, later, the ``.delineo`` pipeline file.

Nothing here executes code from a file: checkpoints are read with ``torch.load(...,
weights_only=True)``, which only rebuilds tensors and plain containers (dict, list, str,
numbers), so a malicious file fails to load instead of running.
"""

from delineo.modelfile.checkpoint import (
    CHECKPOINT_FORMAT,
    ModelMeta,
    convert_legacy_checkpoint,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint_file,
    save_checkpoint,
)

__all__ = ["CHECKPOINT_FORMAT", "ModelMeta", "convert_legacy_checkpoint", "find_checkpoint", "load_checkpoint",
           "read_checkpoint_file", "save_checkpoint"]
