"""``delineo convert-checkpoint``: make a trusted old checkpoint loadable without pickle."""

from __future__ import annotations

import argparse
from pathlib import Path

from delineo.commands import verb


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="checkpoint that needs full unpickling (only for a file you trust)")
    p.add_argument("target", type=Path, help="safe checkpoint to write")


@verb("convert-checkpoint", "rewrite a trusted old checkpoint as a safe one (tensors and plain values only)", _args)
def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from delineo.modelfile.checkpoint import convert_legacy_checkpoint

    print(convert_legacy_checkpoint(args.source, args.target))
    return 0
