"""Fixtures of the reliability suite: a private runtime (own provider state and base cache) on the e2e
session's Azurite, the run mode, and the results file the report is made from.

Modes: `make test` runs the short suite (a few cases per kind, minutes). The long suite is
`scripts/reliability.sh` (IMAGEBUILDER_RELIABILITY=long): 20+ chaos kills, 8 concurrent builds, every
fault, thousands of fuzzed requests; it writes JSON lines to IMAGEBUILDER_RELIABILITY_RESULTS, which
`scripts/reliability_report.py` turns into RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.demo import ImageBuilderApi, LocalRuntime, serve_examples
from imagebuilder.store import open_store
from local_runtime.azurite import Azurite
from tests.e2e.conftest import E2E, e2e_azurite, runtime_env  # noqa: F401 (e2e_azurite is a fixture)

LONG = os.environ.get("IMAGEBUILDER_RELIABILITY", "short") == "long"


def pick(short: int, long: int) -> int:
    return long if LONG else short


def record(kind: str, case: str, tried: int, *, lost: int = 0, leaked: int = 0, **extra: Any) -> None:
    """One row of RELIABILITY.md (appended to IMAGEBUILDER_RELIABILITY_RESULTS when it is set)."""
    path = os.environ.get("IMAGEBUILDER_RELIABILITY_RESULTS")
    if not path:
        return
    row = {"kind": kind, "case": case, "tried": tried, "lost": lost, "leaked": leaked, **extra}
    row["mode"] = "long" if LONG else "short"
    row["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _seed_bases(cache: Path) -> None:
    """Hard-link the machine's built base tarballs into the suite's private cache (a cold Debian base is a
    mirror download); extracting them, and everything after, happens privately so the audit is exact."""
    shared = Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", "/var/tmp/imagebuilder-test-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    if not shared.is_dir():
        return
    for f in shared.iterdir():
        if f.is_file() and f.name.endswith((".tar.zst", ".manifest.json")) and not (cache / f.name).exists():
            try:
                os.link(f, cache / f.name)
            except OSError:
                shutil.copy2(f, cache / f.name)


class Rel(E2E):
    cache_dir: Path


@contextlib.contextmanager
def open_rel(az: Azurite, base: Path, cache: Path, provider: Path | None = None) -> Iterator[Rel]:
    """A private runtime with its folders under `base` (the provider's state in `provider` when given:
    the disk-full fault puts it on a small filesystem), on Azurite `az`, serving the examples."""
    _seed_bases(cache)
    dirs = {
        "runtime": base / "runtime",
        "provider": provider or base / "provider",
        "cache": cache,
        "steps": (provider or base) / "steps",
    }
    env = runtime_env(az, dirs)
    runtime = LocalRuntime(state_dir=dirs["runtime"], env=env).start()
    try:
        with serve_examples() as url:
            api = ImageBuilderApi(runtime.base_url, runtime.key, resource_group=f"rel-{base.name}")
            r = Rel(api, open_store(az.connection_string), runtime, dirs["provider"], url, env)
            r.cache_dir = cache
            yield r
    finally:
        runtime.stop()


@pytest.fixture
def rel(e2e_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rel]:  # noqa: F811
    base = tmp_path_factory.mktemp("rel")
    cache = tmp_path_factory.getbasetemp() / "rel-cache"  # shared by the suite's runtimes
    with open_rel(e2e_azurite, base, cache) as r:
        yield r
