"""User-facing errors: one clear sentence naming the file or key and the problem.

The CLI prints ``str(error)`` and exits non-zero without a traceback (unless ``--debug``).
Anything else that escapes is a bug in Delineo and is shown with its traceback.
"""

from __future__ import annotations


class DelineoError(Exception):
    """An error the user can fix: bad input file, bad experiment file, bad argument."""


class ConfigError(DelineoError):
    """The experiment file is invalid (unknown key, wrong type, impossible value)."""


class InputError(DelineoError):
    """An input image, label or dataset is missing, unreadable or inconsistent."""
