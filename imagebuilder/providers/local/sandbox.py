"""The customizer sandbox: a command run as root inside a build root with bubblewrap (pivot_root, new
mount/pid/ipc/uts namespaces, optional new network namespace), a clean environment, a reduced capability
set (no CAP_SYS_ADMIN, CAP_MKNOD, CAP_SETFCAP, CAP_NET_ADMIN, CAP_SYS_MODULE, CAP_DAC_READ_SEARCH...),
fresh /proc, /dev, tmpfs /run, and the run's inbox bound read-only at /run/imagebuilder. Network is on
by default (like a build VM) but never the host's: each step gets its own network namespace wired to
the outside by slirp4netns with --disable-host-loopback (user-mode NAT), so the host's loopback services
(the runtime's HTTP, Azurite) are out of reach; with network off only `lo` exists.

Confinement (`confine.py`, `seccomp.py`, `limits.py`; on unless IMAGEBUILDER_SANDBOX_CONFINE=off): root
inside is a fresh unprivileged uid outside (user namespace, build root idmapped so files keep their real
owners on disk), a seccomp filter refuses mount/kexec/modules/ptrace/new namespaces (and raw sockets when
offline), and the step runs under rlimits (address space, processes of its uid, file size), a watcher of
what it writes to the build root in all (`limits.DiskWatch`) and, where the host allows, a cgroup
(memory, pids, cpu). The step's argv:
    [nsenter --net=NS] [sh -c JOIN cgroup.procs..] prlimit .. setpriv --reuid=B .. bwrap --userns FD ..

Exceptions: those of `proc.run` (CommandTimeoutError when the step's timeout expires; the whole
sandbox dies with it, since bwrap runs with --die-with-parent and its own pid namespace),
`limits.StepDiskLimitError` when the step wrote more than its disk limit (it is stopped),
`SandboxNetworkError` (a ProviderError) when the step's network cannot be set up, and
`confine.ConfinementError` when the kernel cannot confine the step.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import confine, limits, proc, seccomp

INBOX = "/run/imagebuilder"
NETNS_DIR = Path("/run/netns")  # where `ip netns add` pins named namespaces
NETNS_PREFIX = "imagebuilder-"
NETWORK_READY_SECONDS = 20.0
SLIRP_DNS = "10.0.2.3"
HOSTNAME = "localhost"  # resolvable from every image's /etc/hosts (sudo looks it up)
RUN_MARKER_ENV = "IMAGEBUILDER_SANDBOX_RUN"
DRAIN_SECONDS = 300.0  # a step's output still in flight to the log when it ends (fork bombs print a lot)
PATH = f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{INBOX}/bin"

# Docker's default set minus CAP_MKNOD and CAP_SETFCAP: enough for apt, dpkg, useradd, sudo, chroot.
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
)

SUDO_SHIM = r"""#!/bin/sh
# sudo shim of the local image builder sandbox (the image has no sudo): steps already run as root.
user=""
while [ $# -gt 0 ]; do
  case "$1" in
    -u|-g|-C|-D|-h|-p|-r|-t|-U|-T) [ "$1" = -u ] && user="$2"; shift 2 ;;
    --user=*) user="${1#--user=}"; shift ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ $# -eq 0 ] && exec /bin/sh
if [ -n "$user" ] && [ "$user" != root ] && [ "$user" != "#0" ]; then
  exec su -s /bin/sh "$user" -c 'exec "$0" "$@"' "$@"
fi
exec env "$@"
"""


class PrefixedLog:
    """A LogSink that prefixes every line with the step's name before passing it on."""

    def __init__(self, inner: LogSink, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix
        self.lines: list[str] = []

    @property
    def uri(self) -> str:
        return self._inner.uri

    def write(self, text: str) -> None:
        out = []
        for line in text.splitlines():
            self.lines.append(line)
            out.append(f"[{self._prefix}] {line}\n")
        if out:
            self._inner.write("".join(out))


def prepare_inbox(inbox: Path) -> None:
    """Create the inbox with the sudo shim (used only when the image has no sudo of its own: it comes
    last on PATH)."""
    (inbox / "bin").mkdir(parents=True, exist_ok=True)
    (inbox / "steps").mkdir(parents=True, exist_ok=True)
    shim = inbox / "bin" / "sudo"
    if not shim.exists() or shim.read_text() != SUDO_SHIM:
        shim.write_text(SUDO_SHIM)
    shim.chmod(0o755)


def sandbox_argv(
    root: Path,
    command: Sequence[str],
    *,
    network: bool,
    inbox: Path | None,
    run_marker: str,
    env: Mapping[str, str] | None = None,
    workdir: str = "/root",
    resolv_conf: Path | None = None,
    userns_fd: int | None = None,
    seccomp_fd: int | None = None,
    view: confine.Confined | None = None,
) -> list[str]:
    """The bwrap argv that runs `command` (an argv inside the image) with `root` as `/`; with network,
    `resolv_conf` (default: the host's /etc/resolv.conf) is bound at /etc/resolv.conf. Confined:
    `userns_fd` (the step's user namespace), `seccomp_fd` (the filter) and `view` (the staged paths bwrap
    binds from instead of `root`, `inbox` and `resolv_conf`)."""
    if view is not None:
        root, inbox, resolv_conf = view.root, view.inbox, view.resolv_conf
    argv = ["bwrap"]
    if userns_fd is not None:
        argv += ["--userns", str(userns_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += [
        "--bind", str(root), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--ro-bind-try", "/sys", "/sys",
        "--tmpfs", "/run",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", HOSTNAME,
        "--die-with-parent", "--new-session",
        "--cap-drop", "ALL",
    ]  # fmt: skip
    for cap in CAPABILITIES:
        argv += ["--cap-add", cap]
    if not network:
        argv += ["--unshare-net"]
    elif view is None or view.resolv_conf is not None:
        argv += ["--ro-bind-try", str(resolv_conf or "/etc/resolv.conf"), "/etc/resolv.conf"]
    if inbox is not None:
        argv += ["--ro-bind", str(inbox), INBOX]
    variables = {
        "PATH": PATH,
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "DEBIAN_FRONTEND": "noninteractive",
        RUN_MARKER_ENV: run_marker,
    }
    variables.update(env or {})
    argv.append("--clearenv")
    for key, value in variables.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", workdir if (Path(root) / workdir.lstrip("/")).is_dir() else "/"]
    argv += ["--", *command]
    return argv


class SandboxNetworkError(ProviderError):
    """The isolated network of a sandbox step could not be set up."""


def sweep_networks() -> list[str]:
    """Delete the step namespaces left by processes that died without cleaning up (kill -9); their
    names carry the pid that made them. Returns the names removed."""
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for name in os.listdir(NETNS_DIR):
            pid = name[len(NETNS_PREFIX) :].split("-", 1)[0]
            if not name.startswith(NETNS_PREFIX) or not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            if proc.run(["ip", "netns", "delete", name], timeout=30, check=False).returncode == 0:
                removed.append(name)
    return removed


def sweep_steps() -> list[str]:
    """Everything steps killed mid-way (kill -9 of the runtime) leave outside run folders: network
    namespaces, staged idmapped roots (a swapped-out overlay is put back) and step cgroups."""
    return [*sweep_networks(), *confine.sweep(), *limits.sweep_cgroups()]


@contextlib.contextmanager
def isolated_network() -> Iterator[Path]:
    """A fresh network namespace (yielded as its /run/netns path) with `lo` and a `tap0` that slirp4netns
    NATs to the outside world; connections to the host's loopback (10.0.2.2 / 127.0.0.1) are refused.
    The namespace and slirp4netns are removed on exit; slirp4netns also exits if this process dies."""
    proc.require_tools("ip", "slirp4netns")
    sweep_networks()
    name = f"{NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    path = NETNS_DIR / name
    proc.run(["ip", "netns", "add", name], timeout=30)
    helper: proc.Background | None = None
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()  # slirp4netns exits when exit_w closes (also when we are killed)
    try:
        helper = proc.spawn(
            [
                "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
                "--netns-type=path", str(path), "tap0",
            ],
            pass_fds=(ready_w, exit_r),
        )  # fmt: skip
        os.close(ready_w)
        ready_w = -1
        os.close(exit_r)
        exit_r = -1
        readable, _, _ = select.select([ready_r], [], [], NETWORK_READY_SECONDS)
        if not readable or os.read(ready_r, 1) != b"1":
            raise SandboxNetworkError(
                f"slirp4netns did not bring up the step's network: {helper.output().strip()[-500:]}",
                hint="check that slirp4netns works here, or set the tag imagebuilder.local.network=off",
            )
        yield path
    finally:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if helper is not None:
            helper.stop()
        proc.run(["ip", "netns", "delete", name], timeout=30, check=False)


def run(
    root: Path,
    command: Sequence[str],
    *,
    network: bool,
    inbox: Path | None,
    run_marker: str,
    log: LogSink,
    timeout: float | None,
    env: Mapping[str, str] | None = None,
    step_limits: limits.StepLimits | None = None,
) -> proc.Completed:
    """Run `command` in the sandbox; returns the completed command (check the returncode) or raises
    `proc.CommandTimeoutError`, or `limits.StepDiskLimitError` when the step wrote more than its disk
    limit to the build root (it is stopped). `step_limits` default to the app settings
    (`limits.StepLimits.from_env`)."""
    lim = step_limits or limits.StepLimits.from_env()
    layer = confine.upper_of(root) or root  # what the step writes lands here (see limits.DiskWatch)
    with step_argv(
        root, command, network=network, inbox=inbox, run_marker=run_marker, env=env, step_limits=lim
    ) as (argv, pass_fds):

        def stop() -> None:
            log.write(f"! the step wrote more than {lim.disk_mb} MB to the build root: stopping it\n")
            me = os.getpid()  # this step's processes only: another caller may use the same marker
            kill_processes([p for p in find_processes(run_marker, [root]) if _descends_from(p, me)])

        # No process outlives the step (pid namespace, cgroup): relay all of its output before returning,
        # however slow the log sink, so nothing is written into the run's folder after the step is over.
        with limits.DiskWatch(layer, lim.disk_mb, stop) as watch:
            done = proc.run(
                argv, log=log, timeout=timeout, check=False, pass_fds=pass_fds, drain_seconds=DRAIN_SECONDS
            )
        if watch.exceeded is not None:
            raise limits.StepDiskLimitError(watch.exceeded, lim.disk_mb, done.returncode, done.tail)
        return done


@contextlib.contextmanager
def step_argv(
    root: Path,
    command: Sequence[str],
    *,
    network: bool,
    inbox: Path | None,
    run_marker: str,
    env: Mapping[str, str] | None = None,
    step_limits: limits.StepLimits | None = None,
) -> Iterator[tuple[list[str], list[int]]]:
    """The whole argv of one sandboxed command and the fds it must inherit, valid inside the `with`
    (network namespace, cgroup, confined view and filter live until it exits). `run` runs it; `debug`
    runs it on the user's terminal (`aib shell`)."""
    proc.require_tools("bwrap", "prlimit", "setpriv")
    lim = step_limits or limits.StepLimits.from_env()
    with contextlib.ExitStack() as stack:
        netns = stack.enter_context(isolated_network()) if network else None
        resolv = stack.enter_context(step_resolv_conf()) if network else None
        group = stack.enter_context(limits.step_cgroup(lim))
        fds: list[int] = []
        stack.callback(_close_all, fds)
        extra: dict[str, object] = {}
        prefix = [*limits.join_argv(group), *lim.prlimit_argv()]
        if lim.confine:
            confined = stack.enter_context(
                confine.confined_root(root, inbox, (resolv or Path("/etc/resolv.conf")) if network else None)
            )
            filter_fd = seccomp.program_fd(network=network)
            fds.append(filter_fd)
            base = str(confined.base)
            prefix += ["setpriv", f"--reuid={base}", f"--regid={base}", "--clear-groups", "--"]
            extra = {"userns_fd": confined.userns_fd, "seccomp_fd": filter_fd, "view": confined}
        argv = sandbox_argv(
            root,
            command,
            network=network,
            inbox=inbox,
            run_marker=run_marker,
            env=env,
            resolv_conf=resolv,
            **extra,  # type: ignore[arg-type]
        )
        argv = [*prefix, *argv]
        if netns is not None:
            argv = ["nsenter", f"--net={netns}", "--", *argv]
        userns = extra.get("userns_fd")
        yield argv, [*fds, *([userns] if isinstance(userns, int) else [])]


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def step_resolv_conf(host_file: Path = Path("/etc/resolv.conf")) -> Iterator[Path | None]:
    """None when the host's resolv.conf works from the step's namespace; when it names only loopback
    resolvers (systemd-resolved's 127.0.0.53, a local dnsmasq), a temporary one naming slirp4netns'
    forwarder 10.0.2.3 instead (the host's loopback is out of the step's reach)."""
    try:
        text = host_file.read_text()
    except OSError:
        text = ""
    servers = [
        ln.split()[1] for ln in text.splitlines() if ln.startswith("nameserver") and len(ln.split()) > 1
    ]
    if servers and not all(sv.startswith("127.") or sv == "::1" for sv in servers):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="imagebuilder-resolv-") as tmp:
        path = Path(tmp) / "resolv.conf"
        path.write_text(f"nameserver {SLIRP_DNS}\n")
        path.chmod(0o644)
        yield path


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def find_processes(run_marker: str, paths: Sequence[Path]) -> list[int]:
    """Processes of one run: a sandbox (its argv names a run folder) or anything inside one (its
    environment carries the run marker, or its root is inside a run folder)."""
    marker = f"{RUN_MARKER_ENV}={run_marker}".encode()
    needles = [(str(p) + "/").encode() for p in paths] + [(str(p) + "\x00").encode() for p in paths]
    found: list[int] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        cmdline = _read(f"/proc/{pid}/cmdline")
        is_bwrap = cmdline.startswith(b"bwrap\x00") or b"/bwrap\x00" in cmdline[:64]
        if is_bwrap and any(n in cmdline for n in needles):
            found.append(pid)
            continue
        if marker in _read(f"/proc/{pid}/environ").split(b"\x00"):
            found.append(pid)
            continue
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if any(root == str(p) or root.startswith(str(p) + "/") for p in paths):
            found.append(pid)
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is a (grand)parent of `pid` (walking /proc's ppid chain)."""
    for _ in range(256):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def kill_processes(pids: Sequence[int]) -> list[int]:
    """SIGKILL each pid; returns those that were signalled."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return killed
