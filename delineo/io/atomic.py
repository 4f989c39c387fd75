"""Atomic writes: write to a temporary name in the same folder, then rename.

A crash (even ``kill -9``) therefore never leaves a file that looks complete but is not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from delineo.errors import DelineoError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` defaults to the full suffix of ``path`` (e.g. ``.nii.gz``) so that writers that
    pick a format from the file name still do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        if _disk_full(exc, path.parent):
            raise DelineoError(f"{path}: not written, no space left on {path.parent}.") from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except Exception as exc:
        if _disk_full(exc, path.parent, tmp_path):
            limit = _fsize_limit()
            extra = f", file size limit {limit} bytes" if limit else ""
            raise DelineoError(f"{path}: not written, no space left on {path.parent} "
                               f"({shutil.disk_usage(path.parent).free} bytes free{extra}); the previous file, if any, "
                               "is unchanged.") from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsize_limit() -> int:
    """The process's file-size limit (RLIMIT_FSIZE) in bytes, 0 when unlimited."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return 0 if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, OSError, ValueError):
        return 0


def _disk_full(exc: BaseException, folder: Path, tmp: Path | None = None) -> bool:
    """True when a write failed for lack of space: ENOSPC/EDQUOT/EFBIG, or a library that wraps
    the OS error in its own type (torch.save raises RuntimeError 'file write failed') while the
    folder's file system is (nearly) full."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
    if isinstance(exc, (RuntimeError, OSError)):  # e.g. torch: "unexpected pos 52800 vs 52692"
        try:
            if shutil.disk_usage(folder).free < (1 << 20):
                return True
            limit = _fsize_limit()
            return bool(limit and tmp is not None and tmp.is_file() and limit - tmp.stat().st_size < (1 << 20))
        except OSError:
            return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
