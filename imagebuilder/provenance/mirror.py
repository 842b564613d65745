"""Reading a Debian mirror's security suite (network I/O): the `Packages` index a freshness check compares
an image's inventory with, at build time (capture) and again when a Schedule trigger with
`onlyWhenSecurityUpdatesPending` is due.
"""

from __future__ import annotations

import lzma
import urllib.request
from datetime import UTC, datetime
from typing import Any

from imagebuilder.provenance.freshness import freshness_record, parse_packages, pending_updates
from imagebuilder.provenance.sbom import Inventory

DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
UBUNTU_SECURITY_MIRROR = "http://security.ubuntu.com/ubuntu"  # the same layout: dists/<codename>-security
CHECKED_OS = ("debian", "ubuntu")  # dpkg distributions whose security suite the check knows
_TIMEOUT = 20.0
_MAX_BYTES = 64 << 20


def fetch_security_index(mirror: str, codename: str, arch: str) -> str:
    """The security suite's Packages index for `arch` (component main), as text."""
    url = f"{mirror.rstrip('/')}/dists/{codename}-security/main/binary-{arch}/Packages.xz"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the security mirror {mirror!r} is not an http(s) URL")
    with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp:  # noqa: S310 - scheme checked above
        return lzma.decompress(resp.read(_MAX_BYTES)).decode("utf-8", "replace")


def check_freshness(
    inv: Inventory, *, security_mirror: str = DEFAULT_SECURITY_MIRROR
) -> dict[str, Any] | None:
    """Pending security updates of a Debian or Ubuntu inventory now (None for other images; the mirror
    must be the distribution's: Debian's `debian-security`, Ubuntu's `security.ubuntu.com/ubuntu`). An
    unreachable mirror gives a record with `error` and no count."""
    if inv.kind != "dpkg" or inv.os_id not in CHECKED_OS or not inv.os_codename:
        return None
    arches = sorted({p.arch for p in inv.packages if p.arch and p.arch != "all"}) or ["amd64"]
    suite = f"{inv.os_codename}-security"
    checked = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    index: dict[tuple[str, str], str] = {}
    try:
        for arch in arches:
            index.update(parse_packages(fetch_security_index(security_mirror, inv.os_codename, arch)))
    except (OSError, ValueError, lzma.LZMAError) as exc:
        return {"suite": suite, "mirror": security_mirror, "checkedAt": checked, "error": str(exc)[:300]}
    updates = pending_updates(inv, index)
    return freshness_record(updates, suite=suite, mirror=security_mirror, checked_at=checked)
