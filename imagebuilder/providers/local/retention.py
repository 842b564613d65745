"""Retention in the local gallery: applies `provenance.retention` policies to every image definition under
`<state>/gallery`, removing whole versions (every region's copy) under the definition's lock, or, with
`dry_run`, only listing what it would remove. Errors are reported, not raised (the sweeper goes on).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagebuilder.provenance.retention import (
    PolicyError,
    RemovedVersion,
    RetentionPolicy,
    RetentionReport,
    VersionInfo,
    plan_removals,
    policy_from,
)
from imagebuilder.providers.local.fsutil import locked_file
from imagebuilder.providers.local.gallery import parse_version
from imagebuilder.providers.local.layout import StateLayout


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def definitions(state_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(folder, definition.json) of every image definition of the local gallery."""
    root = StateLayout(state_dir).gallery
    if not root.is_dir():
        return
    for path in sorted(root.glob("*/*/*/*/definition.json")):
        definition = _json(path)
        if definition.get("id"):
            yield path.parent, definition


def _published(folder: Path, meta: Mapping[str, Any]) -> datetime | None:
    text = meta.get("publishedDate")
    if isinstance(text, str) and text:
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    try:
        return datetime.fromtimestamp((folder / "version.json").stat().st_mtime, UTC)
    except OSError:
        return None


def _versions(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False) and parse_version(entry.name):
            meta = _json(Path(entry.path) / "version.json")
            if meta:
                out[entry.name] = meta
    return out


def apply_retention(
    state_dir: Path,
    policies: Mapping[str, tuple[RetentionPolicy, str]],
    protected: Mapping[str, set[str]],
    *,
    now: datetime,
    dry_run: bool = False,
) -> RetentionReport:
    """Apply retention to every local image definition.

    `policies` maps an image definition id (lower case) to (policy, where it was set); definitions not in
    it use their own `retention` object, if any. `protected` maps a definition id (lower case) to
    versions a template names as its source. A version still being created is never touched.
    """
    report = RetentionReport(dry_run=dry_run)
    for folder, definition in definitions(state_dir):
        image_id = str(definition["id"])
        policy, origin = policies.get(image_id.lower(), (RetentionPolicy(), ""))
        if policy.empty and isinstance(definition.get("retention"), dict):
            try:
                policy = policy_from(
                    definition["retention"], keep_key="keepLast", age_key="maxAgeDays", where="retention."
                )
            except PolicyError as exc:
                report.errors.append(f"{image_id}: definition.json {exc}")
                continue
            origin = f"{image_id} (definition retention)"
        if policy.empty:
            continue
        try:
            with locked_file(folder / ".lock"):
                versions = _versions(folder)
                busy = {
                    v
                    for v, m in versions.items()
                    if m.get("provisioningState") not in ("Succeeded", "Failed")
                }
                infos = [
                    VersionInfo(
                        name=v,
                        published=_published(folder / v, m),
                        exclude_from_latest=bool(m.get("excludeFromLatest")),
                        ready=any(r.get("state") == "Succeeded" for r in (m.get("regions") or {}).values()),
                    )
                    for v, m in versions.items()
                ]
                keep = busy | protected.get(image_id.lower(), set())
                for removal in plan_removals(infos, policy, now=now, protected=keep):
                    version_id = f"{image_id.rstrip('/')}/versions/{removal.version}"
                    if not dry_run:
                        target = folder / removal.version
                        trash = folder / f".removing-{removal.version}"
                        os.replace(target, trash)  # one rename: readers see the version or nothing
                        shutil.rmtree(trash, ignore_errors=True)
                    report.removed.append(
                        RemovedVersion(version_id, image_id, removal.version, removal.reason, origin)
                    )
        except OSError as exc:
            report.errors.append(f"{image_id}: {exc}")
    return report
