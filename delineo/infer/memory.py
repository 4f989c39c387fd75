"""Memory sizes as users write them (``2GB``, ``512M``, ``1.5 GiB``) and the process's peak RSS.

A leaf module (nothing from Delineo imported) so that the config schema can validate
``infer.max_memory`` without importing the inference stage.
"""

from __future__ import annotations

import re
import resource
import sys

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_size(text: str | int | float) -> int:
    """Bytes from ``2GB`` / ``512MiB`` / ``1.5g`` / a plain number (binary units: 1 GB = 2**30 bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{text!r} is not a memory size; write e.g. 2GB, 512MB or 1.5GiB")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"{text!r}: a memory size must be positive")
    return value


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss`
    (Linux VmHWM; elsewhere ru_maxrss, which cannot be reset)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int:
    """Current resident set size (Linux; 0 elsewhere)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Start a new peak measurement (Linux: writing 5 to clear_refs resets VmHWM); False if unsupported,
    so that measurements of one step are not hidden by an earlier high-water mark (e.g. imports)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
