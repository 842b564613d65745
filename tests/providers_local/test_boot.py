"""Boot validation for real under QEMU (TCG): the Azure fixed VHD of the Debian base boots through SeaBIOS
and GRUB (Gen1) or OVMF (Gen2), checks run inside it with their exit codes, the artifact is untouched, and
a boot that overruns its timeout is killed with nothing left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imagebuilder.providers.local import boot, disk
from tests.providers_local.conftest import DebianDisks, leaks


class ListLog:
    uri = "mem://log"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


def _fingerprint(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def test_the_first_boot_target_is_seen_on_a_prompt_line_the_kernel_wrote_on() -> None:
    # seen on a Gen2 boot: getty's prompt, then the kernel's messages on the same line
    assert boot.TARGET_REACHED.search("Debian GNU/Linux 12 localhost ttyS0\n\nlocalhost login: ")
    assert boot.TARGET_REACHED.search("localhost login: [   29.808556] kvm: Nested Virtualization enabled\n")
    assert boot.TARGET_REACHED.search("[  OK  ] Reached target multi-user.target - Multi-User System.\n")
    assert not boot.TARGET_REACHED.search(
        "[  OK  ] Started systemd-logind.service - User Login Management.\n"
    )
    assert not boot.TARGET_REACHED.search("Last login: never\nsomething login:x\n")


@pytest.mark.boot
@pytest.mark.slow
def test_gen1_vhd_boots_and_reports_each_check(debian_disks: DebianDisks, scratch: Path) -> None:
    vhd = disk.to_vhd(debian_disks.gen1.path, scratch / "gen1.vhd")
    before = _fingerprint(vhd)
    script = scratch / "check-ssh.sh"
    script.write_text(
        "#!/bin/sh\nset -e\ntest -s /etc/ssh/ssh_host_ed25519_key\necho host keys made on first boot\n"
    )
    checks = [
        boot.BootCheck(
            "os and root",
            "shell",
            "grep -q 'VERSION_CODENAME=bookworm' /etc/os-release\n"
            "findmnt -n -o FSTYPE / | grep -qx ext4\n"
            "test -s /etc/machine-id\n"
            "systemctl is-system-running\n"
            "echo booted $(uname -r)",
        ),
        boot.BootCheck("ssh host keys", "file", str(script)),
        boot.BootCheck("must fail", "shell", "echo about to fail\nexit 3"),
    ]
    log = ListLog()
    work = scratch / "boot"
    result = boot.boot_validate(vhd, generation="V1", checks=checks, timeout=300, log=log, workdir=work)
    assert not result.ok and not result.timed_out
    assert result.exit_code == 3
    assert [(c.name, c.exit_code) for c in result.checks] == [
        ("os and root", 0),
        ("ssh host keys", 0),
        ("must fail", 3),
    ]
    assert result.checks[0].output[-1].startswith("booted ") and result.checks[0].output[-1].endswith(
        "-cloud-amd64"
    )
    assert result.checks[1].output == ["host keys made on first boot"]
    assert result.failures == ["validation 'must fail' failed with exit code 3: about to fail"]
    serial = result.serial_log_path.read_text(errors="replace")
    # No -kernel: GRUB (from the BIOS boot partition) loaded the kernel with the command line it carries.
    assert (
        f"Command line: BOOT_IMAGE=/vmlinuz root=UUID={debian_disks.gen1.fs_uuid} ro console=tty0" in serial
    )
    assert "Linux version" in serial and "about to fail" in serial
    assert result.output_tail and result.duration > 0
    assert any("failed" not in line and "exit code 0" in line for line in log.lines)
    # The artifact is never modified: same bytes on disk, none of the injected files in it.
    assert _fingerprint(vhd) == before
    with pytest.raises(FileNotFoundError):
        disk.stat_in_disk(vhd, "/etc/systemd/system/imagebuilder-validate.service")
    # Only the serial log stays in the work dir; no qemu survives.
    assert [p.name for p in work.iterdir()] == [result.serial_log_path.name]
    assert leaks(scratch) == []


@pytest.mark.boot
@pytest.mark.slow
def test_gen2_boots_with_uefi(debian_disks: DebianDisks, scratch: Path) -> None:
    checks = [boot.BootCheck("uefi", "shell", "test -d /sys/firmware/efi\nfindmnt -n -o FSTYPE /boot/efi")]
    result = boot.boot_validate(
        debian_disks.gen2.path, generation="V2", checks=checks, timeout=300, workdir=scratch
    )
    assert result.ok, (result.failures, result.output_tail)
    assert result.exit_code == 0 and result.failures == []
    assert result.checks[0].output[-1] == "vfat"
    assert "EFI v2" in result.serial_log_path.read_text(errors="replace")


@pytest.mark.boot
@pytest.mark.slow
def test_timeout_kills_qemu_and_reports(debian_disks: DebianDisks, scratch: Path) -> None:
    checks = [boot.BootCheck("never reached", "shell", "true")]
    result = boot.boot_validate(
        debian_disks.gen1.path, generation="V1", checks=checks, timeout=4, workdir=scratch
    )
    assert not result.ok and result.timed_out and result.exit_code is None
    assert result.failures[0] == "boot validation timed out after 4 s (qemu killed)"
    assert "validation 'never reached' never ran" in result.failures
    assert leaks(scratch) == []
    assert {p.name for p in scratch.iterdir()} <= {result.serial_log_path.name}  # only the serial log stays


def test_images_without_systemd_are_refused(busybox_rootfs: Path, scratch: Path) -> None:
    info = disk.build_disk(busybox_rootfs, scratch / "bb.raw", generation="V1", bootable=False)
    with pytest.raises(boot.BootError, match="no systemd") as exc:
        boot.boot_validate(
            info.path, generation="V1", checks=[boot.BootCheck("x", "shell", "true")], workdir=scratch / "w"
        )
    assert "sandbox" in (exc.value.hint or "")
    assert list((scratch / "w").iterdir()) == []


def test_bad_checks_are_refused_before_booting(scratch: Path) -> None:
    with pytest.raises(boot.BootError, match="cannot read script file"):
        boot.boot_validate(
            scratch / "none.raw",
            generation="V1",
            checks=[boot.BootCheck("f", "file", str(scratch / "missing.sh"))],
            workdir=scratch,
        )
    with pytest.raises(boot.BootError, match="at least one check"):
        boot.boot_validate(scratch / "none.raw", generation="V1", checks=[], workdir=scratch)
    with pytest.raises(boot.BootError, match="V1 or V2"):
        boot.boot_validate(scratch / "none.raw", generation="Gen1", checks=[], workdir=scratch)


def test_serial_markers_are_parsed_per_check() -> None:
    n = "abc123"
    checks = [boot.BootCheck(name, "shell", "true") for name in ("a", "b", "c", "d")]
    text = (
        f"noise\n@@IB-{n} BEGIN@@\n@@IB-{n} CHECK 1 START@@\nout a\n@@IB-{n} CHECK 1 END rc=0@@\n"
        f"@@IB-{n} CHECK 2 START@@\n[  12.3] kernel says hi\nboom\n@@IB-{n} CHECK 2 END rc=42@@\n"
        f"@@IB-{n} CHECK 3 START@@\nstuck\n"
        # A forged marker with another nonce does not count.
        "@@IB-fffff CHECK 4 START@@\n"
    )
    began, done, results, failures = boot._parse(text, n, checks)
    assert began and not done
    assert [(r.name, r.exit_code) for r in results] == [("a", 0), ("b", 42), ("c", None), ("d", None)]
    assert results[1].output[-1] == "boom"
    assert failures == [
        "validation 'b' failed with exit code 42: boom",
        "validation 'c' did not finish",
        "validation 'd' never ran",
    ]


@pytest.mark.boot
@pytest.mark.slow
def test_the_shipped_image_boot_check_reaches_login_and_leaves_the_disk_untouched(
    debian_disks: DebianDisks, scratch: Path
) -> None:
    vhd = scratch / "ship.vhd"
    subprocess.run(["cp", "--sparse=always", debian_disks.gen1.path, scratch / "ship.raw"], check=True)
    disk.raw_to_vhd_in_place(scratch / "ship.raw", vhd)
    before = _digest(vhd)
    log = ListLog()
    res = boot.boot_to_target(vhd, generation="V1", timeout=600, log=log, workdir=scratch / "w")
    assert res.ok, (res.reason, res.output_tail)
    assert "login:" in "\n".join(res.output_tail) or "Reached target" in "\n".join(res.output_tail)
    assert _digest(vhd) == before  # snapshot=on: the shipped disk is never written
    assert "reached its first-boot target" in "".join(log.lines)
    assert leaks(scratch) == []


@pytest.mark.boot
@pytest.mark.slow
def test_the_shipped_image_boot_check_catches_an_image_that_does_not_boot(
    debian_disks: DebianDisks, scratch: Path
) -> None:
    broken = scratch / "broken.raw"
    subprocess.run(["cp", "--sparse=always", debian_disks.gen1.path, broken], check=True)
    offset = disk.root_offset(broken)
    # what a customizer that removes systemd (the image's init) leaves behind
    for path in ("/usr/lib/systemd/systemd", "/usr/sbin/init"):
        subprocess.run(["debugfs", "-w", "-R", f"rm {path}", f"{broken}?offset={offset}"], check=True,
                       capture_output=True)  # fmt: skip
    res = boot.boot_to_target(broken, generation="V1", timeout=300, log=ListLog(), workdir=scratch / "w")
    assert not res.ok and res.reason
    assert res.serial_log_path.is_file()
    assert leaks(scratch) == []


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DEBIAN = {
    "type": "PlatformImage",
    "publisher": "Debian",
    "offer": "debian-12",
    "sku": "12",
    "version": "latest",
}


@pytest.mark.boot
@pytest.mark.slow
def test_capture_fails_naming_the_boot_check_when_a_customizer_breaks_booting(
    debian_tarball: Path, image_cache: Path, tmp_path: Path
) -> None:
    from imagebuilder.providers.local.provider import LocalProvider
    from tests.providers_local.test_provider_support import RecLog, build_input

    p = LocalProvider(state_dir=tmp_path / "state", cache_dir=image_cache)
    p.step_cache_dir = tmp_path / "steps"
    cases = {
        "no-init": "sudo rm -f /usr/lib/systemd/systemd /usr/sbin/init",  # boots to a panic
        "no-kernel": "sudo rm -f /boot/vmlinuz-* /vmlinuz /vmlinuz.old",  # nothing to boot at all
    }
    for run_id, command in cases.items():
        build = build_input({"source": DEBIAN, "customize": [{"type": "Shell", "inline": [command]}]},
                            run_id=run_id)  # fmt: skip
        log = RecLog()
        prepared = p.prepare(build, log)
        env = p.create_build_env(build, prepared, log)
        assert p.customize(build, env, 0, log).status == "succeeded"
        assert p.generalize(build, env, log).status == "succeeded"
        cap = p.capture(build, env, log)
        p.cleanup(build, keep=False, log=log)
        assert cap.status == "failed" and cap.error is not None, run_id
        assert cap.error.code == "ShippedImageBootFailed", cap.error
        assert cap.error.message.startswith("shipped-image boot check failed"), cap.error.message
    assert leaks(tmp_path) == []


@pytest.mark.boot
@pytest.mark.slow
def test_validations_boot_the_images_own_kernel_directly(debian_disks: DebianDisks, scratch: Path) -> None:
    from imagebuilder.providers.local.layout import resolve_in_root

    tree = debian_disks.tree
    kernel, initrd = disk.find_kernel(tree)
    raw = scratch / "plain.raw"
    info = disk.build_disk(tree, raw, generation="V1", bootable=False)  # no boot partition, no GRUB
    direct = boot.DirectKernel(
        resolve_in_root(tree, kernel),
        resolve_in_root(tree, initrd),
        f"root=UUID={info.fs_uuid} {disk.KERNEL_CMDLINE}",
    )
    log = ListLog()
    res = boot.boot_validate(
        raw,
        generation="V1",
        checks=[boot.BootCheck(name="systemd is up", kind="shell", source="test -d /run/systemd/system")],
        timeout=600,
        log=log,
        workdir=scratch / "w",
        direct=direct,
    )
    assert res.ok, (res.failures, res.output_tail)
    assert [c.exit_code for c in res.checks] == [0]
    assert "direct kernel boot" in "".join(log.lines)
    assert leaks(scratch) == []
