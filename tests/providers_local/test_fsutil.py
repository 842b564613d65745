"""fsutil's file sha256 on real files: sparse files hash as their bytes (holes read as zeros, never
skipped), and a digest remembered on the file is trusted by another process only while the file is
unchanged."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.providers.local import fsutil


def _plain(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("size", "islands"),
    [
        (0, []),  # empty
        (3, [(0, b"abc")]),  # small, no hole
        (50 << 20, [(5 << 20, os.urandom(3 << 20)), ((40 << 20) + 123, b"x" * 10000)]),  # holes around
        (20 << 20, [(0, os.urandom(5000))]),  # a hole at the end only
    ],
)
def test_sha256_of_a_sparse_file_is_the_sha256_of_its_bytes(
    tmp_path: Path, size: int, islands: list[tuple[int, bytes]]
) -> None:
    path = tmp_path / "f"
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset, data in islands:
            fh.seek(offset)
            fh.write(data)
    assert path.stat().st_size == size
    assert fsutil.sha256_file(path) == _plain(path)


def test_sha256_of_a_file_that_is_all_hole(tmp_path: Path) -> None:
    path = tmp_path / "hole"
    with path.open("wb") as fh:
        fh.truncate(9 << 20)
    assert os.stat(path).st_blocks == 0
    assert fsutil.sha256_file(path) == hashlib.sha256(bytes(9 << 20)).hexdigest()


def _cached_in_another_process(path: Path) -> str:
    code = "import sys; from pathlib import Path; from imagebuilder.providers.local import fsutil; "
    code += "print(fsutil.sha256_cached(Path(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_a_remembered_digest_holds_across_processes_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "disk"
    path.write_bytes(b"real content")
    fsutil.remember_sha256(path, "a" * 64)  # what a writer recorded (here: not the real hash)
    assert _cached_in_another_process(path) == "a" * 64  # trusted: same size and mtime
    with path.open("r+b") as fh:
        fh.write(b"R")  # any write changes the mtime: the record no longer applies
    assert _cached_in_another_process(path) == _plain(path)


def test_copy_sparse_digest_copies_exactly_keeps_holes_and_tells_a_changed_byte(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    with src.open("wb") as fh:  # data across the copy's 4 MiB chunks, holes between and at the end
        fh.write(os.urandom(5 << 20))
        fh.seek(64 << 20)
        fh.write(os.urandom(9 << 20))
        fh.truncate(128 << 20)
    first = fsutil.copy_sparse_digest(src, tmp_path / "a.img")
    assert (tmp_path / "a.img").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "a.img").st_blocks * 512 < 20 << 20  # the holes stayed holes
    assert fsutil.copy_sparse_digest(tmp_path / "a.img", tmp_path / "b.img") == first
    with (tmp_path / "b.img").open("r+b") as fh:
        fh.seek((64 << 20) + 12345)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 1]))
    assert fsutil.copy_sparse_digest(tmp_path / "b.img", tmp_path / "c.img") != first
