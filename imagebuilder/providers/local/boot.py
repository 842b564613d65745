"""Boot validation under QEMU (TCG only; the host's KVM cannot run stock guests): the image's own firmware
path (SeaBIOS for Gen1, OVMF for Gen2), its own bootloader, kernel and systemd, then checks inside it.

`boot_validate(disk, *, generation, checks, timeout=240, log=None, workdir) -> BootResult` copies the disk
(sparse) into `workdir`, injects a unit + runner + the `BootCheck` scripts into the copy with
``debugfs -w`` (the artifact is never modified), boots the copy with ``-nodefaults -display none
-serial file:… -no-reboot -nic none`` and ``snapshot=on`` under an outer timeout (the whole qemu process
group is killed when it expires), and decides pass/fail per check from nonce-tagged markers on the serial
console, each with its exit code. The serial log stays in `workdir`; everything else is removed.

Exceptions::

    ProviderError (providers.base)
    └── BootError    the image cannot be boot-validated at all (no systemd, bad check, missing firmware)
    (a boot that fails or a check that fails is a BootResult with ok=False, not an exception)
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import disk as disks
from imagebuilder.providers.local import proc

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GUEST_DIR = "/usr/local/libexec/imagebuilder-validate"
UNIT_NAME = "imagebuilder-validate.service"
SERIAL_GETTY_MASK = "/etc/systemd/system/serial-getty@ttyS0.service"
TAIL_LINES = 30
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class BootError(ProviderError):
    """An image or a check that boot validation cannot work with (not a failed check: see BootResult)."""


@dataclass(frozen=True)
class BootUser:
    """Run the checks through `wrapper` (a path in the image, called as `wrapper CHECK`), e.g. as the
    build user; `files` (path in the image -> (text, mode)) are injected into the boot copy with it,
    root-owned (parent folders made as needed). Only the throwaway copy is changed."""

    wrapper: str
    files: dict[str, tuple[str, int]]


@dataclass(frozen=True)
class BootCheck:
    """One validation run inside the booted image, as root from /root (or through `BootUser.wrapper`).

    ``kind="shell"``: `source` is script text (run by ``/bin/sh -e`` unless it starts with ``#!``, like
    Packer's inline shell); ``kind="file"``: `source` is the path of a script file on the host.
    """

    name: str
    kind: Literal["shell", "file"]
    source: str


@dataclass(frozen=True)
class DirectKernel:
    """Boot the image's own kernel and initrd directly (qemu -kernel/-initrd/-append): no firmware and
    no bootloader to wait for, and the disk needs no boot partition."""

    kernel: Path
    initrd: Path
    cmdline: str


@dataclass
class CheckResult:
    """What one check did: its exit code (None if it never finished) and its output lines."""

    name: str
    exit_code: int | None
    output: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


@dataclass
class BootResult:
    """`ok` when the image booted, every check ran and exited 0. `exit_code`: the first failing check's
    exit code (else qemu's when the boot itself failed, 0 when ok, None on timeout). `failures` are
    sentences for people; `output_tail` the last lines of the serial console."""

    ok: bool
    exit_code: int | None
    serial_log_path: Path
    duration: float
    failures: list[str]
    output_tail: list[str]
    checks: list[CheckResult] = field(default_factory=list)
    timed_out: bool = False
    qemu_exit_code: int | None = None


def _check_script(check: BootCheck) -> str:
    if check.kind == "shell":
        text = check.source
    elif check.kind == "file":
        path = Path(check.source)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BootError(
                f"validation {check.name!r}: cannot read script file {path}: {exc}",
                hint="stage the script (scriptUri) before boot validation",
            ) from exc
    else:
        raise BootError(f"validation {check.name!r}: kind {check.kind!r} is not 'shell' or 'file'")
    if not text.startswith("#!"):
        text = "#!/bin/sh -e\n" + text
    return text if text.endswith("\n") else text + "\n"


def _runner(nonce: str, count: int, wrapper: str | None = None) -> str:
    indexes = " ".join(str(i) for i in range(1, count + 1))
    via = f'/bin/sh "{wrapper}" ' if wrapper else ""
    return f"""#!/bin/sh
# Injected into a throwaway copy of the image by imagebuilder boot validation; never part of an artifact.
exec </dev/null >/dev/ttyS0 2>&1
dmesg -n 1 2>/dev/null || true
# Checks see a finished boot (this unit is Type=simple, so it does not hold the boot up itself).
timeout 120 systemctl is-system-running --wait >/dev/null 2>&1 || true
echo; echo "@@IB-{nonce} BEGIN@@"
for i in {indexes}; do
  echo; echo "@@IB-{nonce} CHECK $i START@@"
  (cd /root && HOME=/root {via}"{GUEST_DIR}/check-$i")
  rc=$?
  echo; echo "@@IB-{nonce} CHECK $i END rc=$rc@@"
done
echo "@@IB-{nonce} DONE@@"
# Power off right away: the disk is a throwaway copy, nothing needs a clean shutdown.
sync
echo o > /proc/sysrq-trigger 2>/dev/null || poweroff -f
"""


_UNIT = f"""[Unit]
Description=Image Builder in-VM validation (injected into a test boot only)
After=multi-user.target

[Service]
Type=simple
ExecStart={GUEST_DIR}/run
StandardInput=null
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"""


def _inject(copy: Path, offset: int, files: dict[str, tuple[Path, int]], work: Path) -> None:
    folders = {"/usr/local", "/usr/local/libexec", GUEST_DIR}
    for dest in files:
        parent = dest.rsplit("/", 1)[0]
        while parent and parent != "/":
            folders.add(parent)
            parent = parent.rsplit("/", 1)[0]
    # debugfs mkdir of a folder that exists fails harmlessly; parents first
    cmds = [f"mkdir {d}" for d in sorted(folders, key=lambda d: (d.count("/"), d))]
    cmds.append("mkdir /etc/systemd/system/multi-user.target.wants")
    for dest, (src, mode) in files.items():
        cmds += [
            f"rm {dest}",
            f"write {disks.debugfs_host_path(src)} {dest}",
            f"sif {dest} mode 0{0o100000 | mode:o}",
            f"sif {dest} uid 0",
            f"sif {dest} gid 0",
        ]
    wants = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
    cmds += [f"rm {wants}", f"symlink {wants} /etc/systemd/system/{UNIT_NAME}"]
    # A getty on the serial console calls vhangup() when it starts, which silently cuts the runner's
    # already-open /dev/ttyS0: markers were lost at random and the boot "never ran" its checks. Mask it
    # in this throwaway copy (the artifact keeps its getty).
    cmds += [f"rm {SERIAL_GETTY_MASK}", f"symlink {SERIAL_GETTY_MASK} /dev/null"]
    script = work / "inject.debugfs"
    script.write_text("\n".join(cmds) + "\n")
    proc.run(["debugfs", "-w", "-f", script, f"{copy}?offset={offset}"], echo_output=False, timeout=120)
    # debugfs exits 0 when a command fails: check what landed.
    for dest in [*files, wants]:
        try:
            disks.stat_in_disk(copy, dest, offset=offset)
        except FileNotFoundError as exc:
            raise BootError(f"could not inject {dest} into the boot copy of the image") from exc


def _is_systemd(copy: Path, offset: int) -> bool:
    for init in ("/sbin/init", "/usr/sbin/init"):
        try:
            st = disks.stat_in_disk(copy, init, offset=offset)
        except FileNotFoundError:
            continue
        if st["type"] == "symlink" and "systemd" in str(st["link"]):
            return True
    return False


def _qemu_argv(
    copy: Path,
    fmt: str,
    generation: str,
    serial: Path,
    vars_fd: Path | None,
    nonce: str,
    direct: DirectKernel | None = None,
) -> list[str]:
    argv = [
        # If this process dies, qemu dies with it (the timeout covers everything else).
        "setpriv", "--pdeathsig", "KILL",
        "qemu-system-x86_64",
        "-name", f"imagebuilder-validate-{nonce}",
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-m", "1024",
        "-smp", "2",
        "-machine", "q35" if generation == "V2" else "pc",
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
        "-serial", f"file:{serial}",
        "-monitor", "none",
        "-nic", "none",
    ]  # fmt: skip
    if vars_fd is not None:
        argv += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vars_fd}",
        ]  # fmt: skip
    if direct is not None:
        argv += ["-kernel", str(direct.kernel), "-initrd", str(direct.initrd), "-append", direct.cmdline]
    argv += ["-drive", f"file={copy},format={fmt},if=virtio,snapshot=on"]
    return argv


def _parse(
    text: str, nonce: str, checks: Sequence[BootCheck]
) -> tuple[bool, bool, list[CheckResult], list[str]]:
    """(began, done, per-check results, failures) from the serial console text."""
    began = f"@@IB-{nonce} BEGIN@@" in text
    done = f"@@IB-{nonce} DONE@@" in text
    results, failures = [], []
    for i, check in enumerate(checks, start=1):
        start = re.search(rf"@@IB-{nonce} CHECK {i} START@@", text)
        end = re.search(rf"@@IB-{nonce} CHECK {i} END rc=(\d+)@@", text)
        if start is None:
            results.append(CheckResult(check.name, None))
            failures.append(f"validation {check.name!r} never ran")
            continue
        body = text[start.end() : end.start() if end else len(text)]
        output = [ln.strip() for ln in body.splitlines() if ln.strip()]
        if end is None:
            results.append(CheckResult(check.name, None, output))
            failures.append(f"validation {check.name!r} did not finish")
            continue
        rc = int(end.group(1))
        results.append(CheckResult(check.name, rc, output))
        if rc != 0:
            last = f": {output[-1]}" if output else ""
            failures.append(f"validation {check.name!r} failed with exit code {rc}{last}")
    return began, done, results, failures


FATAL_GRACE_SECONDS = 5.0


def _diagnose(text: str) -> str | None:
    for pattern, reason in (
        (r"Kernel panic", "the kernel panicked"),
        (r"emergency mode|Emergency shell", "systemd entered emergency mode"),
        (r"Gave up waiting for root", "the initramfs did not find the root filesystem"),
        (
            r"Target filesystem doesn't have requested|No working init found",
            "the image has no init (/sbin/init): the initramfs could not start the system",
        ),
        (r"No bootable device|Boot failed", "the firmware found nothing to boot"),
        (r"error: file .* not found|error: no such device", "GRUB could not load the kernel"),
    ):
        if re.search(pattern, text):
            return reason
    return None


def boot_validate(
    disk: Path,
    *,
    generation: str,
    checks: list[BootCheck],
    timeout: int = 240,
    log: LogSink | None = None,
    workdir: Path,
    direct: DirectKernel | None = None,
    user: BootUser | None = None,
) -> BootResult:
    """Boot a copy of `disk` (raw, fixed VHD or qcow2) the way a Gen1/Gen2 VM would and run `checks` in it.
    With `direct`, the kernel is booted directly (no firmware, no bootloader; the fast path of
    inVMValidations); otherwise through the disk's firmware path and bootloader. With `user`, each check
    runs through its wrapper (the build user, see validate.py) instead of as root.

    Returns a `BootResult`; raises `BootError` only when validation is impossible (no systemd in the
    image, an unreadable check file, no OVMF for Gen2). `workdir` keeps the serial log afterwards.
    """
    disk, workdir = Path(disk), Path(workdir)
    if generation not in ("V1", "V2"):
        raise BootError(f"generation {generation!r} is not V1 or V2", hint="hyperVGeneration is V1 or V2")
    if not checks:
        raise BootError("boot validation needs at least one check")
    proc.require_tools("qemu-system-x86_64", "qemu-img", "debugfs", "sfdisk", "cp", "setpriv")
    if direct is None and generation == "V2" and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        raise BootError(
            f"Gen2 boot validation needs UEFI firmware ({OVMF_CODE})",
            hint="install the ovmf package (scripts/setup.sh lists it)",
        )
    scripts = [_check_script(c) for c in checks]
    workdir.mkdir(parents=True, exist_ok=True)
    nonce = secrets.token_hex(8)
    serial = workdir / f"serial-{generation}-{nonce[:8]}.log"
    work = Path(tempfile.mkdtemp(prefix="boot-", dir=workdir))
    start = time.monotonic()
    try:
        fmt = disks.inspect_disk(disk)["format"]
        copy = work / ("disk.vhd" if fmt == "vpc" else "disk.raw")
        if fmt == "qcow2":
            proc.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, copy], log=log, timeout=600)
            fmt = "raw"
        else:
            proc.run(["cp", "--sparse=always", disk, copy], log=log, timeout=600)
        offset = disks.root_offset(copy)
        if not _is_systemd(copy, offset):
            raise BootError(
                f"{disk} has no systemd init; boot validation runs its checks as a systemd unit",
                hint="images without systemd (BusyBox) are validated in the build sandbox instead",
            )
        files: dict[str, tuple[Path, int]] = {}
        for i, text in enumerate(scripts, start=1):
            src = work / f"check-{i}"
            src.write_text(text)
            files[f"{GUEST_DIR}/check-{i}"] = (src, 0o755)
        if user is not None:
            for n, (dest, (text, mode)) in enumerate(sorted(user.files.items())):
                src = work / f"user-{n}"
                src.write_text(text)
                files[dest] = (src, mode)
        (work / "run").write_text(_runner(nonce, len(checks), user.wrapper if user else None))
        (work / "unit").write_text(_UNIT)
        files[f"{GUEST_DIR}/run"] = (work / "run", 0o755)
        files[f"/etc/systemd/system/{UNIT_NAME}"] = (work / "unit", 0o644)
        _inject(copy, offset, files, work)
        vars_fd = None
        if generation == "V2" and direct is None:
            vars_fd = work / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_fd)
        if log is not None:
            names = ", ".join(c.name for c in checks)
            firmware = "OVMF/UEFI" if generation == "V2" else "SeaBIOS/BIOS"
            if direct is not None:
                firmware = f"direct kernel boot of {direct.kernel.name}"
            log.write(f"boot validation: {disk.name} ({generation}, {firmware}, TCG), checks: {names}\n")
        timed_out, qemu_rc = False, None
        try:
            done_proc = proc.run(
                _qemu_argv(copy, fmt, generation, serial, vars_fd, nonce, direct),
                log=log,
                timeout=timeout,
                check=False,
            )
            qemu_rc = done_proc.returncode
            qemu_tail = done_proc.tail
        except proc.CommandTimeoutError as exc:
            timed_out, qemu_tail = True, exc.tail
    finally:
        shutil.rmtree(work, ignore_errors=True)
    duration = round(time.monotonic() - start, 2)
    text = _ANSI.sub("", serial.read_bytes().decode("utf-8", "replace")) if serial.exists() else ""
    began, done, results, failures = _parse(text, nonce, checks)
    if not done:
        if timed_out:
            failures.insert(0, f"boot validation timed out after {timeout} s (qemu killed)")
        elif qemu_rc:
            failures.insert(0, f"qemu exited with code {qemu_rc}: {' | '.join(qemu_tail[-3:])}")
        if not began:
            reason = _diagnose(text) or "it never reached multi-user.target"
            failures.insert(1 if failures else 0, f"the image did not start its validation service: {reason}")
    ok = done and not failures
    first_bad = next((r.exit_code for r in results if r.exit_code not in (0, None)), None)
    exit_code = 0 if ok else first_bad if first_bad is not None else (None if timed_out else qemu_rc)
    tail = [ln for ln in (x.rstrip() for x in text.splitlines()) if ln.strip()][-TAIL_LINES:]
    if log is not None:
        for r in results:
            log.write(f"validation {r.name!r}: exit code {r.exit_code}\n")
            for line in r.output[-10:]:
                log.write(f"  | {line}\n")
        log.write(f"boot validation {'passed' if ok else 'FAILED'} in {duration} s; serial log: {serial}\n")
    return BootResult(
        ok=ok,
        exit_code=exit_code,
        serial_log_path=serial,
        duration=duration,
        failures=failures,
        output_tail=tail,
        checks=results,
        timed_out=timed_out,
        qemu_exit_code=qemu_rc,
    )


# --------------------------------------------------------------------------- the image that ships

# What a serial console shows once the image reached its first-boot target: getty's prompt, or
# systemd's own line for multi-user / graphical (images whose getty is not on the serial port). The
# kernel may print on the prompt's line right after it ("localhost login: [   29.8] kvm: ...").
TARGET_REACHED = re.compile(
    r"^(?!Last login)\S* ?login:(?:\s|$)"
    r"|Reached target .*(Multi-User System|Graphical Interface)",
    re.MULTILINE,
)


@dataclass
class FirstBoot:
    """The shipped-image boot check: `ok` when the disk reached its first-boot target in `seconds`;
    `reason` says why not (a sentence); the serial log is kept at `serial_log_path`."""

    ok: bool
    seconds: float
    reason: str
    serial_log_path: Path
    output_tail: list[str]
    timed_out: bool = False


def boot_to_target(
    disk: Path,
    *,
    generation: str,
    timeout: int = 300,
    log: LogSink | None = None,
    workdir: Path,
) -> FirstBoot:
    """Boot `disk` itself (raw or fixed VHD), read-only (`snapshot=on`: every write goes to a throwaway
    overlay), through its own firmware path and bootloader, and watch the serial console until it
    reaches its first-boot target (a login prompt or multi-user.target); qemu is killed right then.
    Nothing is injected: this is the image exactly as it ships."""
    disk, workdir = Path(disk), Path(workdir)
    if generation not in ("V1", "V2"):
        raise BootError(f"generation {generation!r} is not V1 or V2", hint="hyperVGeneration is V1 or V2")
    proc.require_tools("qemu-system-x86_64", "setpriv")
    if generation == "V2" and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        raise BootError(
            f"Gen2 boot needs UEFI firmware ({OVMF_CODE})", hint="install the ovmf package (scripts/setup.sh)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    nonce = secrets.token_hex(8)
    serial = workdir / f"first-boot-{generation}-{nonce[:8]}.log"
    work = Path(tempfile.mkdtemp(prefix="first-boot-", dir=workdir))
    fmt = "vpc" if disks.read_vhd_footer(disk) is not None else "raw"
    start = time.monotonic()
    reached, reason, timed_out = False, "", False
    try:
        vars_fd = None
        if generation == "V2":
            vars_fd = work / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_fd)
        argv = _qemu_argv(disk, fmt, generation, serial, vars_fd, nonce)
        argv[argv.index(f"imagebuilder-validate-{nonce}")] = f"imagebuilder-first-boot-{nonce}"
        if log is not None:
            log.write(f"shipped-image boot check: {disk.name} ({generation}, {fmt}, snapshot=on, TCG)\n")
        vm = proc.spawn(argv, log=log)
        fatal_since: float | None = None
        try:
            while True:
                text = _serial_text(serial)
                if TARGET_REACHED.search(text):
                    reached = True
                    break
                if not vm.alive():
                    reason = _diagnose(text) or f"the VM stopped (qemu exit code {vm.popen.returncode})"
                    break
                # A panic or an emergency shell never reaches the target: stop after a short grace for
                # the rest of the message, instead of waiting out the timeout.
                diagnosis = _diagnose(text)
                if diagnosis is not None:
                    fatal_since = fatal_since if fatal_since is not None else time.monotonic()
                    if time.monotonic() - fatal_since > FATAL_GRACE_SECONDS:
                        reason = diagnosis
                        break
                if time.monotonic() - start > timeout:
                    timed_out = True
                    reason = _diagnose(text) or f"no login prompt within {timeout} s"
                    break
                time.sleep(0.2)
        finally:
            vm.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.monotonic() - start, 2)
    text = _serial_text(serial)
    tail = [ln for ln in (x.rstrip() for x in text.splitlines()) if ln.strip()][-TAIL_LINES:]
    if log is not None:
        verdict = f"reached its first-boot target in {seconds} s" if reached else f"FAILED: {reason}"
        log.write(f"shipped-image boot check {verdict}; serial log: {serial}\n")
    return FirstBoot(reached, seconds, reason, serial, tail, timed_out)


def _serial_text(serial: Path) -> str:
    try:
        return _ANSI.sub("", serial.read_bytes().decode("utf-8", "replace"))
    except FileNotFoundError:
        return ""
