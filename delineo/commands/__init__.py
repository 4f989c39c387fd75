"""Verbs of the ``delineo`` command that live in their own modules.

Each module in this package defines one or more verbs with :func:`verb`; ``delineo.cli``
imports every module here (sorted by name) when it builds the parser, so a new verb is a new
file, not an edit of a shared if/elif chain. Modules import their heavy dependencies inside the
command function, so ``delineo --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    add_arguments: AddArguments
    run: Run


VERBS: dict[str, Verb] = {}


def verb(name: str, help: str, add_arguments: AddArguments) -> Callable[[Run], Run]:
    """Register the decorated function as ``delineo NAME``."""

    def deco(fn: Run) -> Run:
        if name in VERBS:
            raise ValueError(f"delineo verb '{name}' is defined twice")
        VERBS[name] = Verb(name, help, add_arguments, fn)
        return fn

    return deco


def load_all() -> dict[str, Verb]:
    """Import every verb module of this package and return the registry."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return VERBS
