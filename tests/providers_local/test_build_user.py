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


def test_file_customizer_writes_as_the_build_user(provider: LocalProvider, file_root) -> None:  # type: ignore[no-untyped-def]
    """AIB: a Linux File customizer can write only where the build user can (/tmp); to /etc it fails
    naming the field and the way out (download to /tmp, move with sudo), which then works."""
    (file_root / "app.conf").write_text("key=value\n")
    uri = (file_root / "app.conf").as_uri()
    steps = [
        {"type": "File", "sourceUri": uri, "destination": "/etc/app/app.conf"},
        {"type": "File", "sourceUri": uri, "destination": "/tmp/app/app.conf"},
        {
            "type": "Shell",
            "inline": [
                "sudo mkdir -p /etc/app",
                "sudo mv /tmp/app/app.conf /etc/app/",
                "sudo chown root:root /etc/app/app.conf",
            ],
        },
        {"type": "File", "sourceUri": uri, "destination": "/etc/app/app.conf"},
    ]
    build = build_input({"customize": steps})
    log = RecLog()
    prepared = provider.prepare(build, log)
    assert prepared.status == "succeeded", prepared.error
    env = provider.create_build_env(build, prepared, log)
    root = provider.layout(build).root
    denied = provider.customize(build, env, 0, log)
    assert denied.status == "failed" and denied.error is not None
    message = denied.error.message
    assert "properties.customize[0].destination /etc/app/app.conf" in message, message
    assert "Permission denied" in message and "/tmp/app.conf" in message and "sudo mv" in message
    assert "cannot create folders in /etc" in message
    assert not (root / "etc/app").exists()
    assert provider.customize(build, env, 1, log).status == "succeeded", log.text
    uid = int((root / "etc/passwd").read_text().split("\npacker:x:")[1].split(":")[0])
    st = (root / "tmp/app/app.conf").stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (uid, 0o644), "a new file is the build user's, 0644"
    assert (root / "tmp/app").stat().st_uid == uid
    assert provider.customize(build, env, 2, log).status == "succeeded", log.text
    assert (root / "etc/app/app.conf").read_text() == "key=value\n"
    # An existing root-owned file is not the build user's to overwrite either.
    again = provider.customize(build, env, 3, log)
    assert again.status == "failed" and again.error is not None
    assert "cannot write the existing file /etc/app/app.conf" in again.error.message
    provider.cleanup(build, keep=False, log=log)


def test_root_tag_lets_file_write_anywhere(provider: LocalProvider, file_root) -> None:  # type: ignore[no-untyped-def]
    (file_root / "app.conf").write_text("key=value\n")
    build = build_input(
        {
            "customize": [
                {"type": "File", "sourceUri": (file_root / "app.conf").as_uri(), "destination": "/etc/app/x"}
            ]
        },
        tags={"imagebuilder.local.buildUser": "root"},
    )
    log = RecLog()
    prepared = provider.prepare(build, log)
    env = provider.create_build_env(build, prepared, log)
    assert provider.customize(build, env, 0, log).status == "succeeded", log.text
    target = provider.layout(build).root / "etc/app/x"
    assert target.read_text() == "key=value\n" and target.stat().st_uid == 0
    provider.cleanup(build, keep=False, log=log)


@pytest.mark.slow
@pytest.mark.boot
def test_in_vm_validations_run_as_the_build_user_in_the_booted_image(provider: LocalProvider) -> None:
    """Bootable images: inVMValidations run in the booted VM as `packer` with passwordless sudo, as on
    Image Builder; the user exists only in the throwaway boot copy, never in the image."""
    build = build_input(
        {
            "source": DEBIAN,
            "customize": [{"type": "Shell", "inline": ["echo v1 | sudo tee /etc/app-version"]}],
            "validate": {
                "inVMValidations": [
                    {
                        "type": "Shell",
                        "name": "as packer",
                        "inline": [
                            'test "$(id -un)" = packer',
                            'test "$HOME" = /home/packer',
                            "if touch /etc/not-as-packer 2>/dev/null; then exit 9; fi",
                            'test "$(sudo id -u)" = 0',
                            "grep -q v1 /etc/app-version && echo v2 | sudo tee /etc/app-version",
                        ],
                    }
                ]
            },
        }
    )
    log = RecLog()
    prepared = provider.prepare(build, log)
    assert prepared.status == "succeeded", prepared.error
    env = provider.create_build_env(build, prepared, log)
    assert provider.customize(build, env, 0, log).status == "succeeded", log.text
    res = provider.validate(build, env, log)
    assert res.status == "succeeded", (res.error, log.text[-3000:])
    assert res.details["mode"] == "boot"
    root = provider.layout(build).root
    assert (root / "etc/app-version").read_text() == "v1\n", "validation ran on a throwaway copy"
    assert not (root / "etc/sudoers.d/90-imagebuilder-build-user").exists()
    provider.cleanup(build, keep=False, log=log)
