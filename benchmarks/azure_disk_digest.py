"""Benchmark: the Azure capture's disk SHA-256 (imagebuilder/providers/azure/digest.py), which downloads
only the pages of the exported OS disk that hold data and hashes the never-written rest as zeros. Served
by the test fake's disk export through the Storage SDK's real pipeline: a sparse disk (--size-mib, with
--used-mib of data spread over it). Prints the bytes downloaded / disk size, the time against hashing the
whole disk as if every byte had been downloaded (local hashing only: network time is what the sparse read
saves on Azure), and the zero-hash rate that bounds a 30 GiB disk. Prints numbers only.

    .venv/bin/python benchmarks/azure_disk_digest.py [--size-mib 1024] [--used-mib 64]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imagebuilder.providers.azure.clients import AzureClients  # noqa: E402
from imagebuilder.providers.azure.digest import _zeros, hash_page_blob  # noqa: E402
from tests.providers_azure.fake_arm import FakeArm, FakeCredential  # noqa: E402

SAS = "https://md-abc.z1.blob.storage.azure.net/xyz/abcd?sv=2018-03-28&sr=b&si=x&sig=SECRET"


class _Ctx:
    """What hash_page_blob uses of a phase context: the clients."""

    def __init__(self, arm: AzureClients) -> None:
        self.arm = arm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--used-mib", type=int, default=64)
    args = parser.parse_args()
    size = args.size_mib << 20
    fake = FakeArm()
    disk = bytearray(size)
    pieces = 16
    each = (args.used_mib << 20) // pieces
    for i in range(pieces):
        at = i * (size // pieces)
        disk[at : at + each] = (bytes(range(256)) * (each // 256 + 1))[:each]
    disk[-512:] = b"conectix".ljust(512, b"\0")
    fake.disk_bytes = disk
    clients = AzureClients("00000000-0000-0000-0000-000000000000", FakeCredential(), transport=fake)
    ctx: Any = _Ctx(clients)

    start = time.perf_counter()
    sha, total, moved = hash_page_blob(ctx, SAS)
    sparse = time.perf_counter() - start
    assert sha == hashlib.sha256(disk).hexdigest()

    start = time.perf_counter()
    whole = hashlib.sha256()
    view = memoryview(disk)
    for at in range(0, size, 4 << 20):
        whole.update(view[at : at + (4 << 20)])
    full = time.perf_counter() - start

    zero = hashlib.sha256()
    start = time.perf_counter()
    _zeros(zero, 1 << 30)
    rate = 1 / (time.perf_counter() - start)

    print(f"disk {total >> 20} MiB, data {args.used_mib} MiB")
    print(f"downloaded / disk size: {moved / total:.3f}")
    print(f"sparse digest {sparse:.2f} s (through the SDK and the fake), hash of all bytes {full:.2f} s")
    print(f"zero hashing {rate:.2f} GiB/s: a 30 GiB disk's zeros in {30 / rate:.0f} s")


if __name__ == "__main__":
    main()
