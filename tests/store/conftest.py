"""Store test fixtures: one private Azurite per session, a fresh table/container prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from imagebuilder.store import Store
from local_runtime.azurite import Azurite, start_azurite


@pytest.fixture(scope="session")
def store_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with start_azurite(tmp_path_factory.mktemp("store-azurite")) as az:
        yield az


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def store(store_azurite: Azurite, prefix: str) -> Store:
    return Store(store_azurite.connection_string, prefix=prefix)


@pytest.fixture
def other_writer(store_azurite: Azurite, prefix: str, store: Store) -> Store:
    """A second, independent client on the same tables: another process writing concurrently."""
    return Store(store_azurite.connection_string, prefix=prefix)
