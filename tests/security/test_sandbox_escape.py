"""Attacks from inside the customizer sandbox, run for real as root: a step must not write the host's
filesystem, read the host's secrets (keys.json, /etc/shadow, /root), signal or trace host processes,
mount, mknod, or reach the host's loopback services (the runtime's HTTP, Azurite) over the network."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.providers.local import customizers, deprovision, sandbox
from imagebuilder.template.models import FileCustomizer
from local_runtime.azurite import Azurite
from tests.security.conftest import RecLog


def _sh(
    root: Path, script: str, *, network: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    done = sandbox.run(
        root,
        ["/bin/sh", "-c", script],
        network=network,
        inbox=None,
        run_marker="sec",
        log=RecLog(),
        timeout=timeout,
    )
    return subprocess.CompletedProcess(done.argv, done.returncode, done.stdout, done.stderr)


@pytest.fixture
def host_secret(tmp_path: Path) -> Iterator[Path]:
    """A keys.json-like secret in a host state dir, and a host folder a step would love to write to."""
    state = tmp_path / "state"
    state.mkdir()
    secret = state / "keys.json"
    secret.write_text('{"masterKey": "HOST-SECRET-canary-7f3a"}')
    secret.chmod(0o600)
    yield secret


def test_host_filesystem_is_not_writable_through_proc_sys_or_dev(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    script = f"""
    for p in /proc/1/root /proc/self/root /proc/$$/root /proc/1/cwd; do echo x > $p/ESCAPED_$(basename $p) ; done
    echo x > {outside}/ESCAPED_abs 2>/dev/null
    echo x > /proc/1/root{outside}/ESCAPED_proc 2>/dev/null
    echo 1 > /sys/kernel/mm/ksm/run 2>/dev/null && echo SYS_WRITABLE
    echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo PROCSYS_WRITABLE
    echo h > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ_WRITABLE
    echo 1 > /sys/fs/cgroup/cgroup.procs 2>/dev/null && echo CGROUP_WRITABLE
    mknod /tmp/disk b 8 0 2>/dev/null && echo MKNOD_OK
    mknod /tmp/mem c 1 1 2>/dev/null && echo MKNOD_OK
    mount -t tmpfs t /mnt 2>/dev/null && echo MOUNT_OK
    mount -t proc p /mnt 2>/dev/null && echo MOUNT_OK
    mount --bind / /mnt 2>/dev/null && echo MOUNT_OK
    ls /dev/sda /dev/vda /dev/mem /dev/kmsg /dev/loop0 2>/dev/null && echo HOST_DEVICES
    mkdir -p /tmp/jail && chroot /tmp/jail /bin/sh -c true 2>/dev/null
    chroot /proc/1/root /bin/sh -c "echo x > /ESCAPED_chroot"
    ls /proc | grep -c '^[0-9]'
    true
    """
    done = _sh(root, script)
    assert done.returncode == 0, done.stdout + done.stderr
    for word in (
        "SYS_WRITABLE",
        "PROCSYS_WRITABLE",
        "SYSRQ_WRITABLE",
        "CGROUP_WRITABLE",
        "MKNOD_OK",
        "MOUNT_OK",
    ):
        assert word not in done.stdout
    assert "HOST_DEVICES" not in done.stdout
    assert list(outside.iterdir()) == []
    # /proc/1/root is the sandbox's own root: what lands there stays in the build root.
    assert (root / "ESCAPED_root").exists() and (root / "ESCAPED_chroot").exists()
    for name in ("ESCAPED_root", "ESCAPED_chroot", "ESCAPED_cwd"):
        assert not Path("/", name).exists()
    assert int(done.stdout.strip().splitlines()[-1]) < 10  # only the sandbox's own processes are visible


def test_host_secrets_are_not_readable(root: Path, host_secret: Path) -> None:
    shadow = Path("/etc/shadow").read_text() if Path("/etc/shadow").exists() else ""
    script = f"""
    cat {host_secret} 2>/dev/null; cat /proc/1/root{host_secret} 2>/dev/null
    cat /etc/shadow 2>/dev/null; ls -a /root 2>/dev/null
    find / -xdev -name keys.json 2>/dev/null
    cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n'
    true
    """
    done = _sh(root, script)
    assert "HOST-SECRET-canary" not in done.stdout
    host_root_only = {p.name for p in Path("/root").iterdir()} - {p.name for p in (root / "root").iterdir()}
    for name in host_root_only:
        assert f"\n{name}\n" not in f"\n{done.stdout}\n", name
    shadow_hashes = [
        ln.split(":")[1] for ln in shadow.splitlines() if ln.count(":") > 2 and len(ln.split(":")[1]) > 3
    ]
    for h in shadow_hashes:
        assert h not in done.stdout


def test_host_processes_cannot_be_killed_or_traced(root: Path) -> None:
    victim = subprocess.Popen(["sleep", "300"])
    try:
        me = os.getpid()
        script = f"""
        kill -9 {victim.pid} {me} 2>/dev/null; kill -9 -1 2>/dev/null
        cat /proc/{victim.pid}/cmdline 2>/dev/null && echo SEES_HOST_PID
        ls /proc/{me}/root/ 2>/dev/null | grep -q . && echo SEES_HOST_ROOT
        grep CapEff /proc/self/status
        true
        """
        done = _sh(root, script)
        assert victim.poll() is None, "a host process was killed from the sandbox"
        assert "SEES_HOST_PID" not in done.stdout
        cap_eff = int(done.stdout.split("CapEff:")[1].split()[0], 16)
        for bit in (19, 21, 16, 17, 12, 27):  # SYS_PTRACE, SYS_ADMIN, SYS_MODULE, SYS_RAWIO, NET_ADMIN, MKNOD
            assert not cap_eff & (1 << bit), f"capability bit {bit} is effective in the sandbox"
    finally:
        victim.kill()
        victim.wait()


class _Listener:
    """A TCP server on the host's loopback that records every connection (stands for the runtime/Azurite)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _host_addresses() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    return [a for a in out if ":" not in a]


def test_network_on_cannot_reach_host_loopback_services(root: Path) -> None:
    listener = _Listener()
    try:
        socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()  # reachable from the host
        for _ in range(100):
            if listener.hits:
                break
            time.sleep(0.02)
        assert listener.hits == 1
        targets = ["127.0.0.1", "10.0.2.2", "localhost", *_host_addresses()]
        script = "; ".join(f"echo | nc -w 2 {t} {listener.port} && echo REACHED_{t}" for t in targets)
        done = _sh(root, script + "; cat /proc/net/route; ls /sys/class/net; true")
        assert "REACHED_" not in done.stdout, done.stdout
        time.sleep(0.3)
        assert listener.hits == 1
        # The step still has a network of its own with a default route out (slirp4netns), not only lo.
        assert "tap0" in done.stdout
        assert any(line.split()[1:2] == ["00000000"] for line in done.stdout.splitlines() if "tap0" in line)
    finally:
        listener.close()
    assert [
        n for n in os.listdir(sandbox.NETNS_DIR) if n.startswith(f"{sandbox.NETNS_PREFIX}{os.getpid()}-")
    ] == []


def test_network_off_has_only_loopback(root: Path) -> None:
    done = _sh(root, "ls /sys/class/net; cat /proc/net/dev | grep -c :", network=False)
    assert done.stdout.strip().endswith("1")


def test_host_side_steps_do_not_follow_symlinks_out_of_the_root(root: Path, tmp_path: Path) -> None:
    """A step plants symlinks to host folders; deprovision and a File customizer (both run on the host)
    must act inside the root, never on the host paths the links name."""
    victim = tmp_path / "host-victim"
    (victim / "ssh").mkdir(parents=True)
    (victim / "ssh" / "ssh_host_rsa_key").write_text("host key")
    (victim / "log").mkdir()
    (victim / "log" / "syslog").write_text("host log line")
    (victim / "machine-id").write_text("host-machine-id")
    script = f"""
    rm -rf /etc/ssh /var/log /var/lib/cloud /root/.ash_history /srv
    mkdir -p /var/lib /etc/app
    ln -s {victim}/ssh /etc/ssh; ln -s {victim}/log /var/log; ln -s {victim} /var/lib/cloud
    ln -sf {victim}/machine-id /etc/machine-id; ln -s {victim} /srv
    ln -s {victim}/log/syslog /root/.ash_history; ln -s {victim} /etc/app/conf.d
    ln -s ../../../../../../../{victim} /etc/rel
    """
    assert _sh(root, script, network=False).returncode == 0
    deprovision.deprovision(root)
    staged = tmp_path / "artifacts"
    staged.mkdir()
    uri = "https://example.invalid/evil.conf"
    (staged / customizers.staged_name(uri)).write_text("evil")
    for dest in ("/etc/app/conf.d/evil.conf", "/etc/rel/evil.conf", "/etc/machine-id", "/srv/x/evil.conf"):
        customizers.run_file(
            FileCustomizer.model_construct(type="File", source_uri=uri, destination=dest),
            where="properties.customize[0]",
            root=root,
            artifacts=staged,
            log=RecLog(),
        )
    assert (victim / "ssh" / "ssh_host_rsa_key").read_text() == "host key"
    assert (victim / "log" / "syslog").read_text() == "host log line"
    assert (victim / "machine-id").read_text() == "host-machine-id"
    assert sorted(p.name for p in victim.iterdir()) == ["log", "machine-id", "ssh"]
    assert not (victim / "x").exists() and not (victim / "evil.conf").exists()


def test_loopback_resolvers_are_replaced_by_slirp_dns(root: Path, tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 127.0.0.53\noptions edns0\n")
    with sandbox.step_resolv_conf(host) as resolv:
        assert resolv is not None and resolv.read_text() == f"nameserver {sandbox.SLIRP_DNS}\n"
        argv = sandbox.sandbox_argv(
            root,
            ["/bin/cat", "/etc/resolv.conf"],
            network=True,
            inbox=None,
            run_marker="m",
            resolv_conf=resolv,
        )
        assert argv[argv.index(str(resolv)) - 1] == "--ro-bind-try"
    host.write_text("nameserver 10.1.2.3\n")
    with sandbox.step_resolv_conf(host) as resolv:
        assert resolv is None  # the host's own resolver is reachable through slirp4netns' NAT


def test_a_step_cannot_reach_azurite_with_the_well_known_key_nor_read_its_data(
    root: Path, azurite: Azurite
) -> None:
    """Azurite's account key is public knowledge; only its reachability protects the app's storage."""
    with socket.create_connection(("127.0.0.1", azurite.blob_port), timeout=5):
        pass  # up and reachable from the host
    script = (
        f"for p in {azurite.blob_port} {azurite.table_port} {azurite.queue_port}; do "
        "for h in 127.0.0.1 10.0.2.2; do echo | nc -w 2 $h $p && echo REACHED_$h:$p; done; done; "
        f"ls -R {azurite.location} 2>/dev/null | head -3; ls /proc/1/root{azurite.location} 2>/dev/null | head -3; true"
    )
    done = _sh(root, script)
    assert "REACHED_" not in done.stdout, done.stdout
    assert done.stdout.strip() == ""


def test_step_namespaces_of_dead_processes_are_swept() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    name = f"{sandbox.NETNS_PREFIX}{gone.pid}-test{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in sandbox.sweep_networks()
        assert not (sandbox.NETNS_DIR / name).exists()
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
