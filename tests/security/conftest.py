"""Fixtures of the security tests: a BusyBox build root (the base is built once per session in a
private cache, well under a second), a log sink that keeps what was written, host-side canaries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.providers.base import MemoryLog
from imagebuilder.providers.local import bases, catalog
from local_runtime.azurite import Azurite, start_azurite


class RecLog(MemoryLog):
    """A LogSink that keeps what was written (with a log URI, as a run's has)."""

    uri = "http://127.0.0.1:1/devstoreaccount1/logs/customization.log"


@pytest.fixture(scope="session")
def busybox_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = catalog.resolve("ImageBuilderLocal", "busybox", "stable", "latest")
    return bases.ensure_base(base, tmp_path_factory.mktemp("sec-base-cache"))


@pytest.fixture
def root(tmp_path: Path, busybox_tarball: Path) -> Path:
    tree = tmp_path / "root"
    bases.extract_base(busybox_tarball, tree)
    return tree


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A private Azurite on free ports, its data in a tmp dir."""
    with start_azurite(tmp_path_factory.mktemp("sec-azurite")) as az:
        yield az
