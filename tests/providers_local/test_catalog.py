"""The local catalog and base cache: URN resolution, errors that say what to do, cached, locked, atomic
base tarballs with manifests, and the bases themselves (BusyBox always, Debian marked slow)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from imagebuilder.providers.local import bases, catalog, fsutil, proc


class ListLog:
    uri = "mem://log"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


VERSION = re.compile(r"^0\.\d{8}\.\d+$")


@pytest.mark.parametrize(
    ("urn", "kind", "gen", "bootable"),
    [
        ("Debian:debian-12:12", "debian", "V1", True),
        ("Debian:debian-12:12-gen2", "debian", "V2", True),
        ("debian:Debian-12:12-GEN2", "debian", "V2", True),
        ("ImageBuilderLocal:busybox:stable", "busybox", "V1", False),
        ("ImageBuilderLocal:busybox:stable-gen2", "busybox", "V2", False),
    ],
)
def test_resolve_builtin_urns_latest_to_exact(urn: str, kind: str, gen: str, bootable: bool) -> None:
    base = catalog.resolve(*urn.split(":"), "latest")
    assert (base.kind, base.generation, base.bootable) == (kind, gen, bootable)
    assert VERSION.match(base.version)
    assert base.urn == f"{urn}:{base.version}"
    # The exact version resolves to the same base (what a recorded run asks for next time).
    assert catalog.resolve(*urn.split(":"), base.version) == base


def test_unknown_urn_names_available_ones_and_the_setting() -> None:
    with pytest.raises(catalog.CatalogError) as info:
        catalog.resolve("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", "latest")
    text = str(info.value)
    assert "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2" in text
    assert "Debian:debian-12:12-gen2" in text and "ImageBuilderLocal:busybox:stable" in text
    assert catalog.CATALOG_SETTING in text and "IMAGEBUILDER_LOCAL_CATALOG" in (info.value.hint or "")


def test_unknown_version_lists_the_available_one() -> None:
    exact = catalog.resolve("Debian", "debian-12", "12", "latest").version
    with pytest.raises(catalog.CatalogError, match=re.escape(exact)):
        catalog.resolve("Debian", "debian-12", "12", "0.20230101.1")


def test_extra_mapping_from_catalog_file(tmp_path: Path) -> None:
    f = tmp_path / "catalog.json"
    f.write_text(
        json.dumps(
            {
                "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2": "Debian:debian-12:12-gen2",
                "RedHat:RHEL:9-lvm": {"kind": "busybox", "generation": "V1"},
                "Contoso:tiny:gen2": "busybox",
            }
        )
    )
    extra = catalog.load_catalog_file(f)
    ubuntu = catalog.resolve(
        "canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", "latest", extra=extra
    )
    assert (ubuntu.kind, ubuntu.generation, ubuntu.bootable) == ("debian", "V2", True)
    assert ubuntu.urn.startswith("canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:0.")
    rhel = catalog.resolve("RedHat", "RHEL", "9-lvm", "latest", extra=extra)
    assert (rhel.kind, rhel.generation) == ("busybox", "V1")
    assert catalog.resolve("Contoso", "tiny", "gen2", "latest", extra=extra).generation == "V2"
    assert "RedHat:RHEL:9-lvm" in catalog.available_urns(extra)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json", "cannot read"),
        ("[1]", "JSON object"),
        ('{"A:b:c": "ubuntu"}', "not a base spec"),
        ('{"A:b:c": "Nope:x:y"}', "not a built-in URN"),
        ('{"A:b": "debian"}', "not a URN"),
        ('{"A:b:c": 3}', "string or an object"),
    ],
)
def test_bad_catalog_file_is_a_clear_error(tmp_path: Path, content: str, fragment: str) -> None:
    f = tmp_path / "catalog.json"
    f.write_text(content)
    with pytest.raises(catalog.CatalogError, match=fragment) as info:
        catalog.load_catalog_file(f)
    assert catalog.CATALOG_SETTING in str(info.value)


def test_version_is_derived_from_recipe_content() -> None:
    recipe = bases.recipe_for("debian")
    assert recipe.version == catalog.resolve("Debian", "debian-12", "12", "latest").version
    more = dataclasses.replace(recipe, packages=(*recipe.packages, "nginx"))
    assert more.version != recipe.version and more.content_hash != recipe.content_hash
    assert VERSION.match(more.version)


def test_busybox_base_is_built_once_locked_and_atomic(tmp_path: Path) -> None:
    base = catalog.resolve("ImageBuilderLocal", "busybox", "stable", "latest")
    cache = tmp_path / "cache"
    logs = [ListLog() for _ in range(4)]
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda lg=lg: results.append(bases.ensure_base(base, cache, log=lg)))
        for lg in logs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    tarball = results[0]
    assert tarball == cache / f"busybox-{base.version}.tar.zst"
    # Exactly one caller built it; the others waited on the lock and reused it.
    assert sum(any("building base" in line for line in lg.lines) for lg in logs) == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [tarball.name, f"busybox-{base.version}.manifest.json", f"busybox-{base.version}.lock"]
    )
    m = catalog.base_manifest(tarball)
    assert m.version == base.version and m.size == tarball.stat().st_size
    assert m.sha256 == fsutil.sha256_file(tarball)
    assert m.details["applets"] > 200
    # Warm: no rebuild.
    mtime = tarball.stat().st_mtime_ns
    log = ListLog()
    assert bases.ensure_base(base, cache, log=log) == tarball
    assert tarball.stat().st_mtime_ns == mtime and log.lines == []
    # A corrupted cache entry is detected (sha256) and rebuilt.
    with tarball.open("r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    assert bases.ensure_base(base, cache, log=log) == tarball
    assert any("building base" in line for line in log.lines)
    assert catalog.base_manifest(tarball).sha256 == fsutil.sha256_file(tarball)


def test_ensure_base_refuses_a_version_the_recipe_does_not_make(tmp_path: Path) -> None:
    base = dataclasses.replace(
        catalog.resolve("ImageBuilderLocal", "busybox", "stable", "latest"), version="0.1.2"
    )
    with pytest.raises(catalog.CatalogError, match="resolve the source again"):
        bases.ensure_base(base, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_busybox_tree_works_in_a_chroot(busybox_rootfs: Path) -> None:
    root = busybox_rootfs
    assert os.readlink(root / "bin/sh") == "busybox"
    assert os.readlink(root / "usr/bin/env") == "../../bin/busybox"
    shadow = (root / "etc/shadow").stat()
    assert (shadow.st_mode & 0o777, shadow.st_uid, shadow.st_gid) == (0o600, 0, 0)
    assert (root / "tmp").stat().st_mode & 0o1777 == 0o1777
    assert (root / "etc/machine-id").read_text() == ""
    out = proc.run(["chroot", root, "/bin/sh", "-c", "sudo -n -u root id -u; cat /etc/os-release"])
    assert out.stdout.startswith("0\n") and "ID=busybox" in out.stdout


def test_extract_base_refuses_non_empty_destination(busybox_tarball: Path, scratch: Path) -> None:
    (scratch / "dest").mkdir()
    (scratch / "dest" / "keep").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        bases.extract_base(busybox_tarball, scratch / "dest")
    assert [p.name for p in (scratch / "dest").iterdir()] == ["keep"]


def test_debian_mirrors_read_from_deb822(tmp_path: Path) -> None:
    f = tmp_path / "debian.sources"
    f.write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
    )
    assert bases.debian_mirrors(f) == ("http://mirror.example/debian", "http://sec.example/debian-security")
    assert bases.debian_mirrors(tmp_path / "missing") == (bases.DEFAULT_MIRROR, bases.DEFAULT_SECURITY_MIRROR)


@pytest.mark.slow
def test_debian_base_is_a_cloud_image_with_a_manifest(debian_tarball: Path) -> None:
    m = catalog.base_manifest(debian_tarball)
    for pkg in (
        "linux-image-cloud-amd64",
        "systemd-sysv",
        "cloud-init",
        "openssh-server",
        "sudo",
        "ca-certificates",
    ):
        assert m.packages.get(pkg), f"{pkg} missing from the manifest"
    assert m.details["kernel"].endswith("-cloud-amd64")
    assert m.details["debian_version"].startswith("12.")
    # The MODULES=list initramfs is small (the default one is ~36 MB).
    assert m.details["initrd_bytes"] < 15_000_000
    listing = subprocess.run(
        ["tar", "-I", "zstd", "-tvf", debian_tarball], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[5] for line in listing.splitlines()}
    assert "./etc/machine-id" in names and not any(n.startswith("./etc/ssh/ssh_host_") for n in names)
    machine_id = next(line for line in listing.splitlines() if line.endswith(" ./etc/machine-id"))
    assert machine_id.split()[2] == "0"  # empty: systemd makes a new one on first boot
    assert "./etc/systemd/system/ssh-hostkeys-firstboot.service" in names
    assert not any(n.startswith("./var/cache/apt/archives/") and n.endswith(".deb") for n in names)


def _tar_entries(tarball: Path) -> dict[str, tuple[str, int, int, int, int, str, int]]:
    """name -> (type, mode, uid, gid, size, link target, xattr count) of every member of a tar.zst."""
    import tarfile

    unzstd = subprocess.Popen(["zstd", "-dc", str(tarball)], stdout=subprocess.PIPE)
    assert unzstd.stdout is not None
    out = {}
    with tarfile.open(fileobj=unzstd.stdout, mode="r|") as tar:
        for m in tar:
            name = m.name.removeprefix("./").rstrip("/") or "."
            kind = "d" if m.isdir() else "l" if m.issym() else "f" if m.isreg() or m.islnk() else "o"
            xattrs = sum(1 for k in m.pax_headers if k.startswith("SCHILY.xattr."))
            # a hard link's member has no data: its size is its first name's
            size = out[m.linkname.removeprefix("./")][4] if m.islnk() else m.size if m.isreg() else 0
            out[name] = (kind, m.mode & 0o7777, m.uid, m.gid, size, m.linkname if m.issym() else "", xattrs)
    assert unzstd.wait() == 0
    return out


def _tree_entries(tree: Path) -> dict[str, tuple[str, int, int, int, int, str, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [".", *dirnames, *filenames] if Path(dirpath) == tree else [*dirnames, *filenames]:
            path = Path(dirpath) / name if name != "." else tree
            st = path.lstat()
            rel = "." if path == tree else str(path.relative_to(tree))
            kind = "l" if path.is_symlink() else "d" if path.is_dir() else "f" if path.is_file() else "o"
            size = st.st_size if kind == "f" else 0
            target = os.readlink(path) if kind == "l" else ""
            xattrs = 0 if kind == "l" else len(os.listxattr(path, follow_symlinks=False))
            out[rel] = (kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, size, target, xattrs)
    return out


def test_the_extracted_debian_tree_is_what_its_tarball_holds(debian_tarball: Path, image_cache: Path) -> None:
    """The read-only lower layer of every Debian build root: unpacked from the tarball, or (right after
    the base is built) the very tree the tarball was packed from, moved into place. Either way, entry for
    entry the same types, modes, owners, sizes, link targets and extended attributes."""
    tree = bases.extracted_tree(debian_tarball, image_cache) / "tree"
    packed, unpacked = _tar_entries(debian_tarball), _tree_entries(tree)
    assert len(packed) > 5000
    assert set(packed) == set(unpacked), sorted(set(packed) ^ set(unpacked))[:20]
    differ = {k: (packed[k], unpacked[k]) for k in packed if packed[k] != unpacked[k]}
    assert not differ, list(differ.items())[:10]
