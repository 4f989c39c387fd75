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


def short_reason(exc: BaseException) -> str:
    """The first line of a library's exception (at most 160 characters), to quote inside one of
    Delineo's sentences: pydicom, zipfile and friends write several lines where one will do."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
