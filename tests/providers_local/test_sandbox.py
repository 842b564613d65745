"""The bubblewrap sandbox, for real: namespaces, dropped capabilities, clean environment, read-only
inbox, the sudo shim, timeouts that take every process of the sandbox with them."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from imagebuilder.providers.local import bases, catalog, proc, sandbox
from tests.providers_local.test_provider_support import RecLog, base_cache

_FIXTURES = (base_cache,)  # pytest fixtures used by name in this module


@pytest.fixture
def root(tmp_path: Path, base_cache: Path) -> Path:
    base = catalog.resolve("ImageBuilderLocal", "busybox", "stable", "latest")
    tarball = bases.ensure_base(base, base_cache)
    tree = tmp_path / "root"
    bases.extract_base(tarball, tree)
    return tree


def _sh(
    root: Path, script: str, *, inbox: Path | None = None, network: bool = False, timeout: float = 30
) -> proc.Completed:
    return sandbox.run(
        root,
        ["/bin/sh", "-c", script],
        network=network,
        inbox=inbox,
        run_marker="t-marker",
        log=RecLog(),
        timeout=timeout,
    )


def test_namespaces_identity_and_clean_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    done = _sh(root, "echo pid=$$; hostname; id -u; env | sort; cat /proc/net/dev | grep -c :")
    assert done.returncode == 0, done.tail
    out = done.stdout
    assert "pid=1\n" in out or "pid=2\n" in out  # bwrap's own init may be pid 1
    assert "localhost\n" in out
    assert "\n0\n" in out
    assert "SECRET_TOKEN" not in out and "do-not-leak" not in out
    assert "DEBIAN_FRONTEND=noninteractive" in out
    assert out.strip().endswith("1")  # network off: only lo


def test_capabilities_are_reduced(root: Path) -> None:
    done = _sh(
        root,
        "mount -t tmpfs t /mnt 2>/dev/null && echo MOUNTED; mknod /dev/sdx b 8 0 2>/dev/null && echo MKNOD; "
        "hostname other 2>/dev/null && echo HOSTNAME; chown 65534 /tmp && echo CHOWN; true",
    )
    assert done.returncode == 0
    assert "MOUNTED" not in done.stdout
    assert "MKNOD" not in done.stdout
    assert "HOSTNAME" not in done.stdout
    assert "CHOWN" in done.stdout


def test_host_is_not_visible_and_inbox_is_read_only(root: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    sandbox.prepare_inbox(inbox)
    (tmp_path / "host-only").write_text("x")
    done = _sh(
        root,
        f"test -e {tmp_path}/host-only && echo SEEN; touch /run/imagebuilder/x 2>/dev/null && echo WROTE; "
        "sudo id -u; sudo -u root -E sh -c 'echo via-sudo'",
        inbox=inbox,
    )
    assert done.returncode == 0, done.tail
    assert "SEEN" not in done.stdout and "WROTE" not in done.stdout
    assert "0\nvia-sudo\n" in done.stdout
    assert not (inbox / "x").exists()


def test_sudo_shim_works_when_the_image_has_no_sudo(root: Path, tmp_path: Path) -> None:
    (root / "usr/bin/sudo").unlink()
    inbox = tmp_path / "inbox"
    sandbox.prepare_inbox(inbox)
    done = _sh(root, "command -v sudo; sudo -n -H VAR=1 sh -c 'echo $VAR'", inbox=inbox)
    assert done.returncode == 0, done.tail
    assert done.stdout == "/run/imagebuilder/bin/sudo\n1\n"


def test_timeout_kills_every_process_of_the_sandbox(root: Path) -> None:
    start = time.monotonic()
    with pytest.raises(proc.CommandTimeoutError):
        _sh(root, "(sleep 3141 &) ; setsid sleep 3142 & sleep 3143", timeout=1.5)
    assert time.monotonic() - start < 20
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sandbox.find_processes("t-marker", [root]):
        time.sleep(0.05)
    assert sandbox.find_processes("t-marker", [root]) == []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert cmd not in (b"sleep\x003141\x00", b"sleep\x003142\x00", b"sleep\x003143\x00")


def test_argv_is_data_not_a_shell_string(root: Path) -> None:
    argv = sandbox.sandbox_argv(
        root, ["/bin/echo", "a; touch /pwned", "$(id)"], network=True, inbox=None, run_marker="m"
    )
    assert argv[0] == "bwrap" and argv[-3:] == ["/bin/echo", "a; touch /pwned", "$(id)"]
    assert "--unshare-net" not in argv and "--cap-drop" in argv
    done = proc.run(argv, timeout=30)
    assert done.stdout == "a; touch /pwned $(id)\n"
    assert not (root / "pwned").exists()


def test_prefixed_log_prefixes_each_line() -> None:
    inner = RecLog()
    log = sandbox.PrefixedLog(inner, "customize[0] (Shell: x)")
    log.write("one\ntwo\n")
    assert inner.text == "[customize[0] (Shell: x)] one\n[customize[0] (Shell: x)] two\n"
    assert log.uri == inner.uri


def test_bwrap_is_installed() -> None:
    assert shutil.which("bwrap")
