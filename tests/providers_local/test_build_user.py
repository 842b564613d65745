"""The build user (issue 16): Shell steps run as the non-root user `packer` with passwordless sudo, as on
Image Builder's Linux build VM, in the real sandbox. Writing /etc without sudo fails with the permission
error in the log; with sudo (a pipe into `sudo tee`, `sudo sh -c`, an exit code, `sudo -u`) it works."""

from __future__ import annotations

import pytest

from imagebuilder.providers.local.provider import LocalProvider
from tests.providers_local.test_provider_support import (
    RecLog,
    base_cache,
    build_input,
    file_root,
    provider,
)

_FIXTURES = (base_cache, file_root, provider)  # pytest fixtures used by name in this module

DEBIAN = {
    "type": "PlatformImage",
    "publisher": "Debian",
    "offer": "debian-12",
    "sku": "12",
    "version": "latest",
}

STEPS = [
    {"type": "Shell", "name": "who", "inline": ["id -un", "id -u", "echo home=$HOME pwd=$(pwd)"]},
    {"type": "Shell", "name": "no-sudo", "inline": ["echo nope > /etc/motd-by-user"]},
    {
        "type": "Shell",
        "name": "with-sudo",
        "inline": [
            "echo from-sudo | sudo tee /etc/motd-by-user > /dev/null",
            "sudo sh -c 'id -u > /etc/sudo-uid; echo $SUDO_USER > /etc/sudo-user'",
            "sudo mkdir -p /srv/www && sudo cp /etc/motd-by-user /srv/www/",
            "if sudo sh -c 'exit 3'; then echo 'exit code lost'; exit 1; else echo sudo-exit=$?; fi",
            "sudo -u packer id -un > /tmp/as-packer",
            "cd /tmp && sudo sh -c 'pwd > /etc/sudo-cwd'",
            "echo written-by-user > /tmp/user-file",
        ],
    },
]


def _run(provider: LocalProvider, source: dict[str, str] | None = None) -> tuple[RecLog, list, object]:  # type: ignore[type-arg]
    props: dict = {"customize": STEPS}  # type: ignore[type-arg]
    if source is not None:
        props["source"] = source
    build = build_input(props)
    log = RecLog()
    prepared = provider.prepare(build, log)
    assert prepared.status == "succeeded", prepared.error
    env = provider.create_build_env(build, prepared, log)
    steps = [provider.customize(build, env, i, log) for i in range(len(STEPS))]
    return log, steps, (build, env)


def _check(provider: LocalProvider, log: RecLog, steps: list, build_env: object) -> None:  # type: ignore[type-arg]
    build, env = build_env  # type: ignore[misc]
    who, denied, allowed = steps
    assert who.status == "succeeded", log.text
    assert "] packer\n" in log.text and "home=/home/packer pwd=/home/packer" in log.text
    assert denied.status == "failed" and denied.exit_code != 0
    assert "/etc/motd-by-user" in log.text and "Permission denied" in log.text, log.text
    assert allowed.status == "succeeded", log.text
    assert "sudo-exit=3" in log.text
    root = provider.layout(build).root
    assert (root / "etc/motd-by-user").read_text() == "from-sudo\n"
    assert (root / "etc/sudo-uid").read_text() == "0\n"
    assert (root / "etc/sudo-user").read_text() == "packer\n"
    assert (root / "etc/sudo-cwd").read_text() == "/tmp\n"
    assert (root / "srv/www/motd-by-user").is_file()
    assert (root / "tmp/as-packer").read_text() == "packer\n"
    passwd = (root / "etc/passwd").read_text()
    assert "\npacker:x:1000:1000:" in passwd
    user_file = root / "tmp/user-file"
    assert user_file.stat().st_uid != (root / "etc/motd-by-user").stat().st_uid, "owned by the build user"
    # generalize removes the build user, as waagent -deprovision+user does
    assert provider.generalize(build, env, log).status == "succeeded"
    assert "packer:" not in (root / "etc/passwd").read_text()
    assert not (root / "home/packer").exists()
    provider.cleanup(build, keep=False, log=log)


def test_busybox_steps_run_as_the_build_user_with_sudo(provider: LocalProvider) -> None:
    log, steps, build_env = _run(provider)
    _check(provider, log, steps, build_env)


@pytest.mark.slow
def test_debian_steps_run_as_the_build_user_with_sudo(provider: LocalProvider) -> None:
    log, steps, build_env = _run(provider, DEBIAN)
    _check(provider, log, steps, build_env)


def test_root_tag_runs_steps_as_root(provider: LocalProvider) -> None:
    build = build_input(
        {"customize": [{"type": "Shell", "inline": ["id -u", "echo ok > /etc/as-root"]}]},
        tags={"imagebuilder.local.buildUser": "root"},
    )
    log = RecLog()
    prepared = provider.prepare(build, log)
    env = provider.create_build_env(build, prepared, log)
    assert provider.customize(build, env, 0, log).status == "succeeded", log.text
    assert "] 0\n" in log.text
    provider.cleanup(build, keep=False, log=log)
