"""Freshness of a Debian image (pure): which installed packages have a newer version in the mirror's
security suite (`bookworm-security`), by Debian's version ordering (dpkg's `verrevcmp`: epochs, `~` sorts
before everything, letters before other characters).

The caller fetches the security suite's `Packages` index; `parse_packages` reads it and `pending_updates`
compares it with an `Inventory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagebuilder.provenance.sbom import Inventory


def _order(ch: str) -> int:
    if ch == "~":
        return -1
    if ch.isdigit():
        return 0
    if ch.isalpha():
        return ord(ch)
    return ord(ch) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return (int(epoch) if epoch.isdigit() else 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as Debian version `a` sorts before, equal to, or after `b`."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def parse_packages(text: str) -> dict[tuple[str, str], str]:
    """(package, architecture) -> highest version in a Debian `Packages` index."""
    out: dict[tuple[str, str], str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            field, _, value = line.partition(":")
            fields[field.strip().lower()] = value.strip()
        package, version = fields.get("package"), fields.get("version")
        if not package or not version:
            continue
        key = (package, fields.get("architecture", ""))
        if key not in out or compare_versions(version, out[key]) > 0:
            out[key] = version
    return out


@dataclass(frozen=True)
class PendingUpdate:
    name: str
    installed: str
    available: str
    arch: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "installed": self.installed,
            "available": self.available,
            "arch": self.arch,
        }


def pending_updates(inv: Inventory, security_index: Mapping[tuple[str, str], str]) -> list[PendingUpdate]:
    """Installed packages whose security-suite version is newer (arch `all` matches any)."""
    by_name: dict[str, list[tuple[str, str]]] = {}
    for (name, arch), version in security_index.items():
        by_name.setdefault(name, []).append((arch, version))
    out = []
    for pkg in inv.packages:
        best = None
        for arch, version in by_name.get(pkg.name, []):
            if arch not in (pkg.arch, "all", "") and pkg.arch not in ("", "all"):
                continue
            if best is None or compare_versions(version, best) > 0:
                best = version
        if best is not None and compare_versions(best, pkg.version) > 0:
            out.append(PendingUpdate(pkg.name, pkg.version, best, pkg.arch))
    return sorted(out, key=lambda u: u.name)


def freshness_record(
    updates: list[PendingUpdate], *, suite: str, mirror: str, checked_at: str
) -> dict[str, Any]:
    """What a run record (details.freshness) and the run's events carry."""
    return {
        "securityUpdatesPending": len(updates),
        "packages": [u.to_json() for u in updates[:500]],
        "suite": suite,
        "mirror": mirror,
        "checkedAt": checked_at,
    }
