"""The captured disk's SHA-256 on Azure (the provenance subject's digest): the generalized OS disk read
through a read-only export SAS (`disks.begin_grant_access`), exactly the fixed VHD a VHD distribution
copies and `az disk grant-access` downloads (data, then the 512-byte footer).

Only the pages that hold data are downloaded (Get Page Ranges); the never-written rest is zeros by
definition and is hashed without being read, so a 30 GiB disk holding 3 GiB moves 3 GiB over the network
and hashes 30 GiB locally (22-66 s here, idle to busy; benchmarks/azure_disk_digest.py). The hash runs
within one call (a SHA-256 state cannot be carried across durable polls), after the managed image exists,
and the SAS is revoked right after (awaited: an open SAS blocks other uses of the disk).
The SAS is a secret: used here only, never logged and never put into a Pending.
"""

from __future__ import annotations

import hashlib
from typing import Any

from imagebuilder.providers.azure.clients import ArmFailure
from imagebuilder.providers.azure.context import Ctx, NotYet, await_op, disk_read_sas

CHUNK = 32 << 20  # bytes per ranged read (each also costs the SDK one Get Page Ranges of its own)
_ZEROS = bytes(1 << 20)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _zeros(sha: Any, count: int) -> None:
    while count > 0:
        step = min(count, len(_ZEROS))
        sha.update(_ZEROS[:step] if step < len(_ZEROS) else _ZEROS)
        count -= step


def hash_page_blob(ctx: Ctx, sas_url: str) -> tuple[str, int, int]:
    """(sha256, size, bytes downloaded) of a page blob read through `sas_url`."""
    blob = ctx.arm.sas_blob(sas_url)
    props = ctx.arm.call("read the exported disk", blob.get_blob_properties)
    size = int(props.size or 0)
    listed = ctx.arm.call("list the exported disk's pages", lambda: list(blob.list_page_ranges()))
    ranges = _merged([(int(r.start), int(r.end)) for r in listed if not getattr(r, "cleared", False)])
    sha, at, moved = hashlib.sha256(), 0, 0
    for start, end in ranges:
        if start >= size:
            break
        end = min(end, size - 1)
        _zeros(sha, start - at)
        offset = start
        while offset <= end:
            length = min(CHUNK, end + 1 - offset)
            data = _read(ctx, blob, offset, length)
            if len(data) != length:
                raise ArmFailure("DiskReadShort", f"the disk export answered {len(data)} of {length} bytes")
            sha.update(data)
            moved += length
            offset += length
        at = end + 1
    _zeros(sha, size - at)
    return sha.hexdigest(), size, moved


def _read(ctx: Ctx, blob: Any, offset: int, length: int) -> bytes:
    return bytes(
        ctx.arm.call(
            "read the exported disk", lambda: blob.download_blob(offset=offset, length=length).readall()
        )
    )


def disk_digest(ctx: Ctx, resource_group: str, disk: str) -> dict[str, Any] | NotYet:
    """{"sha256", "size", "subject"} of the generalized OS disk, hashed once per run (kept in the step
    state until the phase returns)."""
    done = ctx.state.get("digest")
    if isinstance(done, dict):
        return done
    disks = ctx.arm.compute.disks
    sas = disk_read_sas(ctx, resource_group, disk, f"reading {disk} to compute its SHA-256")
    if isinstance(sas, NotYet):
        return sas

    def revoke() -> Any:
        return ctx.arm.start(
            f"revoke access to {disk}", lambda p: disks.begin_revoke_access(resource_group, disk, polling=p)
        )

    try:
        sha256, size, moved = hash_page_blob(ctx, str(sas))
    except Exception:
        revoke()  # best effort: the failure that got here is the one to report
        raise
    ctx.log.write(f"{disk}: SHA-256 {sha256} ({size} bytes as a fixed VHD, {moved} bytes of data read)\n")
    digest = {"sha256": sha256, "size": size, "subject": "osDiskVhd"}
    ctx.state["digest"] = digest
    # waited for: a gallery version made from a Trusted Launch VM reads this disk, which an open SAS blocks
    waiting = await_op(revoke(), f"revoke access to {disk}")
    if isinstance(waiting, NotYet):
        return waiting
    return digest
