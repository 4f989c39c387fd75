"""Mixed precision on CPUs with bfloat16 units (AMX, AVX-512 BF16) and on GPUs.

``train.precision`` / ``infer.precision`` take ``fp32 | bf16 | auto``. Under ``bf16`` only the
network's forward runs in bfloat16 (``torch.autocast``); weights, gradients, optimiser state and
the loss stay float32, so training keeps float32's accuracy where it matters (Adam moments and
small updates) and takes bfloat16's speed where it is cheap (convolutions on matrix units).

``auto`` decides once per process and machine: bf16 only when the CPU supports it natively, a
timed probe of the actual network finds it faster, and the probe's outputs agree with float32
(inference: label agreement of the argmax; training: cosine of the gradients). The verdict is
cached in memory and in ``~/.cache/delineo/precision.json`` (keyed by CPU, torch version and
the probe's key), so later runs on the same machine do not probe again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
#: part of the cache key: verdicts of the wall-clock probe (version 1) could hold a shared
#: machine's load, so they are probed again
PROBE_VERSION = 2
_MEMO: dict[str, str] = {}


def cache_file() -> Path:
    root = os.environ.get("DELINEO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "delineo")
    return Path(root) / "precision.json"


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), part of the cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_native(device: torch.device) -> bool:
    """True when bfloat16 matrix products run natively (AVX-512 BF16 / AMX, or a CUDA GPU that has them)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (``fp32`` or ``bf16``)."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _key(device: torch.device, what: str) -> str:
    raw = f"{device.type}|{cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}|" \
          f"{torch.__version__}|{torch.get_num_threads()}|{what}|{PROBE_VERSION}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _read_disk() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_disk(key: str, verdict: dict) -> None:
    from delineo.io.atomic import write_text_atomic

    data = _read_disk()
    data[key] = verdict
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache_file(), json.dumps(data, indent=1))
    except OSError as exc:  # a read-only home only costs a probe per process
        log.debug("precision cache not written: %s", exc)


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call (oneDNN builds kernels on first use),
    on one thread, in CPU seconds when they are fewer than wall seconds.

    On a shared CPU the wall clock measures the other users too: a probe that ran while they had
    the cores would pick fp32 and cache that verdict for the machine. The CPU time of one thread
    counts only the work itself (several threads' CPU time would count their spin-waiting), and
    fp32 and bf16 are compared at the same thread count, so their ratio holds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best = min(best, time.perf_counter() - t0, time.process_time() - c0)
    finally:
        torch.set_num_threads(threads)
    return best


def resolve(precision: str, device: torch.device | str, what: str,
            probe: Optional[Callable[[], tuple[float, float, float]]] = None, min_agreement: float = 0.99,
            min_speedup: float = 1.1) -> str:
    """Turn ``fp32 | bf16 | auto`` into ``fp32`` or ``bf16``.

    ``probe`` (only called for ``auto``) returns (fp32 seconds, bf16 seconds, agreement in [0, 1]);
    ``what`` names the probed thing (network and input shape) in the cache key.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        if precision == "bf16" and not bf16_native(device):
            log.warning("bf16 requested but this %s has no native bfloat16 units: it will be emulated (slow)",
                        device.type)
        return precision
    if not bf16_native(device) or probe is None:
        return "fp32"
    key = _key(device, what)
    if key in _MEMO:
        return _MEMO[key]
    stored = _read_disk().get(key)
    if stored and stored.get("precision") in ("fp32", "bf16"):
        _MEMO[key] = stored["precision"]
        return _MEMO[key]
    t32, t16, agree = probe()
    choice = "bf16" if t32 / max(t16, 1e-9) >= min_speedup and agree >= min_agreement else "fp32"
    log.info("precision auto: %s (fp32 %.1f ms, bf16 %.1f ms, agreement %.4f) for %s", choice, t32 * 1e3,
             t16 * 1e3, agree, what)
    _MEMO[key] = choice
    _write_disk(key, {"precision": choice, "fp32_s": t32, "bf16_s": t16, "agreement": agree, "what": what,
                      "cpu": cpu_name(), "torch": torch.__version__})
    return choice


def inference_probe(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], tuple[float, float, float]]:
    """Probe for a network in eval mode on one input batch: timing and argmax agreement."""

    @torch.no_grad()
    def run() -> tuple[float, float, float]:
        def fwd(dtype: Optional[torch.dtype]) -> torch.Tensor:
            ctx = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with ctx:
                out = model(x)
            return (out[0] if isinstance(out, (list, tuple)) else out).float()

        t32 = best_time(lambda: fwd(None))
        t16 = best_time(lambda: fwd(torch.bfloat16))
        a, b = fwd(None), fwd(torch.bfloat16)
        if a.shape[1] == 1:
            agree = float(((a > 0) == (b > 0)).float().mean())
        else:
            agree = float((a.argmax(1) == b.argmax(1)).float().mean())
        return t32, t16, agree

    return run


def training_probe(model: torch.nn.Module, x: torch.Tensor, loss_fn: Callable[[object], torch.Tensor]
                   ) -> Callable[[], tuple[float, float, float]]:
    """Probe for one training step (forward, loss, backward): timing and cosine of the gradients."""

    def run() -> tuple[float, float, float]:
        params = [p for p in model.parameters() if p.requires_grad]
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}  # batch-norm statistics move

        def step(dtype: Optional[torch.dtype]) -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            ctx = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with ctx:
                out = model(x)
            loss = loss_fn(out)  # float32 outside autocast
            loss.backward()
            return torch.cat([p.grad.detach().flatten().float() for p in params if p.grad is not None])

        try:
            t32 = best_time(lambda: step(None), repeats=2)
            t16 = best_time(lambda: step(torch.bfloat16), repeats=2)
            model.load_state_dict(saved)
            g32 = step(None)
            model.load_state_dict(saved)
            g16 = step(torch.bfloat16)
            cos = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
        finally:
            model.zero_grad(set_to_none=True)
            model.load_state_dict(saved)
        return t32, t16, cos

    return run

