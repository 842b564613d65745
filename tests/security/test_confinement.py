"""The confined sandbox, attacked for real: root inside is an unprivileged uid outside while the build
root keeps real owners on disk; escapes through /proc/1/root, a device node, a setuid binary and a symlink
swap in a File destination are refused; a fork bomb, a memory eater and a 10 GB write are cut off by the
step's limits; the seccomp filter refuses mount, kexec, module loading, ptrace, new namespaces and raw
sockets offline. Each test checks the outcome AND fails when the confinement it relies on is turned off
(IMAGEBUILDER_SANDBOX_CONFINE=off or no limits): `test_each_attack_succeeds_without_confinement` runs
the same attacks unconfined to prove the tests can fail."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.providers.local import confine, customizers, limits, mounts, sandbox, seccomp
from imagebuilder.template.models import FileCustomizer
from tests.security.conftest import RecLog

TIGHT = limits.StepLimits(memory_mb=256, pids=64, file_size_mb=64)
OFF = limits.StepLimits(confine=False, memory_mb=1 << 20, pids=1 << 20, file_size_mb=1 << 24, disk_mb=1 << 24)


def _sh(
    root: Path,
    script: str,
    *,
    network: bool = False,
    lim: limits.StepLimits = TIGHT,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    done = sandbox.run(
        root,
        ["/bin/sh", "-c", script],
        network=network,
        inbox=None,
        run_marker="confine-test",
        log=RecLog(),
        timeout=timeout,
        step_limits=lim,
    )
    return subprocess.CompletedProcess(done.argv, done.returncode, done.stdout, done.stderr)


@pytest.fixture
def overlay_root(tmp_path: Path, root: Path) -> Iterator[Path]:
    """The BusyBox tree as the lower layer of an overlay, as build roots are made."""
    build = tmp_path / "build"
    for d in ("upper", "work", "root"):
        (build / d).mkdir(parents=True)
    merged = build / "root"
    opts = f"lowerdir={root},upperdir={build / 'upper'},workdir={build / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


# -- release after cleanup began ------------------------------------------------------------------------


@pytest.mark.parametrize("cleanup_began", [True, False])
def test_a_released_step_does_not_remount_once_cleanup_began(cleanup_began: bool, overlay_root: Path) -> None:
    """A confined step swaps the run's overlay for its idmapped view and puts it back when released. Once
    cleanup of the run began (the marker `stop_remounts` leaves), the release leaves it down: cleanup is
    removing the folder under it. Without the marker the overlay comes back (the control)."""
    assert mounts.mounted(overlay_root)
    with confine.confined_root(overlay_root):
        assert not mounts.mounted(overlay_root)  # swapped out while the step runs
        if cleanup_began:
            confine.stop_remounts(overlay_root)
    assert mounts.mounted(overlay_root) is not cleanup_began


# -- identity and ownership ----------------------------------------------------------------------------


def test_root_inside_is_an_unprivileged_uid_outside(root: Path) -> None:
    done = _sh(root, "id -u; cat /proc/self/uid_map; grep -E '^(Uid|NoNewPrivs|Seccomp):' /proc/self/status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == "0"
    inside, outside, count = (int(x) for x in lines[1].split())
    assert inside == 0 and count == confine.RANGE and outside >= confine.UID_BASE
    assert "Seccomp:\t2" in done.stdout and "NoNewPrivs:\t1" in done.stdout


@pytest.mark.parametrize("kind", ["plain", "overlay"])
def test_build_root_files_keep_real_owners_on_disk(
    kind: str, root: Path, overlay_root: Path, tmp_path: Path
) -> None:
    target = root if kind == "plain" else overlay_root
    script = """
    touch /made-by-root && mkdir -p /home/app && chown 1234:2345 /home/app
    echo extra >> /etc/passwd && rm /bin/cat
    ls -ln /bin/busybox | awk '{print $3":"$4}'
    """
    done = _sh(target, script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0:0"  # the image's root-owned files are root's inside
    disk = target if kind == "plain" else tmp_path / "build" / "upper"
    assert os.lstat(disk / "made-by-root").st_uid == 0 and os.lstat(disk / "made-by-root").st_gid == 0
    st = os.lstat(disk / "home" / "app")
    assert (st.st_uid, st.st_gid) == (1234, 2345)
    assert os.lstat(disk / "etc" / "passwd").st_uid == 0
    # the merged view (what capture reads) is back in place, with the same owners
    assert (target / "made-by-root").stat().st_uid == 0 and not (target / "bin" / "cat").exists()
    if kind == "overlay":
        assert mounts.mounted(target)
    assert not list(confine.STAGING.glob(f"{os.getpid()}-*"))


# -- escapes --------------------------------------------------------------------------------------------


def test_proc_1_root_leads_nowhere(root: Path, tmp_path: Path) -> None:
    canary = tmp_path / "host-canary"
    canary.write_text("HOST-CANARY-proc1")
    script = f"""
    for p in /proc/[0-9]*; do cat $p/root{canary} 2>/dev/null; done
    ls /proc/1/root/ >/dev/null 2>&1 || echo NO_PROC1_ROOT
    readlink /proc/1/exe
    """
    done = _sh(root, script)
    assert "HOST-CANARY" not in done.stdout
    # pid 1 is the sandbox's own init, not the host's
    assert "systemd" not in done.stdout and "/sbin/init" not in done.stdout


def test_device_nodes_in_the_build_root_do_not_open(root: Path) -> None:
    """A base image (or a File step) can carry device nodes; none opens inside the step (nodev)."""
    os.mknod(root / "evil-null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    disk = os.stat("/dev/vda" if os.path.exists("/dev/vda") else "/dev/loop0").st_rdev
    os.mknod(root / "evil-disk", 0o660 | stat.S_IFBLK, disk)
    script = """
    echo x > /evil-null && echo NULL_OPENED
    head -c 1 /evil-disk >/dev/null && echo DISK_OPENED
    mknod /new b 7 0 2>/dev/null && echo MKNOD_OK
    echo x > /dev/null && echo DEV_NULL_OK
    """
    done = _sh(root, script)
    assert "NULL_OPENED" not in done.stdout and "DISK_OPENED" not in done.stdout
    assert "MKNOD_OK" not in done.stdout
    assert "DEV_NULL_OK" in done.stdout  # the sandbox's own /dev still works


def test_setuid_binary_gains_nothing(root: Path, tmp_path: Path) -> None:
    """A setuid-root copy of a shell made by a step runs with no host privilege: its root is the step's
    unprivileged uid (and no_new_privs keeps a non-root user inside from using it at all)."""
    canary = tmp_path / "root-only"
    canary.write_text("ROOT-ONLY-canary")
    canary.chmod(0o600)
    script = """
    mkdir /suid && cp /bin/busybox /suid/cat && chmod 4755 /suid/cat
    su -s /bin/sh nobody -c '/suid/cat /proc/self/status' | grep '^Uid:'
    /suid/cat /proc/self/uid_map
    """
    done = _sh(root, script)
    assert done.returncode == 0, done.stderr
    out = done.stdout.split("\n")
    assert out[0].split()[1:3] == ["65534", "65534"]  # nobody stayed nobody: real and effective
    assert int(out[1].split()[1]) >= confine.UID_BASE
    st = os.stat(root / "suid" / "cat")
    assert st.st_mode & stat.S_ISUID and st.st_uid == 0  # it is an image file like sudo, owned by root


def test_symlink_swap_in_a_file_destination_stays_inside(root: Path, tmp_path: Path) -> None:
    """A step leaves a process swapping /etc/app between a folder and a link to a host folder; by the time
    the File step copies, every process of the step is gone (pid namespace), and the copy resolves in the
    root whatever the link says."""
    victim = tmp_path / "host-victim"
    victim.mkdir()
    script = f"""
    mkdir -p /etc/real
    (while true; do ln -sfn {victim} /etc/app; ln -sfn /etc/real /etc/app; done) >/dev/null 2>&1 &
    sleep 0.5
    """
    assert _sh(root, script).returncode == 0
    staged = tmp_path / "artifacts"
    staged.mkdir()
    uri = "https://example.invalid/evil.conf"
    (staged / customizers.staged_name(uri)).write_text("evil")
    for _ in range(20):
        customizers.run_file(
            FileCustomizer.model_construct(type="File", source_uri=uri, destination="/etc/app/evil.conf"),
            where="properties.customize[1]",
            root=root,
            artifacts=staged,
            log=RecLog(),
        )
    assert list(victim.iterdir()) == []
    assert not sandbox.find_processes("confine-test", [root])


# -- limits ---------------------------------------------------------------------------------------------


# A failed fork ends ash's subshell; the outer shell counts what lives with builtins (no fork needed).
BOMB = "(i=0; while [ $i -lt {n} ]; do sleep 20 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo procs=$#"


def test_fork_bomb_is_capped(root: Path) -> None:
    """500 processes asked for; the step's pids limit (64) lets at most that many live, and the step ends
    with all of them gone (counted with shell builtins: no fork needed to count)."""
    done = _sh(root, BOMB.format(n=500), timeout=60)
    procs = [int(ln.split("=")[1]) for ln in done.stdout.split("\n") if ln.startswith("procs=")]
    assert procs and procs[0] <= TIGHT.pids, done.stdout[-500:] + done.stderr[-500:]
    assert not sandbox.find_processes("confine-test", [root])


def test_memory_eater_is_stopped(root: Path) -> None:
    done = _sh(root, "dd if=/dev/zero of=/dev/null bs=600M count=1 2>&1; echo rc=$?")
    assert "rc=0" not in done.stdout, done.stdout


def test_ten_gigabyte_write_is_stopped(root: Path) -> None:
    """A 10 GB file (sparse: written at offset 10 GB-1 MB) and a 200 MB real write both stop at the
    step's file size limit (64 MB here); the disk gets at most the limit."""
    script = """
    dd if=/dev/zero of=/big bs=1M count=1 seek=10239 2>/dev/null; echo sparse=$?
    dd if=/dev/zero of=/real bs=1M count=200 2>/dev/null; echo real=$?
    """
    done = _sh(root, script)
    assert "sparse=0" not in done.stdout and "real=0" not in done.stdout, done.stdout
    assert not (root / "big").exists() or (root / "big").stat().st_size <= 64 * 1024 * 1024
    assert (root / "real").stat().st_size <= 64 * 1024 * 1024


TEN_GB = """
i=0; while [ $i -lt 10 ]; do i=$((i+1)); dd if=/dev/zero of=/gb$i bs=1M count=1 seek=1023 2>/dev/null || exit 3; done
echo WROTE_10_GB
"""


@pytest.mark.parametrize("kind", ["overlay", "plain"])
def test_ten_gigabytes_in_one_gigabyte_files_is_refused(kind: str, root: Path, overlay_root: Path) -> None:
    """Ten 1 GB files (sparse: each a 1 MB write at offset 1023 MB, so the test costs 10 MB of disk):
    each passes the per-file limit (2 GB), the total passes the step's disk limit (3 GB here), so the
    step is refused, naming the limit, the tag and the setting. With the disk limit lifted (and nothing
    else changed) the same step writes all ten: the test fails if the limit is removed."""
    target = overlay_root if kind == "overlay" else root
    lim = limits.StepLimits(memory_mb=256, pids=64, file_size_mb=2048, disk_mb=3072)
    with pytest.raises(limits.StepDiskLimitError) as info:
        _sh(target, TEN_GB, lim=lim)
    text = str(info.value)
    assert "3072 MB" in text and limits.DISK_TAG in text and limits.DISK_SETTING in text, text
    for f in target.glob("gb*"):
        f.unlink()
    lifted = _sh(
        target, TEN_GB, lim=limits.StepLimits(memory_mb=256, pids=64, file_size_mb=2048, disk_mb=1 << 24)
    )
    assert "WROTE_10_GB" in lifted.stdout and len(list(target.glob("gb*"))) == 10, lifted.stdout


def test_a_step_that_keeps_writing_is_stopped_while_it_runs(overlay_root: Path) -> None:
    """Real data, 16 MB every 0.2 s for 40 files (640 MB): past the 64 MB disk limit the watcher stops
    the step mid-way; the build root's writable layer keeps little more than the limit."""
    script = """
    i=0; while [ $i -lt 40 ]; do i=$((i+1)); dd if=/dev/zero of=/real$i bs=1M count=16 2>/dev/null; sleep 0.2; done
    echo WROTE_ALL
    """
    lim = limits.StepLimits(memory_mb=256, pids=64, file_size_mb=2048, disk_mb=64)
    with pytest.raises(limits.StepDiskLimitError) as info:
        _sh(overlay_root, script, lim=lim)
    upper = overlay_root.parent / "upper"
    assert info.value.written > 64 * 1024 * 1024
    assert limits.tree_bytes(upper) < 256 * 1024 * 1024
    assert len(list(upper.glob("real*"))) < 40


# -- seccomp --------------------------------------------------------------------------------------------


def test_seccomp_refuses_what_a_step_never_needs(root: Path) -> None:
    script = """
    unshare -U true 2>/dev/null && echo USERNS_OK
    unshare -n true 2>/dev/null && echo NETNS_OK
    mount -t tmpfs t /mnt 2>/dev/null && echo MOUNT_OK
    nc -h >/dev/null 2>&1; ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1 && echo PING_OK
    true
    """
    done = _sh(root, script)
    for word in ("USERNS_OK", "NETNS_OK", "MOUNT_OK", "PING_OK"):
        assert word not in done.stdout, done.stdout


def test_seccomp_program_refuses_the_listed_calls() -> None:
    prog = seccomp.program(network=False)
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096  # BPF_MAXINSNS
    for name in ("mount", "kexec_load", "init_module", "finit_module", "ptrace", "open_by_handle_at", "bpf"):
        nr = seccomp.DENIED[name]
        assert any(
            prog[i : i + 8][0] == 0x15 and int.from_bytes(prog[i + 4 : i + 8], "little") == nr
            for i in range(0, len(prog), 8)
        ), name
    assert len(seccomp.program(network=True)) < len(prog)  # raw sockets allowed only with network


# -- the tests can fail ---------------------------------------------------------------------------------


def test_each_attack_succeeds_without_confinement(root: Path) -> None:
    """The same attacks with the confinement off: they get through, so the tests above would fail."""
    os.mknod(root / "evil-null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    script = """
    cat /proc/self/uid_map
    echo x > /evil-null && echo NULL_OPENED
    dd if=/dev/zero of=/big bs=1M count=1 seek=10239 2>/dev/null; echo sparse=$?
    dd if=/dev/zero of=/dev/null bs=600M count=1 2>/dev/null; echo mem=$?
    unshare -U true 2>/dev/null && echo USERNS_OK
    """ + BOMB.format(n=100).replace("sleep 20", "sleep 5")
    done = _sh(root, script, lim=OFF)
    assert done.stdout.split("\n")[0].split()[:2] == ["0", "0"]  # root is host root
    assert "sparse=0" in done.stdout and "mem=0" in done.stdout
    # device nodes stay shut even here: bwrap's --bind is nodev (the confined view is nodev as well)
    assert "NULL_OPENED" not in done.stdout
    assert "USERNS_OK" in done.stdout
    procs = [int(ln.split("=")[1]) for ln in done.stdout.split("\n") if ln.startswith("procs=")]
    assert procs and procs[0] > 100
    (root / "big").unlink()
