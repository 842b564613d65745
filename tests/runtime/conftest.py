"""Fixtures for the local runtime tests: a private Azurite, and a runtime subprocess driver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local_runtime.azurite import Azurite, start_azurite


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A private Azurite on free ports for the whole session; `.connection_string` for clients."""
    with start_azurite(tmp_path_factory.mktemp("azurite")) as az:
        yield az
