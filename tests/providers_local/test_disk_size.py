"""vmProfile.osDiskSizeGB sets the size of the local disk; a size smaller than the image's content is
refused with an error naming the field and the size needed (BusyBox base, real disks)."""

from __future__ import annotations

from pathlib import Path

from imagebuilder.providers.local import disk
from imagebuilder.providers.local.provider import LocalProvider
from tests.providers_local.test_provider_support import (
    RecLog,
    assert_no_leaks,
    base_cache,
    build_input,
    file_root,
    provider,
)

_FIXTURES = (base_cache, file_root, provider)  # pytest fixtures used by name in this module


def _capture(p: LocalProvider, props: dict, run_id: str):  # type: ignore[no-untyped-def]
    build = build_input(props, run_id=run_id)
    log = RecLog()
    env = p.create_build_env(build, p.prepare(build, log), log)
    for i in range(len(props.get("customize", []))):
        assert p.customize(build, env, i, log).status == "succeeded"
    cap = p.capture(build, env, log)
    return build, cap, log


def test_os_disk_size_sets_the_disk_and_too_small_is_refused(provider: LocalProvider) -> None:
    build, cap, log = _capture(provider, {"vmProfile": {"osDiskSizeGB": 2}}, "sized")
    assert cap.status == "succeeded", cap.error
    vhd = Path(cap.image["vhd"])
    assert disk.inspect_disk(vhd)["virtual_size"] == 2 * 1024**3
    provider.cleanup(build, keep=False, log=log)

    build, cap, log = _capture(provider, {}, "default")
    assert cap.status == "succeeded" and cap.image["size"] < 1024**3  # 0/absent: the tree plus headroom
    provider.cleanup(build, keep=False, log=log)

    big = {
        "vmProfile": {"osDiskSizeGB": 1},
        "customize": [{"type": "Shell", "inline": ["sudo fallocate -l 1100M /big"]}],
    }
    build, cap, log = _capture(provider, big, "small")
    assert cap.status == "failed" and cap.error is not None
    assert cap.error.code == "OsDiskTooSmall"
    assert "properties.vmProfile.osDiskSizeGB is 1 GB" in cap.error.message
    assert "needs at least 2 GB" in cap.error.message
    provider.cleanup(build, keep=False, log=log)
    assert_no_leaks(provider, build)
