"""The local provider's inventory reader: dpkg database and DEP-5 licenses of a tree, the files and the
BusyBox version of a tree without one, and symlinks that point out of the tree read nothing of the host."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imagebuilder.provenance.sbom import ImageRef, spdx_document
from imagebuilder.providers.local.sbom import read_inventory

STATUS = """Package: nginx
Status: install ok installed
Priority: optional
Architecture: amd64
Source: nginx (1.22.1-9+deb12u1)
Version: 1.22.1-9+deb12u1
Maintainer: Debian Nginx Maintainers <pkg-nginx-maintainers@alioth-lists.debian.net>
Description: small, powerful, scalable web/proxy server
 Nginx ("engine X") is a high-performance web and reverse proxy server.
Homepage: https://nginx.org

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u9
"""

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nginx

Files: *
Copyright: 2002-2021 Igor Sysoev
License: BSD-2-clause

Files: debian/*
Copyright: 2007 Jose Parrella
License: GPL-2+
 This program is free software

License: BSD-2-clause
 Redistribution and use in source and binary forms ...
"""


def _debian_tree(root: Path) -> None:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
    )
    (root / "etc").mkdir()
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    (root / "usr/share/doc/nginx").mkdir(parents=True)
    (root / "usr/share/doc/nginx/copyright").write_text(COPYRIGHT)
    (root / "usr/share/doc/libc6").mkdir(parents=True)
    (root / "usr/share/doc/libc6/copyright").write_text("This is not machine-readable.\nGPL\n")


def test_dpkg_inventory(tmp_path: Path) -> None:
    _debian_tree(tmp_path)
    inv = read_inventory(tmp_path)
    assert inv.kind == "dpkg" and (inv.os_id, inv.os_version_id, inv.os_codename) == (
        "debian",
        "12",
        "bookworm",
    )
    assert [p.name for p in inv.packages] == ["libc6", "nginx"]
    nginx = inv.package("nginx")
    assert nginx is not None
    assert (nginx.version, nginx.arch, nginx.source_name, nginx.source_version) == (
        "1.22.1-9+deb12u1",
        "amd64",
        "nginx",
        "1.22.1-9+deb12u1",
    )
    assert nginx.licenses == ["BSD-2-clause", "GPL-2+"]
    assert inv.package("libc6").licenses == []  # type: ignore[union-attr]
    doc = spdx_document(
        inv, image=ImageRef(template_name="t", run_id="r", output_name="o"), source=None, artifacts=[],
        created=datetime.now(UTC),
    )  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(doc))
    assert validate_full_spdx_document(parse_file(str(tmp_path / "d.json"))) == []


def test_symlinks_out_of_the_tree_read_the_tree_not_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _debian_tree(root)
    host = tmp_path / "host-secret"
    host.write_text("Package: host-secret\nStatus: install ok installed\nVersion: 1\n")
    (root / "var/lib/dpkg/status").unlink()
    os.symlink(str(host), root / "var/lib/dpkg/status")  # absolute: resolves inside the tree
    (root / "usr/share/doc/nginx/copyright").unlink()
    os.symlink("../../../../../host-secret", root / "usr/share/doc/nginx/copyright")
    inv = read_inventory(root)
    assert all(p.name != "host-secret" for p in inv.packages)
    assert "host-secret" not in inv.model_dump_json().replace(str(tmp_path), "")


def test_busybox_tree_lists_files_and_the_busybox_version(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_bytes(
        b"\x7fELF....BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary"
    )
    os.symlink("busybox", tmp_path / "bin/sh")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("box\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/ignored").write_text("x")
    inv = read_inventory(tmp_path)
    assert inv.kind == "files"
    assert [f.path for f in inv.files] == ["bin/busybox", "etc/hostname"]
    assert [(c.name, c.version) for c in inv.components] == [("busybox", "1.35.0")]
    assert inv.os_name == "BusyBox 1.35.0"
