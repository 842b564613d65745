"""The Linux customizers and in-sandbox validators: Shell (inline commands run as `#!/bin/sh -e`, or the
staged scriptUri run by its own shebang) in the sandbox, and File (the staged sourceUri copied on the
host side to an absolute destination resolved inside the root, never outside it, as the build user).
Also the up-front check that rejects Windows-only customizers and validators for Linux sources.

The build user, as on Image Builder's Linux build VM: Shell steps run as the non-root user `packer`
(created in the root on first use, uid >= 1000, home /home/packer; generalize removes it, as
`waagent -deprovision+user` does) with passwordless `sudo`. Sandbox steps run with no_new_privs, so no
setuid sudo can work there; the step's own root wrapper (`RUN_AS_BUILD_USER`) serves instead a broker on a
FIFO in the step's private /run, and the `sudo` first on the build user's PATH (`BUILD_USER_SUDO`, from the
inbox, never in the image) asks it to run the command as root with the caller's stdin, stdout, stderr,
working directory and exit code. So a script that writes /etc without sudo fails with "Permission denied",
as on Image Builder, and the same line with sudo works; the same holds on the Debian and BusyBox bases
(neither needs a sudo package). A Linux File step writes as the build user as well (Image Builder: "the
only path Image builder can write to is /tmp"): the copy is made on the host side, but only where the
user's permissions in the image allow, owned by it; elsewhere the step fails naming the destination and
the way out (download to /tmp, `sudo mv` in a Shell step). The template tag
`imagebuilder.local.buildUser = root` runs Shell steps as root and lets File write anywhere as root
instead (the behaviour before the build user; not something Image Builder offers).

Exceptions::

    ProviderError (providers.base)
    └── CustomizerError     a customizer or validator that cannot run here (.code, .field)
        (PathEscapeError from layout for a destination that would leave the root)
"""

from __future__ import annotations

import collections
import os
import shutil
import stat
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import limits, proc, sandbox
from imagebuilder.providers.local.artifacts import display_uri, staged_name
from imagebuilder.providers.local.layout import (
    PathEscapeError,
    check_template_path,
    is_within,
    resolve_in_root,
    safe_name,
)
from imagebuilder.template.models import (
    Customizer,
    FileCustomizer,
    FileValidator,
    ImageTemplate,
    ShellCustomizer,
    ShellValidator,
    Validator,
)

#: A customizer or an in-VM validator, as the template model reads it.
Step = Customizer | Validator
ShellStep = ShellCustomizer | ShellValidator
FileStep = FileCustomizer | FileValidator

WINDOWS_ONLY = {
    "powershell": "PowerShell",
    "windowsrestart": "WindowsRestart",
    "windowsupdate": "WindowsUpdate",
}
LINUX_CUSTOMIZERS = ("Shell", "File")
INLINE_SHEBANG = "#!/bin/sh -e"

BUILD_USER = "packer"
#: Template tag: `root` runs Shell steps as root instead of the build user (local only).
TAG_BUILD_USER = "imagebuilder.local.buildUser"
BUILD_USER_DIR = "user"  # inbox/user: the build user's sudo and the root wrapper (bound read-only)
BROKER_DIR = "/run/imagebuilder-sudo"  # in the step's private tmpfs /run

# Runs as root inside the sandbox: `run-as-build-user SCRIPT`. Creates the build user if the image has
# none, starts the sudo broker, runs SCRIPT as the user from its home, stops the broker, exits with
# SCRIPT's code. POSIX sh for BusyBox ash and Debian dash alike; util-linux setpriv where it can change
# uids (Debian), BusyBox su otherwise (root needs no password).
RUN_AS_BUILD_USER = r"""#!/bin/sh
# Build-user wrapper of the local image builder (providers/local/customizers.py): runs a step as the
# build user with a sudo that works under no_new_privs (a root broker on a FIFO).
exec 2>&1
U=__USER__
B=__BROKER__
IB=__INBOX__
uid=$(sed -n "s/^$U:[^:]*:\([0-9]*\):.*/\1/p" /etc/passwd)
if [ -z "$uid" ]; then
  uid=1000
  while grep -q "^[^:]*:[^:]*:$uid:" /etc/passwd /etc/group 2>/dev/null; do uid=$((uid + 1)); done
  echo "$U:x:$uid:$uid:Image Builder build user:/home/$U:/bin/sh" >> /etc/passwd || exit 125
  grep -q "^$U:" /etc/group 2>/dev/null || echo "$U:x:$uid:" >> /etc/group
  if [ -f /etc/shadow ] && ! grep -q "^$U:" /etc/shadow; then echo "$U:!:1::::::" >> /etc/shadow; fi
fi
gid=$(sed -n "s/^$U:[^:]*:[0-9]*:\([0-9]*\):.*/\1/p" /etc/passwd)
if [ ! -d "/home/$U" ]; then
  mkdir -p "/home/$U" && chown "$uid:$gid" "/home/$U" && chmod 0750 "/home/$U"
fi
[ -d /tmp ] || mkdir -m 1777 /tmp
mkdir -p "$B" && chown "0:$gid" "$B" && chmod 0770 "$B" || exit 125
rm -f "$B/ctl"
mkfifo -m 0620 "$B/ctl" && chown "0:$gid" "$B/ctl" || exit 125

serve() {
  d=$1
  case "$d" in "$B"/req.*) ;; *) return ;; esac
  [ -d "$d" ] && [ ! -h "$d" ] || return
  (
    SUDO_AS=
    cwd=$(cat "$d/cwd" 2>/dev/null)
    set --
    . "$d/cmd"
    cd "$cwd" 2>/dev/null || cd /
    [ $# -gt 0 ] || set -- /bin/sh
    if [ -n "$SUDO_AS" ] && [ "$SUDO_AS" != root ] && [ "$SUDO_AS" != "#0" ] && [ "$SUDO_AS" != 0 ]; then
      su -s /bin/sh "$SUDO_AS" -c "$(cat "$d/cmd"); exec \"\$@\"" <"$d/in" >"$d/out" 2>"$d/err"
    else
      env SUDO_USER="$U" SUDO_UID="$uid" SUDO_GID="$gid" HOME=/root USER=root LOGNAME=root "$@" \
        <"$d/in" >"$d/out" 2>"$d/err"
    fi
    echo $? > "$d/rc.part" && mv "$d/rc.part" "$d/rc"
  ) &
}

(
  exec 3<>"$B/ctl"
  while IFS= read -r req <&3; do serve "$req"; done
) &
broker=$!
cd "/home/$U" 2>/dev/null || cd /tmp
export HOME="/home/$U" USER="$U" LOGNAME="$U" PATH="$IB/__DIR__:$PATH" SUDO_BROKER="$B"
if setpriv --help 2>&1 | grep -q -- --reuid; then
  setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
else
  su -m -s /bin/sh "$U" -c 'exec "$0" "$@"' "$@"
fi
rc=$?
kill "$broker" 2>/dev/null
exit "$rc"
"""

# The build user's `sudo` (first on its PATH): sends the command to the step's root broker and relays
# stdin, stdout, stderr and the exit code. Passwordless, like the build VM's; sudo's options that ask
# for something (-u USER) are honoured, the others accepted and ignored (no password is ever asked).
BUILD_USER_SUDO = r"""#!/bin/sh
# sudo of the local image builder's build user: runs the command as root through the step's broker
# (no setuid binary can work under no_new_privs). See providers/local/customizers.py.
B=${SUDO_BROKER:-__BROKER__}
as=
while [ $# -gt 0 ]; do
  case "$1" in
    -u) as=$2; shift 2 ;;
    -u*) as=${1#-u}; shift ;;
    --user=*) as=${1#--user=}; shift ;;
    -g|-C|-D|-h|-p|-r|-t|-U|-T) shift 2 ;;
    -i|-s|--login|--shell) shift ;;
    -V|--version) echo "Sudo version 1.9 (local image builder broker)"; exit 0 ;;
    -l|-v|-k|-K) exit 0 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
if [ "$(id -u)" = 0 ] && [ -z "$as" ]; then
  [ $# -gt 0 ] || set -- /bin/sh
  exec env "$@"
fi
if [ ! -p "$B/ctl" ]; then
  echo "sudo: no build-user broker in this step ($B)" >&2
  exit 1
fi
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
d=$(mktemp -d "$B/req.XXXXXX") || exit 1
mkfifo "$d/in" "$d/out" "$d/err" || exit 1
pwd > "$d/cwd"
{
  printf 'SUDO_AS=%s\nset --' "$(q "$as")"
  for a in "$@"; do printf ' %s' "$(q "$a")"; done
  printf '\n'
} > "$d/cmd"
exec 4<&0
cat "$d/out" &
o=$!
cat "$d/err" >&2 &
e=$!
cat <&4 > "$d/in" &
i=$!
echo "$d" > "$B/ctl"
wait "$o"
wait "$e"
while [ ! -f "$d/rc" ]; do sleep 0.05 2>/dev/null || sleep 1; done
kill "$i" 2>/dev/null
rc=$(cat "$d/rc")
rm -rf "$d"
exit "$rc"
"""


#: A sudoers drop-in for the build user, for images whose own sudo a script calls by its path (in the
#: booted VM, where setuid works; the throwaway boot copy only).
BUILD_USER_SUDOERS = (
    f"# Image Builder build user (boot validation copy only)\n{BUILD_USER} ALL=(ALL) NOPASSWD:ALL\n"
)


def build_user_scripts(base: str) -> dict[str, str]:
    """The build user's wrapper (`run-as-build-user`) and `sudo`, for a folder `base` in the image whose
    `user/` subfolder holds them: {name: text}."""
    subst = {
        "__USER__": BUILD_USER,
        "__BROKER__": BROKER_DIR,
        "__INBOX__": base,
        "__DIR__": BUILD_USER_DIR,
    }
    out = {}
    for name, text in (("run-as-build-user", RUN_AS_BUILD_USER), ("sudo", BUILD_USER_SUDO)):
        for key, value in subst.items():
            text = text.replace(key, value)
        out[name] = text
    return out


def prepare_build_user(inbox: Path) -> PurePosixPath:
    """Write the build user's wrapper and sudo into the inbox (bound read-only at sandbox.INBOX); returns
    the wrapper's path inside the sandbox."""
    folder = inbox / BUILD_USER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in build_user_scripts(sandbox.INBOX).items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        path.chmod(0o755)
    folder.chmod(0o755)
    return PurePosixPath(sandbox.INBOX, BUILD_USER_DIR, "run-as-build-user")


class CustomizerError(ProviderError):
    """A customizer or validator that cannot run in the local provider."""

    def __init__(self, code: str, field: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.field = field


@dataclass
class Outcome:
    """What one customizer or validator did."""

    ok: bool
    exit_code: int | None = None
    code: str = ""
    message: str = ""
    tail: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0


class _TailLog:
    """Passes output on and keeps its last lines in arrival order (stdout and stderr interleaved as
    they came), without the command line itself."""

    def __init__(self, inner: LogSink, keep: int = 40) -> None:
        self._inner = inner
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)

    @property
    def uri(self) -> str:
        return self._inner.uri

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip() and not line.startswith("$ "):
                self._lines.append(line)
        self._inner.write(text)

    def tail(self, n: int = 20) -> list[str]:
        return list(self._lines)[-n:]


def items(template: ImageTemplate, kind: str) -> list[Step]:
    """properties.customize (kind 'customize') or properties.validate.inVMValidations ('validate')."""
    props = template.properties
    return list(props.customizers) if kind == "customize" else list(props.validators)


def field_of(kind: str, index: int) -> str:
    return (
        f"properties.customize[{index}]"
        if kind == "customize"
        else f"properties.validate.inVMValidations[{index}]"
    )


def step_name(kind: str, index: int, item: Step) -> str:
    """e.g. ``customize[2] (Shell: install nginx)``."""
    label = "customize" if kind == "customize" else "validate"
    name = (item.name or "").strip()
    return f"{label}[{index}] ({item.type}: {name})" if name else f"{label}[{index}] ({item.type})"


def check_supported(template: ImageTemplate, os_name: str = "Linux") -> None:
    """Reject, before anything is built, customizers and validators this Linux build cannot run. The
    template was parsed as stored (its PUT rules are not checked again), so the rules a step needs to
    run at all are checked here, naming the field."""
    for kind in ("customize", "validate"):
        for i, item in enumerate(items(template, kind)):
            where = field_of(kind, i)
            if item.type not in LINUX_CUSTOMIZERS:  # every other type of the schema is Windows-only
                raise CustomizerError(
                    "BadCustomizerType" if kind == "customize" else "BadValidatorType",
                    f"{where}.type",
                    f"{where}.type is {WINDOWS_ONLY.get(item.type.lower(), item.type)}, which runs only on "
                    f"Windows; the source image is {os_name}",
                    hint="use a Shell customizer (or File) for Linux images, or a Windows source on Azure",
                )
            shell = item if isinstance(item, ShellCustomizer | ShellValidator) else None
            if shell is not None and bool(shell.inline) == bool(shell.script_uri):
                raise CustomizerError(
                    "NoCustomizerScript" if kind == "customize" else "NoValidatorScript",
                    where,
                    f"{where} needs exactly one of inline or scriptUri",
                    hint="give a list of commands in inline, or the URI of a script in scriptUri",
                )
            if isinstance(item, FileCustomizer | FileValidator):
                if not item.source_uri:
                    raise CustomizerError(
                        "InvalidParameter",
                        f"{where}.sourceUri",
                        f"{where}.sourceUri is missing",
                        hint="give the URI of the file to upload",
                    )
                try:
                    check_template_path(item.destination or "", f"{where}.destination")
                except PathEscapeError as exc:
                    raise CustomizerError("InvalidDestination", f"{where}.destination", str(exc)) from exc


def run_shell(
    item: ShellStep,
    *,
    step_key: str,
    root: Path,
    inbox: Path,
    artifacts: Path,
    network: bool,
    run_marker: str,
    log: LogSink,
    timeout: float | None,
    as_root: bool = False,
    step_limits: limits.StepLimits | None = None,
) -> Outcome:
    """Run a Shell customizer/validator in the sandbox as the build user (as root with `as_root`); the log
    gets every output line as it comes. `step_limits`: the sandbox's (default: the app settings)."""
    sandbox.prepare_inbox(inbox)
    wrapper = prepare_build_user(inbox)
    steps = inbox / "steps"
    if item.inline:
        script = steps / f"{step_key}.sh"
        script.write_text(INLINE_SHEBANG + "\n" + "\n".join(item.inline) + "\n")
    else:
        uri = item.script_uri or ""
        staged = artifacts / staged_name(uri)
        if not staged.is_file():
            return Outcome(
                ok=False,
                code="ArtifactNotStaged",
                message=f"the script {display_uri(uri)} was not staged (prepare did not run for this run)",
            )
        script = steps / f"{step_key}-{safe_name(Path(urllib.parse.urlsplit(uri).path).name or 'script')}"
        shutil.copyfile(staged, script)
    script.chmod(0o755)
    inside = f"{sandbox.INBOX}/steps/{script.name}"
    # One pipe for both streams, so the log and the tail keep the order the lines were written in.
    command = ["/bin/sh", "-c", 'exec "$0" 2>&1', inside] if as_root else ["/bin/sh", str(wrapper), inside]
    recorder = _TailLog(log)
    start = time.monotonic()
    try:
        done = sandbox.run(
            root,
            command,
            network=network,
            inbox=inbox,
            run_marker=run_marker,
            log=recorder,
            timeout=timeout,
            step_limits=step_limits,
        )
    except limits.StepDiskLimitError as exc:
        return Outcome(
            ok=False,
            exit_code=exc.returncode,
            code="CustomizerDiskLimit",
            message=str(exc),
            tail=recorder.tail(),
            duration=time.monotonic() - start,
        )
    except proc.CommandTimeoutError as exc:
        return Outcome(
            ok=False,
            exit_code=exc.returncode,
            code="CustomizerTimeout",
            message=f"timed out after {timeout:.0f} s" if timeout else "timed out",
            tail=recorder.tail(),
            duration=time.monotonic() - start,
        )
    finally:
        script.unlink(missing_ok=True)
    duration = time.monotonic() - start
    if done.returncode != 0:
        return Outcome(
            ok=False,
            exit_code=done.returncode,
            code="CustomizerFailed",
            message=f"exited with code {done.returncode}",
            tail=recorder.tail(),
            duration=duration,
        )
    return Outcome(ok=True, exit_code=0, duration=duration)


def runs_as_root(tags: dict[str, str]) -> bool:
    """True when the template's tags (keys lower-cased) ask for steps as root (`TAG_BUILD_USER` = root)."""
    return tags.get(TAG_BUILD_USER.lower(), "").strip().lower() == "root"


@dataclass(frozen=True)
class BuildUser:
    """The build user as the image's /etc/passwd and /etc/group know it."""

    uid: int
    gid: int
    groups: frozenset[int]

    def may(self, st: os.stat_result, bits: int) -> bool:
        """Whether the mode bits of `st` grant this user all of `bits` (a mask of 4 read, 2 write, 1
        search), as the kernel decides for a non-root user without ACLs."""
        if st.st_uid == self.uid:
            granted = (st.st_mode >> 6) & 7
        elif st.st_gid in self.groups:
            granted = (st.st_mode >> 3) & 7
        else:
            granted = st.st_mode & 7
        return granted & bits == bits


def _read_image_file(root: Path, path: str) -> str:
    target = resolve_in_root(root, path, follow_final=True)
    if not is_within(target, root) or not target.is_file():
        return ""
    return target.read_text(errors="replace")


def find_build_user(root: Path) -> BuildUser | None:
    """The build user of the image at `root`, or None when its /etc/passwd has none yet."""
    for line in _read_image_file(root, "/etc/passwd").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == BUILD_USER and parts[2].isdigit() and parts[3].isdigit():
            uid, gid = int(parts[2]), int(parts[3])
            groups = {gid}
            for gline in _read_image_file(root, "/etc/group").splitlines():
                g = gline.split(":")
                if len(g) >= 4 and g[2].isdigit() and BUILD_USER in g[3].split(","):
                    groups.add(int(g[2]))
            return BuildUser(uid=uid, gid=gid, groups=frozenset(groups))
    return None


def ensure_build_user(
    root: Path, *, inbox: Path, network: bool, run_marker: str, log: LogSink, timeout: float | None
) -> BuildUser:
    """The build user of the image, created first (by the same wrapper Shell steps use, so there is one
    way to create it) when the image has none yet."""
    user = find_build_user(root)
    if user is not None:
        return user
    sandbox.prepare_inbox(inbox)
    wrapper = prepare_build_user(inbox)
    recorder = _TailLog(log)
    try:
        done = sandbox.run(
            root,
            ["/bin/sh", str(wrapper), "/bin/sh", "-c", ":"],
            network=network,
            inbox=inbox,
            run_marker=run_marker,
            log=recorder,
            timeout=timeout,
        )
        returncode = done.returncode
    except proc.CommandTimeoutError as exc:
        returncode = exc.returncode if exc.returncode is not None else -1
    user = find_build_user(root)
    if returncode != 0 or user is None:
        raise CustomizerError(
            "CustomizerFailed",
            "",
            f"cannot create the build user {BUILD_USER} in the image: {' '.join(recorder.tail(3))}",
        )
    return user


def _mkdirs_inside(root: Path, directory: str, user: BuildUser | None = None) -> Path:
    """mkdir -p of an absolute image path resolved inside the root. The resolved path has no symlinks in
    its existing part and nothing exists past its first missing component, so plain mkdir -p is safe.
    With `user`, every existing folder must be searchable by the build user, the folders are created
    as it would create them (owned by it, 0755) and only inside a folder it can write; a folder it
    cannot enter or write raises PermissionError naming that folder (inside the image)."""
    target = resolve_in_root(root, directory, follow_final=True)
    if not is_within(target, root):
        raise PathEscapeError(f"{directory} resolves outside the image root")
    if target.exists() and not target.is_dir():
        raise PathEscapeError(f"{directory} exists in the image and is not a directory")
    if user is None:
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        return target
    base = Path(os.path.realpath(root))
    current = base
    for part in target.relative_to(base).parts:
        inside = "/" + str(current.relative_to(base)) if current != base else "/"
        if not user.may(current.stat(), 1):
            raise PermissionError(f"cannot enter {inside}")
        nxt = current / part
        if not nxt.exists():
            if not user.may(current.stat(), 3):
                raise PermissionError(f"cannot create folders in {inside}")
            nxt.mkdir(mode=0o755)
            os.chown(nxt, user.uid, user.gid)
            os.chmod(nxt, 0o755)  # noqa: S103 - a folder the build user made, as mkdir would
        current = nxt
    return target


def run_file(
    item: FileStep,
    *,
    where: str,
    root: Path,
    artifacts: Path,
    log: LogSink,
    user: BuildUser | None = None,
) -> Outcome:
    """Copy the staged sourceUri to `destination` inside the root. With `user` (the build user, as on
    Image Builder), the copy is written as that user: only where it can write (in practice /tmp and its
    home), missing parent folders created as it would, a new file owned by it 0644, an existing file
    rewritten in place keeping its owner and mode. Without (`imagebuilder.local.buildUser = root`):
    anywhere in the image, as root:root 0644, missing parent folders root 0755."""
    start = time.monotonic()
    uri = item.source_uri or ""
    raw_dest = item.destination or ""
    try:
        dest = check_template_path(raw_dest, f"{where}.destination")
    except PathEscapeError as exc:
        return Outcome(ok=False, code="InvalidDestination", message=str(exc))
    staged = artifacts / staged_name(uri)
    if not staged.is_file():
        return Outcome(
            ok=False,
            code="ArtifactNotStaged",
            message=f"the file {display_uri(uri)} was not staged (prepare did not run)",
        )
    try:
        parent_inside, name = dest.rsplit("/", 1)
        parent = _mkdirs_inside(root, parent_inside or "/", user)
        target = resolve_in_root(root, f"{parent_inside}/{name}", follow_final=True)
        if target.is_dir():
            base = Path(urllib.parse.urlsplit(uri).path).name or "file"
            target = resolve_in_root(root, f"{dest}/{base}", follow_final=True)
        if not is_within(target.parent, root) or not is_within(parent, root):
            raise PathEscapeError(f"{where}.destination {raw_dest!r} resolves outside the image root")
        if target.exists() and not target.is_file():
            raise PathEscapeError(f"{where}.destination {raw_dest!r} exists in the image and is not a file")
        existed = target.exists()
        if user is not None:
            base_dir = os.path.realpath(root)
            if existed and not user.may(target.stat(), 2):
                raise PermissionError(f"cannot write the existing file /{target.relative_to(base_dir)}")
            if not existed and not user.may(target.parent.stat(), 3):
                folder = target.parent.relative_to(base_dir)
                raise PermissionError(f"cannot create files in /{'' if str(folder) == '.' else folder}")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PathEscapeError(f"{where}.destination {raw_dest!r} is not a regular file in the image")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as dst, staged.open("rb") as src:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            if user is None:
                os.fchmod(dst.fileno(), 0o644)
                os.fchown(dst.fileno(), 0, 0)
            elif not existed:
                os.fchmod(dst.fileno(), 0o644)
                os.fchown(dst.fileno(), user.uid, user.gid)
    except PathEscapeError as exc:
        return Outcome(ok=False, code="InvalidDestination", message=str(exc))
    except PermissionError as exc:
        moved = f"/tmp/{name}"  # noqa: S108 - the path we tell the user to use (AIB's rule)
        return Outcome(
            ok=False,
            code="InvalidDestination",
            message=(
                f"{where}.destination {raw_dest}: Permission denied for the build user {BUILD_USER} "
                f"({exc}). As on Image Builder, a Linux File customizer writes as the build user, which "
                f"can write only to /tmp (and its home); set destination to {moved} and move the file "
                f'with a Shell customizer using sudo, e.g. inline ["sudo mkdir -p {parent_inside or "/"}", '
                f'"sudo mv {moved} {dest}"] (or tag the template {TAG_BUILD_USER}=root to write as root, '
                "local only)"
            ),
        )
    except OSError as exc:
        return Outcome(
            ok=False, code="CustomizerFailed", message=f"cannot write {raw_dest} in the image: {exc.strerror}"
        )
    inside = "/" + str(target.relative_to(os.path.realpath(root)))
    size = target.stat().st_size
    log.write(f"copied {display_uri(uri)} to {inside} ({size} bytes)\n")
    return Outcome(ok=True, details={"destination": inside, "size": size}, duration=time.monotonic() - start)
