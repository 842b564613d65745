"""The image's inventory on Azure (the SBOM's input), read on the build VM before generalize: a read-only
run command (`scripts.inventory_linux`: dpkg-query and the DEP-5 copyright files' License fields;
`scripts.inventory_windows`: the Uninstall registry keys and Get-HotFix) whose output goes to its append
blob like every run command's; at capture the whole blob is read back and parsed into the same
`provenance.sbom.Inventory` the local provider reads from its tree, plus, for Debian, the freshness
record for Debian and Ubuntu (`provenance.mirror.check_freshness` against the distribution's security
suite, the same check a Schedule trigger repeats later).

Never fails a build: a VM without a package database, a failed command or output that cannot be read
leaves the run without an SBOM and says why in the log. Without the app's storage account (no append
blobs) Run Command keeps only the last 4 KB of output, too little for an inventory: none is taken.
"""

from __future__ import annotations

from typing import Any

from imagebuilder.provenance.mirror import check_freshness
from imagebuilder.provenance.sbom import InstalledPackage, Inventory
from imagebuilder.providers.azure import runcommand, scripts
from imagebuilder.providers.azure.context import Ctx, NotYet
from imagebuilder.providers.azure.handles import BuildHandle
from imagebuilder.providers.base import ProviderError

KEY = "inventory"  # the run command is ib-inventory
TIMEOUT = 900


class InventoryError(ValueError):
    """The inventory output is not complete (cut short, or no end marker)."""


def _os_release(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, eq, value = line.partition("=")
        if eq and key.strip():
            out[key.strip()] = value.strip().strip("\"'")
    return out


def parse(output: str) -> Inventory | None:
    """The inventory printed by `scripts.inventory_linux` / `inventory_windows`; None when the image has
    no package database it knows."""
    lines = output.replace("\r\n", "\n").split("\n")
    try:
        start = lines.index(scripts.INVENTORY_BEGIN)
    except ValueError:
        raise InventoryError("the inventory output has no start marker") from None
    if scripts.INVENTORY_END not in lines[start:]:
        raise InventoryError("the inventory output was cut short (no end marker)")
    end = lines.index(scripts.INVENTORY_END, start)
    os_lines: list[str] = []
    rows: list[list[str]] = []
    licenses: dict[str, list[str]] = {}
    kind = "dpkg"
    for line in lines[start + 1 : end]:
        tag, _, rest = line.partition("\t")
        if tag == "O":
            os_lines.append(rest)
        elif tag == "P":
            rows.append(rest.split("\t"))
        elif tag == "L":
            name, _, lic = rest.partition("\t")
            seen = licenses.setdefault(name, [])
            if lic.strip() and lic.strip() not in seen:
                seen.append(lic.strip())
        elif tag in ("W", "H"):
            kind = "windows"
            rows.append([tag, *rest.split("\t")])
    rel = _os_release(os_lines)
    common: dict[str, Any] = {
        "os_id": rel.get("ID", ""),
        "os_version_id": rel.get("VERSION_ID", ""),
        "os_codename": rel.get("VERSION_CODENAME", ""),
        "os_name": rel.get("PRETTY_NAME", ""),
    }
    packages = _windows(rows) if kind == "windows" else _dpkg(rows, licenses)
    if not packages:
        return None
    return Inventory(kind=kind, packages=packages, **common)


def _dpkg(rows: list[list[str]], licenses: dict[str, list[str]]) -> list[InstalledPackage]:
    out = []
    for row in rows:
        name, version, arch, source, maintainer, homepage, status = (row + [""] * 7)[:7]
        if status.split()[-1:] != ["installed"] or not name:
            continue
        src_name, _, src_version = source.partition(" ")
        out.append(
            InstalledPackage(
                name=name,
                version=version,
                arch=arch,
                source_name=src_name,
                source_version=src_version.strip("() "),
                maintainer=maintainer,
                homepage=homepage,
                licenses=licenses.get(name, []),
            )
        )
    return sorted(out, key=lambda p: (p.name, p.arch))


def _windows(rows: list[list[str]]) -> list[InstalledPackage]:
    out: dict[tuple[str, str, str], InstalledPackage] = {}
    for row in rows:
        if row[0] == "W":
            name, version, arch, publisher, url = (row[1:] + [""] * 5)[:5]
            pkg = InstalledPackage(name=name, version=version, arch=arch, maintainer=publisher, homepage=url)
        else:
            hotfix = row[1] if len(row) > 1 else ""
            pkg = InstalledPackage(name=hotfix, version="", maintainer="Microsoft Corporation")
        if pkg.name:
            out.setdefault((pkg.name, pkg.version, pkg.arch), pkg)
    return sorted(out.values(), key=lambda p: (p.name, p.arch, p.version))


def collect(ctx: Ctx, env: BuildHandle) -> NotYet | None:
    """Run the inventory command (before generalize); None once it ended, whatever its result."""
    if not ctx.settings.inventory or ctx.state.get("inventoried"):
        return None
    if runcommand.run_logs(ctx) is None:
        ctx.log.write(
            "[sbom] no inventory: Run Command keeps only 4 KB of output without the app's storage "
            "account (AzureWebJobsStorage__accountName)\n"
        )
        ctx.state["inventoried"] = True
        return None
    linux = env.os_type == "Linux"
    script = scripts.inventory_linux() if linux else scripts.inventory_windows()
    ran = runcommand.run(ctx, env, KEY, script, timeout=TIMEOUT, quiet=True)
    if isinstance(ran, NotYet):
        return ran
    code, _, error = ran
    ctx.state["inventoried"] = True
    if code != 0:
        ctx.log.write(
            f"[sbom] the inventory command exited with {code}; the run gets no SBOM: {error[-300:]}\n"
        )
    else:
        ctx.log.write("[sbom] inventory read from the build VM\n")
    return None


def describe(ctx: Ctx) -> dict[str, Any]:
    """What capture adds to the captured image: `inventory` (the capture activity moves it to the run's
    store) and `freshness` (Debian, Ubuntu), from the inventory command's output blob."""
    store = runcommand.run_logs(ctx)
    if store is None or not ctx.settings.inventory:
        return {}
    blob = store.streams(ctx.names.key, f"ib-{KEY}").output
    try:
        text, _ = store.read(blob, 0)
        inv = parse(text)
    except (ProviderError, InventoryError, ValueError) as exc:
        ctx.log.write(f"[sbom] cannot read the image's inventory: {exc}\n")
        return {}
    if inv is None:
        ctx.log.write("[sbom] no inventory: the image has no dpkg database (or Windows program list)\n")
        return {}
    ctx.log.write(f"[sbom] inventory: {len(inv.packages)} package(s) ({inv.os_name or 'unknown OS'})\n")
    out: dict[str, Any] = {"inventory": inv.model_dump(mode="json")}
    mirror = {"debian": ctx.settings.security_mirror, "ubuntu": ctx.settings.ubuntu_security_mirror}.get(
        inv.os_id, ""
    )
    fresh = check_freshness(inv, security_mirror=mirror) if mirror else None
    if fresh is not None:
        ctx.log.write(
            f"[sbom] freshness: {fresh['suite']} at {mirror}: "
            + (
                f"cannot be read: {fresh['error']}"
                if "error" in fresh
                else f"{fresh['securityUpdatesPending']} package(s) with a newer version"
            )
            + "\n"
        )
        out["freshness"] = fresh
    return out
