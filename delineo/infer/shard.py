"""Prediction over many studies: a folder or a case list, sharded across processes, with reading,
preprocessing and writing overlapped with the network.

Launched plainly it is one process; under ``torchrun --nproc_per_node N`` (or several nodes with
the usual rendezvous arguments) every process takes every N-th case of the sorted list, so each
case is predicted by exactly one process and needs no coordination but a final barrier. Every
mask is written atomically (a temporary name, then a rename), so a mask that exists is complete
and a rerun skips it: a killed job is finished by running the same command again.

A small thread pool reads and preprocesses the next cases while the network works on the current
one, and a writer thread writes finished masks, so a folder of small cases is bounded by the
network rather than by disk and resampling (NumPy, SciPy, nibabel and the compressors release
the GIL). At the end, rank 0 writes ``predict_summary.json`` in the output folder: cases,
predicted, skipped, failures with their one-sentence reasons, seconds, and the network's share
of the wall time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from delineo.errors import DelineoError, InputError
from delineo.io.atomic import write_text_atomic
from delineo.io.files import read_image, write_image
from delineo.io.image import Image

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst", ".csv")


@dataclass
class Summary:
    """What one process (or, merged, the whole job) did."""

    cases: int = 0
    predicted: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    read_seconds: float = 0.0
    network_seconds: float = 0.0
    write_seconds: float = 0.0
    processes: int = 1

    @property
    def network_share(self) -> float:
        return self.network_seconds / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["network_share"] = round(self.network_share, 3)
        return d

    @classmethod
    def merge(cls, parts: list[dict[str, Any]]) -> "Summary":
        out = cls(processes=len(parts))
        for p in parts:
            out.cases += p["cases"]
            out.predicted += p["predicted"]
            out.skipped += p["skipped"]
            out.failed += p["failed"]
            out.seconds = max(out.seconds, p["seconds"])  # the processes ran side by side
            out.read_seconds += p["read_seconds"]
            out.network_seconds += p["network_seconds"]
            out.write_seconds += p["write_seconds"]
        out.network_seconds /= max(1, len(parts))  # the mean process's network time against the wall
        return out


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when launched plainly."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def reason(exc: BaseException) -> str:
    """One sentence for a failed case: Delineo's own errors already are one; others get their type."""
    if isinstance(exc, DelineoError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_case_list(path: Path) -> list[Path]:
    """Image paths from a list file: one per line (first comma-separated field), ``#`` comments,
    an optional header ``image``; relative paths are relative to the list file."""
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        item = line.split(",")[0].strip().strip('"')
        if not item or item.startswith("#") or (i == 0 and item.lower() in ("image", "path", "file")):
            continue
        p = Path(item)
        out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise InputError(f"{path}: the case list names no image files.")
    return out


def list_jobs(input_path: Path, n_channels: int) -> list:
    """Jobs (cases) of a folder, a single file, or a case list, in a fixed order shared by all ranks."""
    from delineo.infer.run import Job, _jobs, group_channels
    from delineo.io.files import case_name

    if input_path.is_file() and input_path.suffix.lower() in LIST_SUFFIXES:
        jobs = [Job(case_name(p), p) for p in read_case_list(input_path)]
    else:
        jobs = _jobs(input_path, None)
    if n_channels > 1:
        jobs = group_channels(jobs, n_channels)
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{input_path}: case name(s) {', '.join(dup[:3])} occur twice; their masks would collide.")
    return sorted(jobs, key=lambda j: j.name)


def apply_options(case_predictor: Any, precision: Optional[str] = None, max_memory: Optional[str] = None) -> None:
    """Set ``infer.precision`` / ``infer.max_memory`` on a checkpoint's predictor (pipelines keep theirs)."""
    pred = getattr(case_predictor, "predictor", None)
    if pred is None or (precision is None and max_memory is None):
        if precision or max_memory:
            log.warning("--precision / --max-memory apply to checkpoints; this model keeps its own settings")
        return
    from delineo import precision as mixed

    update = {k: v for k, v in (("precision", precision), ("max_memory", max_memory)) if v is not None}
    infer = pred.cfg.infer.model_validate({**pred.cfg.infer.model_dump(), **update})
    pred.cfg = pred.cfg.model_copy(update={"infer": infer})
    if precision is not None:
        pred.precision = precision if precision == "auto" else mixed.resolve(precision, pred.device, "infer")


def predict_many(model: Path, input_path: Path, output: Path, fmt: Optional[str] = None, tta: Optional[bool] = None,
                 device: str = "auto", prefetch: int = 2, precision: Optional[str] = None,
                 max_memory: Optional[str] = None, progress: bool = True) -> Summary:
    """Predict every case of a folder or case list into ``output`` (one mask per case, in the
    input's format or ``fmt``); this process takes its share under torchrun. Returns the summary
    (merged over all processes on rank 0)."""
    from delineo.infer.loaders import load_predictor
    from delineo.infer.run import _read, _write_fmt, mask_path, output_path
    from delineo.io.export import write_prediction
    from delineo.preprocess.pipeline import preprocess

    rank, world = rank_world()
    group = _init_group(world)
    t_start = time.perf_counter()
    predictor = load_predictor(model, device=device, tta=tta)
    apply_options(predictor, precision, max_memory)
    core = getattr(predictor, "predictor", None)  # a plain checkpoint: preprocessing can be prefetched too
    input_path, output = Path(input_path), Path(output)
    jobs = list_jobs(input_path, len(predictor.channels))
    if output.is_file():
        raise InputError(f"{output}: the output of a folder or case list is a folder, not a file.")
    output.mkdir(parents=True, exist_ok=True)
    mine = jobs[rank::world]
    summary = Summary(cases=len(mine))
    todo = []
    for job in mine:
        out = mask_path(output_path(job, output, False, fmt), _write_fmt(job, fmt))
        if out.exists():
            summary.skipped += 1
        else:
            todo.append((job, out))
    if summary.skipped:
        log.info("rank %d: %d of %d case(s) already predicted, skipped", rank, summary.skipped, len(mine))
    model_name = f"{predictor.name} ({Path(str(model)).name})"

    def load(job: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        job.images = [read_image(p) for p in job.channels] if job.channels else [_read(job, None)]
        job.image = job.images[0]
        if len(job.images) != len(predictor.channels):
            raise InputError(f"{job.source}: the model expects {len(predictor.channels)} channel(s), "
                             f"got {len(job.images)}.")
        pre = preprocess(job.images, None, core.cfg.preprocess) if core is not None else None
        return pre, time.perf_counter() - t0

    def write(job: Any, out: Path, mask: Image) -> float:
        t0 = time.perf_counter()
        job_fmt = _write_fmt(job, fmt)
        if job_fmt is None:
            write_image(mask, out)
        else:
            write_prediction(mask, job.image, out, job_fmt, predictor.labels, colors=predictor.colors,
                             model_name=model_name)
        return time.perf_counter() - t0

    readers = ThreadPoolExecutor(max(1, prefetch), thread_name_prefix="delineo-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="delineo-write")
    pending: list[tuple[Any, Path, Future]] = []
    writes: list[tuple[Any, Future]] = []
    queue = list(todo)

    def top_up() -> None:
        while queue and len(pending) < max(1, prefetch):
            job, out = queue.pop(0)
            pending.append((job, out, readers.submit(load, job)))

    top_up()
    bar = tqdm(total=len(todo), desc=f"predict[{rank}/{world}]" if world > 1 else "predict", unit="case",
               disable=not progress)
    try:
        while pending:
            job, out, fut = pending.pop(0)
            top_up()  # the next reads start before this case's network pass
            try:
                pre, read_s = fut.result()
                summary.read_seconds += read_s
                t0 = time.perf_counter()
                if core is not None:
                    x, _, record = pre
                    seg, _ = core.predict_preprocessed(x, record)
                    ref = job.images[0]
                    mask = Image(seg, ref.affine.copy(), "SEG", dict(ref.meta))
                else:
                    mask, _, _ = predictor.predict(job.images)
                summary.network_seconds += time.perf_counter() - t0
                writes.append((job, writer.submit(write, job, out, mask)))
            except Exception as exc:  # one bad case must not stop thousands of others
                summary.failed.append({"case": job.name, "source": str(job.source), "reason": reason(exc)})
                log.error("%s: %s", job.source, reason(exc))
            job.images, job.image = [], None  # the reader's arrays are not kept for the whole folder
            bar.update(1)
        for job, fut in writes:
            try:
                summary.write_seconds += fut.result()
                summary.predicted += 1
            except Exception as exc:
                summary.failed.append({"case": job.name, "source": str(job.source), "reason": reason(exc)})
                log.error("%s: %s", job.source, reason(exc))
    finally:
        bar.close()
        readers.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    summary.seconds = time.perf_counter() - t_start
    return _gather(summary, output, rank, world, group)


def _init_group(world: int) -> bool:
    """A gloo process group for the final barrier (the cases themselves need no communication)."""
    if world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def _gather(summary: Summary, output: Path, rank: int, world: int, group: bool) -> Summary:
    """Every rank leaves its summary in ``output/.predict_summary``; rank 0 merges them after a barrier."""
    parts_dir = output / ".predict_summary"
    parts_dir.mkdir(exist_ok=True)
    write_text_atomic(parts_dir / f"rank{rank}.json", json.dumps(summary.to_dict()))
    if group:
        import torch.distributed as dist

        dist.barrier()
    if rank != 0:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
        return summary
    parts = [json.loads((parts_dir / f"rank{r}.json").read_text()) for r in range(world)
             if (parts_dir / f"rank{r}.json").exists()]
    merged = Summary.merge(parts)
    write_text_atomic(output / "predict_summary.json", json.dumps(merged.to_dict(), indent=1))
    if group:
        import torch.distributed as dist

        dist.destroy_process_group()
    log.info("predicted %d, skipped %d, failed %d of %d case(s) in %.1f s on %d process(es); network %.0f%% of "
             "the wall time", merged.predicted, merged.skipped, len(merged.failed), merged.cases, merged.seconds,
             merged.processes, 100 * merged.network_share)
    return merged
