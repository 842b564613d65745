"""Base root trees: built once per recipe version, cached as tar.zst with a JSON manifest next to them.

`ensure_base(base, cache_dir, *, log=None) -> Path` returns ``<cache>/<kind>-<version>.tar.zst``, building
it on first use under a lock file (concurrent callers wait, then reuse it) and publishing it atomically
(tmp dir, then rename). `extracted_tree(tarball, cache_dir)` is that tarball unpacked once into
``<cache>/extracted/`` (the read-only lower layer of build roots); a Debian base just built is moved
there as it was built instead of being unpacked again (~10 s of a cold build). `extract_base(tarball,
dest)` unpacks one; `read_manifest(tarball)` returns what was recorded (packages and versions from
dpkg-query, the recipe, the mirror, sha256, build time).
A Debian version is ``0.<mirror date>.<n>`` (the mirror's state, see `mirrorstate`) or the recipe-only
``0.<RECIPE_DATE>.<n>`` when the mirror's state was never known; BusyBox's is always recipe-only.
Recipes: ``debian`` (mmdebstrap of bookworm from the host's Debian mirror, cloud kernel with a small
MODULES=list initramfs, systemd, cloud-init, ssh, sudo) and ``busybox`` (the host's static busybox).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import proc
from imagebuilder.providers.local.catalog import BaseImage, CatalogError, Kind
from imagebuilder.providers.local.fsutil import locked_file, sha256_file
from imagebuilder.providers.local.layout import safe_name, short_hash
from imagebuilder.providers.local.mounts import mounts_under

#: Bump the date when a recipe changes in a way its content hash does not capture.
RECIPE_DATE = "20261127"
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
BUILD_TIMEOUT = 1800

#: What a Debian cloud image carries, within reason (the cloud kernel boots under QEMU and on Azure).
DEBIAN_PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "cloud-guest-utils",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "curl",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "iputils-ping",
    "netbase",
    "procps",
    "less",
    "zstd",
)

#: Modules the initramfs carries (MODULES=list): QEMU virtio, Hyper-V/Azure, NVMe, ATA; root on ext4.
INITRAMFS_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "sd_mod",
    "ata_piix",
    "ahci",
    "nvme",
    "hv_vmbus",
    "hv_storvsc",
    "hv_netvsc",
    "ext4",
    "crc32c_generic",
)

_ESSENTIAL_HOOK = """#!/bin/sh
# Runs before the kernel is installed: a small MODULES=list initramfs builds in ~2 s instead of ~17 s.
set -eu
R="$1"
mkdir -p "$R/etc/initramfs-tools/conf.d" "$R/etc/initramfs-tools/hooks"
printf 'MODULES=list\\nCOMPRESS=zstd\\nRESUME=none\\n' > "$R/etc/initramfs-tools/conf.d/imagebuilder.conf"
cat > "$R/etc/initramfs-tools/hooks/imagebuilder-modules" <<'EOF'
#!/bin/sh
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
for m in @MODULES@; do manual_add_modules "$m"; done
EOF
chmod 0755 "$R/etc/initramfs-tools/hooks/imagebuilder-modules"
"""

_CUSTOMIZE_HOOK = """#!/bin/sh
# Leaves the tree like a marketplace image: no identity, no host leakage, keys made on first boot.
set -eu
R="$1"
rm -f "$R"/etc/ssh/ssh_host_*
mkdir -p "$R/etc/systemd/system/multi-user.target.wants" "$R/etc/systemd/system/ssh.service.wants"
cat > "$R/etc/systemd/system/ssh-hostkeys-firstboot.service" <<'EOF'
[Unit]
Description=Generate missing SSH host keys (first boot of a generalized image)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target ssh.service
EOF
ln -sf ../ssh-hostkeys-firstboot.service "$R/etc/systemd/system/multi-user.target.wants/"
ln -sf ../ssh-hostkeys-firstboot.service "$R/etc/systemd/system/ssh.service.wants/"
mkdir -p "$R/etc/network/interfaces.d"
printf 'source /etc/network/interfaces.d/*\\n\\nauto lo\\niface lo inet loopback\\n' \\
  > "$R/etc/network/interfaces"
echo localhost > "$R/etc/hostname"
printf '127.0.0.1 localhost\\n::1 localhost ip6-localhost ip6-loopback\\n' > "$R/etc/hosts"
rm -f "$R/etc/resolv.conf"; : > "$R/etc/resolv.conf"
: > "$R/etc/machine-id"
mkdir -p "$R/var/lib/dbus"; rm -f "$R/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$R/var/lib/dbus/machine-id"
rm -f "$R/var/lib/systemd/random-seed" "$R/var/lib/systemd/credential.secret"
[ -f "$R/etc/fstab" ] || echo '# written when the image is captured to a disk' > "$R/etc/fstab"
if [ -f "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap" ]; then
  sed -i '/^force-unsafe-io$/d' "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
fi
rm -f "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old
rm -f "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin
find "$R/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
find "$R/var/log" -type f -exec truncate -s 0 {} +
rm -rf "$R"/tmp/* "$R"/var/tmp/*
"""

_BUSYBOX_SUDO = """#!/bin/sh
# BusyBox base: sudo as a pass-through (everything already runs as root); accepts sudo's common options.
while [ $# -gt 0 ]; do
  case "$1" in
    -u|-g|-C|-D|-h|-p|-r|-t|-U) shift 2 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || exit 0
exec "$@"
"""

_BUSYBOX_FILES: dict[str, tuple[int, str]] = {
    "etc/passwd": (
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    "etc/group": (0o644, "root:x:0:\nsudo:x:27:\nnogroup:x:65534:\n"),
    "etc/shadow": (0o600, "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"),
    "etc/hostname": (0o644, "localhost\n"),
    "etc/hosts": (0o644, "127.0.0.1 localhost\n::1 localhost\n"),
    "etc/resolv.conf": (0o644, ""),
    "etc/machine-id": (0o444, ""),
    "etc/fstab": (0o644, "# written when the image is captured to a disk\n"),
    "etc/os-release": (
        0o644,
        'ID=busybox\nNAME="BusyBox"\nPRETTY_NAME="Image Builder local BusyBox base"\nVERSION_ID="1"\n',
    ),
    "etc/inittab": (
        0o644,
        "::sysinit:/etc/init.d/rcS\n::askfirst:-/bin/sh\n::ctrlaltdel:/sbin/reboot\n"
        "::shutdown:/bin/umount -a -r\n",
    ),
    "etc/init.d/rcS": (
        0o755,
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\n"
        "mount -t devtmpfs devtmpfs /dev 2>/dev/null\nhostname -F /etc/hostname\n",
    ),
    "usr/bin/sudo": (0o755, _BUSYBOX_SUDO),
}


@dataclass(frozen=True)
class Recipe:
    """What a base is made of. `version` (``0.<RECIPE_DATE>.<n>``) is derived from this content, so a
    different package list is a different version and a different cache entry."""

    kind: Kind
    suite: str = ""
    variant: str = ""
    packages: tuple[str, ...] = ()
    initramfs_modules: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()

    @property
    def content_hash(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def version(self) -> str:
        """The recipe-only version: BusyBox's always; Debian's when the mirror's state is unknown."""
        return f"0.{RECIPE_DATE}.{int(self.content_hash[:4], 16)}"

    @property
    def _mirror_build(self) -> int:
        return int(hashlib.sha256(f"{RECIPE_DATE}:{self.content_hash}".encode()).hexdigest()[:4], 16)

    def mirror_version(self, stamp: str) -> str:
        """The version of this recipe built from the mirror as of `stamp` (YYYYMMDDHHMM, UTC)."""
        return f"0.{stamp}.{self._mirror_build}"

    def owns(self, version: str) -> bool:
        """Whether `version` is one of this recipe's: its recipe-only version or a mirror-state one."""
        if version == self.version:
            return True
        parts = version.split(".")
        return (
            self.kind == "debian"
            and len(parts) == 3
            and parts[0] == "0"
            and len(parts[1]) == 12
            and parts[1].isdigit()
            and parts[2] == str(self._mirror_build)
        )


def recipe_for(kind: Kind) -> Recipe:
    """The current recipe of a base kind."""
    if kind == "debian":
        return Recipe(
            kind="debian",
            suite=DEBIAN_SUITE,
            variant="minbase",
            packages=DEBIAN_PACKAGES,
            initramfs_modules=INITRAMFS_MODULES,
            hooks=(_ESSENTIAL_HOOK, _CUSTOMIZE_HOOK),
        )
    if kind == "busybox":
        return Recipe(kind="busybox", hooks=tuple(f"{k}:{m:o}:{t}" for k, (m, t) in _BUSYBOX_FILES.items()))
    raise CatalogError(f"unknown base kind {kind!r}", hint="use 'debian' or 'busybox'")


@dataclass(frozen=True)
class BaseManifest:
    """Recorded next to each base tarball as ``<kind>-<version>.manifest.json``."""

    kind: str
    version: str
    recipe_hash: str
    tarball: str
    sha256: str
    size: int
    built_at: str
    build_seconds: float
    mirror: str = ""
    packages: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class BaseBuildError(ProviderError):
    """A base image could not be built (mirror unreachable, mmdebstrap failed, busybox missing)."""


def _paths(base_kind: str, version: str, cache_dir: Path) -> tuple[Path, Path, Path]:
    stem = f"{base_kind}-{version}"
    return cache_dir / f"{stem}.tar.zst", cache_dir / f"{stem}.manifest.json", cache_dir / f"{stem}.lock"


def tarball_path(base_kind: str, version: str, cache_dir: Path) -> Path:
    """Where the base `base_kind` `version` is (or would be) cached."""
    return _paths(base_kind, version, cache_dir)[0]


def read_manifest(tarball: Path) -> BaseManifest:
    """The manifest next to `tarball` (``x.tar.zst`` -> ``x.manifest.json``)."""
    path = tarball.with_name(tarball.name.removesuffix(".tar.zst") + ".manifest.json")
    data = json.loads(path.read_text())
    return BaseManifest(**data)


def _valid(tarball: Path, manifest: Path, recipe: Recipe) -> bool:
    if not (tarball.is_file() and manifest.is_file()):
        return False
    try:
        m = read_manifest(tarball)
    except (OSError, ValueError, TypeError):
        return False
    return (
        m.recipe_hash == recipe.content_hash
        and m.size == tarball.stat().st_size
        and m.sha256 == sha256_file(tarball)
    )


def ensure_base(base: BaseImage, cache_dir: Path, *, log: LogSink | None = None) -> Path:
    """The cached root tarball of `base`, built once per version (= recipe content).

    Concurrency-safe (an flock on ``<stem>.lock``: a second caller waits and reuses the result) and
    atomic (built in a tmp dir inside `cache_dir`, renamed into place, manifest last). A cached tarball
    whose size or sha256 no longer matches its manifest is rebuilt.
    """
    recipe = recipe_for(base.kind)
    if not recipe.owns(base.version):
        raise CatalogError(
            f"{base.urn}: version {base.version} is not one of the local recipe's ({recipe.version} or "
            f"0.<mirror date>.{recipe._mirror_build})",
            hint="resolve the source again (catalog.resolve) to get the current exact version",
        )
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball, manifest, lock = _paths(base.kind, base.version, cache_dir)
    if _valid(tarball, manifest, recipe):
        return tarball
    with locked_file(lock):
        if _valid(tarball, manifest, recipe):
            return tarball
        stem = tarball.name.removesuffix(".tar.zst")
        for stale in cache_dir.glob(f".{stem}.*"):
            # Left by a build that crashed; we hold the lock, so nobody else is using it.
            _safe_rmtree(stale)
        work = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=cache_dir))
        work.chmod(0o755)  # apt's _apt user downloads into the tree inside it
        try:
            if log is not None:
                log.write(f"building base {base.kind} {base.version} into {tarball}\n")
            start = time.monotonic()
            root = work / "root"
            if base.kind == "debian":
                mirror, packages, details = _build_debian(recipe, root, work, log)
                from imagebuilder.providers.local import mirrorstate

                state = mirrorstate.read_state(cache_dir)
                if state is not None and recipe.mirror_version(state.stamp) == base.version:
                    details["mirror_state"] = {"stamp": state.stamp, "dates": state.dates}
            else:
                mirror, packages, details = _build_busybox(root)
            tmp_tar = work / tarball.name
            proc.run(
                [
                    "tar",
                    "-C",
                    root,
                    "--numeric-owner",
                    # BusyBox: every entry owned by root, whoever built it (Debian keeps its owners).
                    *(["--owner=0", "--group=0"] if base.kind == "busybox" else []),
                    "--xattrs",
                    "--xattrs-include=*",
                    "--sort=name",
                    "-I",
                    "zstd -T0 -3",
                    "-cf",
                    tmp_tar,
                    ".",
                ],
                log=log,
                timeout=600,
            )
            m = BaseManifest(
                kind=base.kind,
                version=base.version,
                recipe_hash=recipe.content_hash,
                tarball=tarball.name,
                sha256=sha256_file(tmp_tar),
                size=tmp_tar.stat().st_size,
                built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                build_seconds=round(time.monotonic() - start, 2),
                mirror=mirror,
                packages=packages,
                details=details,
            )
            tmp_manifest = work / manifest.name
            tmp_manifest.write_text(json.dumps(asdict(m), indent=1, sort_keys=True) + "\n")
            os.replace(tmp_tar, tarball)
            os.replace(tmp_manifest, manifest)
            if base.kind == "debian":  # BusyBox's tarball rewrites owners; it unpacks in well under 1 s
                _seed_extracted(tarball, root, cache_dir)
            if log is not None:
                log.write(f"base {base.kind} {base.version} ready in {m.build_seconds} s ({m.size} bytes)\n")
        finally:
            _safe_rmtree(work)
    return tarball


def _safe_rmtree(path: Path) -> None:
    """rmtree that never descends into a mount (a bind-mounted /dev would lose the host's nodes)."""
    for point in sorted(mounts_under(path, resolve=True), key=len, reverse=True):
        proc.run(["umount", "--lazy", point], check=False, timeout=60)
    if mounts_under(path, resolve=True):
        raise BaseBuildError(f"{path} still has mounts; not deleting it", hint="unmount them and retry")
    shutil.rmtree(path, ignore_errors=True)


def _extracted_slot(tarball: Path, cache_dir: Path) -> tuple[Path, Path]:
    """(the folder holding `tarball`'s extracted tree, its lock file): keyed by the tarball's path, size
    and mtime, so a rebuilt tarball never reuses an older tree."""
    st = tarball.stat()
    key = f"{safe_name(tarball.name.removesuffix('.tar.zst'), limit=60)}-" + short_hash(
        str(tarball.resolve()), str(st.st_size), str(st.st_mtime_ns)
    )
    dest = Path(cache_dir) / "extracted" / key
    return dest, dest.parent / f".{key}.lock"


def extracted_tree(tarball: Path, cache_dir: Path) -> Path:
    """`tarball` extracted once into the cache: returns the folder whose `tree` is the root tree (the
    read-only lower layer of build roots). Concurrent callers (threads or processes) wait on a lock file
    and reuse the first one's result; a half-extracted folder (no `.complete`) is never used."""
    dest, lock = _extracted_slot(tarball, cache_dir)
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(lock):
        if (dest / ".complete").is_file():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            extract_base(tarball, tmp / "tree")
            (tmp / ".complete").write_text(str(tarball))
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _seed_extracted(tarball: Path, root: Path, cache_dir: Path) -> None:
    """Move the tree `tarball` was just made from into its extracted slot (same filesystem: a rename),
    so the first build does not unpack what it has just packed. The tree is what the tarball holds
    (tar kept owners, modes and xattrs as they are here). Skipped when the slot is already complete or
    the tree still has mounts."""
    dest, lock = _extracted_slot(tarball, cache_dir)
    if mounts_under(root, resolve=True):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(lock):
        if (dest / ".complete").is_file():
            return
        shutil.rmtree(dest, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            os.rename(root, tmp / "tree")
            (tmp / ".complete").write_text(str(tarball))
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def extract_base(tarball: Path, dest: Path) -> None:
    """Unpack a base tarball into `dest` (created if missing; must be empty), keeping owners, modes,
    xattrs. Raises `ValueError` if `dest` has content (never overlays a tree by accident)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extract_base: {dest} is not empty; extract into a new directory")
    proc.run(
        [
            "tar",
            "-C",
            dest,
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-I",
            "zstd",
            "-xpf",
            tarball,
        ],
        timeout=600,
    )


# --- debian ---------------------------------------------------------------------------------------


#: App setting: "<main mirror URL> [<security mirror URL>]" instead of the host's sources.
MIRROR_SETTING = "IMAGEBUILDER_LOCAL_DEBIAN_MIRROR"


def debian_mirrors(sources: Path = DEBIAN_SOURCES) -> tuple[str, str]:
    """(main mirror, security mirror): the IMAGEBUILDER_LOCAL_DEBIAN_MIRROR setting, else the host's
    deb822 sources, defaulting to deb.debian.org."""
    override = os.environ.get(MIRROR_SETTING, "").split()
    if override:
        main = override[0].rstrip("/")
        return main, (override[1].rstrip("/") if len(override) > 1 else f"{main}-security")
    main, security = DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
    try:
        text = sources.read_text()
    except OSError:
        return main, security
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith((" ", "#")):
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
        uris, suites = fields.get("uris", "").split(), fields.get("suites", "").split()
        if not uris or fields.get("types", "deb").split()[0] != "deb":
            continue
        if any(s.endswith("-security") for s in suites):
            security = uris[0].rstrip("/")
        elif DEBIAN_SUITE in suites:
            main = uris[0].rstrip("/")
    return main, security


def _parse_packages(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, _, version = line.partition("\t")
        if name and version:
            out[name] = version
    return out


def _build_debian(
    recipe: Recipe, root: Path, work: Path, log: LogSink | None
) -> tuple[str, dict[str, str], dict[str, Any]]:
    proc.require_tools("mmdebstrap", "tar", "zstd", "dpkg-query", "setpriv", "unshare")
    mirror, security = debian_mirrors()
    essential = work / "essential-hook.sh"
    essential.write_text(_ESSENTIAL_HOOK.replace("@MODULES@", " ".join(recipe.initramfs_modules)))
    customize = work / "customize-hook.sh"
    customize.write_text(_CUSTOMIZE_HOOK)
    for hook in (essential, customize):
        hook.chmod(0o755)
    suite = recipe.suite
    argv: list[str | Path] = [
        # mmdebstrap (root mode) bind-mounts /dev nodes and /sys into the tree: keep those mounts in a
        # private namespace that dies with it, and kill it if we die, so nothing outlives a crash.
        "setpriv",
        "--pdeathsig",
        "KILL",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "mmdebstrap",
        f"--variant={recipe.variant}",
        "--mode=root",
        "--format=directory",
        "--components=main",
        f"--include={','.join(recipe.packages)}",
        '--aptopt=Acquire::Retries "3"',
        '--aptopt=Acquire::Languages "none"',
        "--dpkgopt=force-unsafe-io",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        f"--essential-hook={essential}",
        f"--customize-hook={customize}",
        suite,
        root,
        f"deb {mirror} {suite} main",
        f"deb {mirror} {suite}-updates main",
        f"deb {security} {suite}-security main",
    ]
    try:
        proc.run(argv, log=log, timeout=BUILD_TIMEOUT, env={"TMPDIR": str(work)})
    except proc.CommandError as exc:
        raise BaseBuildError(
            f"building the Debian base with mmdebstrap failed (exit code {exc.returncode})\n{exc}",
            hint=f"see the mmdebstrap output in the log; check that the Debian mirror {mirror} is reachable",
        ) from exc
    listing = proc.run(
        ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f=${Package}\t${Version}\n"],
        timeout=60,
    )
    packages = _parse_packages(listing.stdout)
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels or not (root / "boot" / f"initrd.img-{kernels[-1]}").is_file():
        raise BaseBuildError(
            "the Debian base has no kernel or initramfs in /boot",
            hint="see the mmdebstrap output above (linux-image-cloud-amd64 install)",
        )
    initrd = root / "boot" / f"initrd.img-{kernels[-1]}"
    details = {
        "suite": suite,
        "security_mirror": security,
        "kernel": kernels[-1],
        "initrd_bytes": initrd.stat().st_size,
        "debian_version": (root / "etc/debian_version").read_text().strip(),
    }
    return mirror, packages, details


# --- busybox --------------------------------------------------------------------------------------


def _build_busybox(root: Path) -> tuple[str, dict[str, str], dict[str, Any]]:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise BaseBuildError(
            "the BusyBox base needs a static busybox on the host",
            hint="install busybox-static (scripts/setup.sh lists it)",
        )
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "proc", "sys", "dev", "root", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(0o1777)
    (root / "var/log").mkdir(parents=True, exist_ok=True)
    (root / "root").chmod(0o700)
    shutil.copy2(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    applets = proc.run([root / "bin/busybox", "--list-full"], timeout=30).stdout.split()
    for rel in applets:
        link = root / rel
        if link.exists() or link.is_symlink() or rel == "bin/busybox":
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        # Relative links, so they resolve inside a chroot/sandbox and on the disk alike.
        link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))
    for rel, (mode, text) in _BUSYBOX_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
        path.chmod(mode)
    version = proc.run([root / "bin/busybox"], check=False, timeout=30).stdout.splitlines()[0]
    details = {
        "busybox": version,
        "busybox_sha256": sha256_file(root / "bin/busybox"),
        "applets": len(applets),
        "entries": sum(1 for _ in root.rglob("*")),
    }
    return "", {"busybox": version.split()[1] if len(version.split()) > 1 else version}, details
