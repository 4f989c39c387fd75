"""Safe extraction of uploaded archives (ZIP, tar, tar.gz): the public helper for anything that
unpacks a file a user or a hospital sent (the viewer's uploads, DICOM exports).

Why not ``ZipFile.extractall``: it trusts the archive. A hostile archive can name members
``../../etc/x`` or ``/abs/path`` (path traversal), hold symbolic links pointing outside, claim
small sizes and inflate to terabytes (zip bomb), or hold millions of members. Here every member
name is checked before anything is written, bytes are counted while they are inflated (the sizes
in the header are not trusted), and the whole tree is built in a hidden temporary folder that is
renamed onto the destination only when everything succeeded, so a refused archive leaves nothing.

Use::

    from delineo.io.archive import extract_archive
    folder = extract_archive("upload.zip", "work/upload")   # InputError on a hostile archive
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from delineo.errors import InputError, short_reason

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one archive may unpack to; the defaults fit a CT/MR study export."""

    max_total_bytes: int = 4 << 30  # 4 GiB unpacked in all
    max_member_bytes: int = 2 << 30  # 2 GiB for one file
    max_members: int = 100_000
    max_ratio: float = 200.0  # unpacked / packed bytes for one member (DICOM rarely exceeds 20)
    ratio_floor_bytes: int = 1 << 20  # the ratio is checked only once a member passes this size


def _safe_name(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path, or an InputError when it could land outside the folder."""
    if "\x00" in name:
        raise InputError(f"{archive}: refused, member name {name!r} holds a NUL byte.")
    norm = name.replace("\\", "/")
    pure = PurePosixPath(norm)
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or pure.is_absolute():
        raise InputError(f"{archive}: refused, member '{name}' has an absolute path.")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if ".." in parts:
        raise InputError(f"{archive}: refused, member '{name}' points outside the extraction folder (../).")
    if not parts:
        raise InputError(f"{archive}: refused, member name '{name}' is empty.")
    return PurePosixPath(*parts)


def _copy_bounded(archive: Path, name: str, src: BinaryIO, dst: BinaryIO, packed: int, limits: ArchiveLimits,
                  total: list[int]) -> None:
    """Copy ``src`` to ``dst`` counting real inflated bytes against the limits."""
    written = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return
        written += len(chunk)
        total[0] += len(chunk)
        if written > limits.max_member_bytes:
            raise InputError(f"{archive}: refused, member '{name}' unpacks to more than "
                             f"{limits.max_member_bytes} bytes.")
        if total[0] > limits.max_total_bytes:
            raise InputError(f"{archive}: refused, the archive unpacks to more than {limits.max_total_bytes} bytes.")
        if written > limits.ratio_floor_bytes and written > limits.max_ratio * max(packed, 1):
            raise InputError(f"{archive}: refused, member '{name}' inflates more than {limits.max_ratio:g} times "
                             f"its packed size ({packed} bytes), a zip bomb.")
        dst.write(chunk)


def _zip_members(archive: Path, zf: zipfile.ZipFile, limits: ArchiveLimits) -> Iterator[tuple[PurePosixPath, zipfile.ZipInfo]]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise InputError(f"{archive}: refused, {len(infos)} members (at most {limits.max_members}).")
    for info in infos:
        rel = _safe_name(archive, info.filename)
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise InputError(f"{archive}: refused, member '{info.filename}' is a symbolic link.")
        yield rel, info


def _extract_zip(archive: Path, tmp: Path, limits: ArchiveLimits) -> int:
    total = [0]
    n = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = list(_zip_members(archive, zf, limits))  # all names checked before any write
            for rel, info in members:
                target = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    _copy_bounded(archive, info.filename, src, dst, info.compress_size, limits, total)
                n += 1
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        raise InputError(f"{archive}: not a readable ZIP archive ({short_reason(exc)}).") from None
    except FileExistsError as exc:
        raise InputError(f"{archive}: refused, member '{Path(exc.filename).name}' appears twice.") from None
    return n


def _extract_tar(archive: Path, tmp: Path, limits: ArchiveLimits) -> int:
    total = [0]
    n = 0
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = []
            for count, m in enumerate(tf, start=1):  # streamed: a huge member list stops at the limit
                if count > limits.max_members:
                    raise InputError(f"{archive}: refused, more than {limits.max_members} members.")
                rel = _safe_name(archive, m.name)
                if m.issym() or m.islnk():
                    raise InputError(f"{archive}: refused, member '{m.name}' is a link.")
                if not (m.isfile() or m.isdir()):
                    raise InputError(f"{archive}: refused, member '{m.name}' is a device, FIFO or other special file.")
                members.append((rel, m))
            for rel, m in members:
                target = tmp.joinpath(*rel.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None  # a regular file always has a stream
                with src, open(target, "xb") as dst:
                    # tar is compressed as a whole: compare against the archive's own size
                    _copy_bounded(archive, m.name, src, dst, archive.stat().st_size, limits, total)
                n += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileExistsError):
            raise InputError(f"{archive}: refused, member '{Path(exc.filename).name}' appears twice.") from None
        raise InputError(f"{archive}: not a readable tar archive ({short_reason(exc)}).") from None
    return n


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, limits: ArchiveLimits | None = None) -> Path:
    """Unpack a ZIP or tar(.gz/.bz2/.xz) ``archive`` into the new folder ``dest``; return ``dest``.

    Refuses, with one sentence naming the archive and the problem (:class:`InputError`), members
    with absolute or ``../`` paths, links, special files, duplicate names, more members or bytes
    than ``limits`` allow, and members that inflate more than ``limits.max_ratio`` times. On any
    refusal or error nothing is left at ``dest``. ``dest`` must not exist yet.
    """
    archive, dest = Path(archive), Path(dest)
    limits = limits or ArchiveLimits()
    if not archive.is_file():
        raise InputError(f"{archive}: archive not found.")
    if dest.exists():
        raise InputError(f"{dest}: extraction folder already exists.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            n = _extract_zip(archive, tmp, limits)
        elif tarfile.is_tarfile(archive):
            n = _extract_tar(archive, tmp, limits)
        else:
            raise InputError(f"{archive}: not a ZIP or tar archive.")
        os.replace(tmp, dest)
    except OSError as exc:  # e.g. disk full while unpacking
        raise InputError(f"{archive}: could not be unpacked into {dest.parent} ({short_reason(exc)}).") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: %d file(s) unpacked into %s", archive, n, dest)
    return dest
