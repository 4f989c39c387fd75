"""Safe archive extraction (delineo.io.archive): hostile ZIP/tar files are refused with one
sentence naming the archive and the problem, and nothing is left behind."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from delineo.errors import InputError
from delineo.io.archive import ArchiveLimits, extract_archive


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def refused(archive: Path, dest: Path, *needles: str, limits: ArchiveLimits | None = None) -> str:
    with pytest.raises(InputError) as err:
        extract_archive(archive, dest, limits)
    msg = str(err.value)
    assert str(archive) in msg and msg.count(". ") == 0 and msg.endswith("."), msg
    for n in needles:
        assert n in msg, msg
    assert not dest.exists()
    assert [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")] == []  # no temp left
    return msg


def test_good_zip_round_trip(tmp_path: Path):
    data = {"study/a.dcm": b"x" * 1000, "study/sub/b.dcm": os.urandom(5000), "readme.txt": b"hi"}
    out = extract_archive(make_zip(tmp_path / "ok.zip", data), tmp_path / "out")
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == data


def test_good_tar_gz_round_trip(tmp_path: Path):
    arch = tmp_path / "ok.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        for name, data in {"s/a.dcm": b"abc" * 100, "s/b.dcm": b"z"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = extract_archive(arch, tmp_path / "out")
    assert (out / "s" / "a.dcm").read_bytes() == b"abc" * 100 and (out / "s" / "b.dcm").read_bytes() == b"z"


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/tmp/evil_abs.txt", "..\\evil.txt",
                                  "C:/evil.txt"])
def test_zip_path_traversal_refused(tmp_path: Path, name: str):
    arch = make_zip(tmp_path / "evil.zip", {"fine.txt": b"ok", name: b"pwned"})
    refused(arch, tmp_path / "x" / "out", name)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x" / "evil.txt").exists()
    assert not Path("/tmp/evil_abs.txt").exists()


def test_tar_traversal_and_symlink_refused(tmp_path: Path):
    for kind in ("dotdot", "symlink"):
        arch = tmp_path / f"{kind}.tar"
        with tarfile.open(arch, "w") as tf:
            if kind == "dotdot":
                info = tarfile.TarInfo("../escape.txt")
                info.size = 3
                tf.addfile(info, io.BytesIO(b"bad"))
            else:
                info = tarfile.TarInfo("link")
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                tf.addfile(info)
        refused(arch, tmp_path / kind, "../" if kind == "dotdot" else "link")
    assert not (tmp_path / "escape.txt").exists()


def test_zip_symlink_refused(tmp_path: Path):
    arch = tmp_path / "link.zip"
    with zipfile.ZipFile(arch, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    refused(arch, tmp_path / "out", "symbolic link")


def test_zip_bomb_refused_quickly_and_bounded(tmp_path: Path):
    # 400 MB of zeros packs into about 400 kB; the extractor must stop after ~the ratio limit
    arch = tmp_path / "bomb.zip"
    with zipfile.ZipFile(arch, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.bin", "w", force_zip64=True) as fh:
            block = bytes(1 << 20)
            for _ in range(400):
                fh.write(block)
    assert arch.stat().st_size < 1_000_000
    t0 = time.perf_counter()
    refused(arch, tmp_path / "out", "zeros.bin", "zip bomb")
    assert time.perf_counter() - t0 < 10


def test_total_size_and_member_count_limits(tmp_path: Path):
    arch = make_zip(tmp_path / "many.zip", {f"f{i}.bin": os.urandom(2000) for i in range(20)})
    refused(arch, tmp_path / "a", "more than 10000 bytes", limits=ArchiveLimits(max_total_bytes=10_000))
    refused(arch, tmp_path / "b", "20 members", limits=ArchiveLimits(max_members=5))


def test_not_an_archive_and_existing_destination(tmp_path: Path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 this is not really a zip")
    refused(junk, tmp_path / "out", "not a ZIP or tar archive")
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="already exists"):
        extract_archive(make_zip(tmp_path / "ok.zip", {"a": b"1"}), tmp_path / "exists")
