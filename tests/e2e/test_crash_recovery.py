"""kill -9 of the runtime in the middle of a build, then a restart on the same state: the run completes,
and the steps that had finished before the crash are not run again (their durable history says so)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.demo import ImageBuilderApi, LocalRuntime, serve_examples
from imagebuilder.store import open_store
from local_runtime.azurite import Azurite
from tests.e2e.conftest import E2E, assert_no_leaks, check_vhd, file_path, runtime_env

pytestmark = pytest.mark.slow


@pytest.fixture
def crash_env(e2e_azurite: Azurite, tmp_path: Path) -> Iterator[E2E]:
    dirs = {
        "runtime": tmp_path / "runtime",
        "provider": tmp_path / "provider",
        "cache": tmp_path / "cache",
        "steps": tmp_path / "steps",
    }
    env = runtime_env(e2e_azurite, dirs)
    runtime = LocalRuntime(state_dir=dirs["runtime"], env=env).start()
    try:
        with serve_examples() as url:
            api = ImageBuilderApi(runtime.base_url, runtime.key, resource_group="crash-rg")
            yield E2E(api, open_store(e2e_azurite.connection_string), runtime, dirs["provider"], url, env)
    finally:
        runtime.stop()


def test_kill_9_mid_build_then_restart_completes_without_redoing_finished_steps(crash_env: E2E) -> None:
    e2e = crash_env
    name = "bb-crash"
    template = e2e.template(
        "busybox-webpage.json",
        customize=[
            {"type": "Shell", "name": "one", "inline": ["echo one | sudo tee -a /etc/steps"]},
            {
                "type": "Shell",
                "name": "two",
                "inline": ["echo two-start", "sleep 10", "echo two | sudo tee -a /etc/steps"],
            },
            {"type": "Shell", "name": "three", "inline": ["echo three | sudo tee -a /etc/steps"]},
        ],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "crash-vhd"}],
    )
    e2e.api.put_template(name, template)
    e2e.api.run(name)
    e2e.wait_log(name, "two-start")
    e2e.runtime.kill9()

    e2e.runtime.start()  # same state dir: the durable history and keys survive
    e2e.api.base_url = e2e.runtime.base_url
    final = e2e.api.watch(name, timeout=300, interval=0.5)
    if final["runState"] != "Succeeded":
        pytest.fail(f"{final['message']}\n--- customization.log (end) ---\n{e2e.log_text(name)[-4000:]}")

    log = e2e.log_text(name)
    # finished before the crash: ran once; in flight at the crash: ran again; after: once
    assert log.count("==> prepare (source and artifacts): started") == 1
    assert log.count("==> customize[0] (Shell: one): started") == 1
    assert log.count("==> customize[1] (Shell: two): started") == 2
    assert log.count("==> customize[2] (Shell: three): started") == 1
    # and the image has each step's work exactly once
    out = {o["name"]: o["properties"] for o in e2e.api.run_outputs(name)}
    vhd = check_vhd(file_path(out["crash-vhd"]["artifactUri"]))
    assert vhd.read("/etc/steps") == b"one\ntwo\nthree\n"
    assert_no_leaks(e2e.provider_state)
