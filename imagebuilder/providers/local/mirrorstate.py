"""The Debian mirror's state, which `latest` of the local Debian base follows: the newest ``Date:`` of the
InRelease files of the suites the base installs from (bookworm, bookworm-updates, bookworm-security),
checked at most once per refresh window (app setting ``IMAGEBUILDER_LOCAL_BASE_REFRESH_HOURS``, default
24; ``never`` pins `latest` to the newest cached base) and remembered in ``<cache>/debian-mirror-state.json``.

`latest_debian_version(recipe, cache_dir, *, refresh_hours, log)` is what the catalog calls: within the
window it reuses the recorded state (two runs share the base); after it, one small ranged GET per suite
(5 s timeout each); an unreachable mirror falls back to the newest cached base with a warning in the log,
never failing the run. `parse_refresh_hours(text)` reads the setting. The BusyBox base has no mirror.

Exceptions: `ProviderError` for a bad setting value (names the setting and what to write).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuilder.providers.base import LogSink, ProviderError

if TYPE_CHECKING:
    from imagebuilder.providers.local.bases import Recipe

REFRESH_SETTING = "IMAGEBUILDER_LOCAL_BASE_REFRESH_HOURS"
DEFAULT_REFRESH_HOURS = 24.0
STATE_FILE = "debian-mirror-state.json"
TIMEOUT = 5.0
_READ_LIMIT = 8192  # the Date is in the first lines of InRelease (the whole file is ~150 kB)


def parse_refresh_hours(text: str | None) -> float | None:
    """The setting's value in hours; None for ``never`` (pinned: `latest` stays on the newest cached base)."""
    raw = (text or "").strip().lower()
    if not raw:
        return DEFAULT_REFRESH_HOURS
    if raw in ("never", "pinned", "pin"):
        return None
    try:
        hours = float(raw)
    except ValueError:
        hours = -1.0
    if not hours >= 0:
        raise ProviderError(
            f"{REFRESH_SETTING}={text!r} is not a number of hours",
            hint=f"write e.g. {REFRESH_SETTING}=24 (0 checks the mirror on every run), or 'never' to pin",
        )
    return hours


@dataclass(frozen=True)
class MirrorState:
    """What one check saw: `dates` per InRelease URL, `stamp` (YYYYMMDDHHMM of the newest, UTC)."""

    mirrors: tuple[str, ...]
    dates: dict[str, str]
    stamp: str
    checked_at: float


def inrelease_urls(mirror: str, security: str, suite: str) -> list[str]:
    return [
        f"{mirror}/dists/{suite}/InRelease",
        f"{mirror}/dists/{suite}-updates/InRelease",
        f"{security}/dists/{suite}-security/InRelease",
    ]


_DATE = re.compile(r"^Date:\s*(.+)$", re.MULTILINE)


def fetch_date(url: str, *, timeout: float = TIMEOUT) -> str:
    """The ``Date:`` field of one InRelease/Release file (a ranged GET, at most 8 KiB read)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url}: only http(s) mirrors are checked")
    req = urllib.request.Request(url, headers={"Range": f"bytes=0-{_READ_LIMIT - 1}"})  # noqa: S310
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (checked: http(s) only)
        head = resp.read(_READ_LIMIT).decode("utf-8", "replace")
    match = _DATE.search(head)
    if not match:
        raise ValueError(f"{url} has no Date: field in its first {_READ_LIMIT} bytes")
    return match.group(1).strip()


def check(mirror: str, security: str, suite: str, *, timeout: float = TIMEOUT) -> MirrorState:
    """Probe the mirror now (raises OSError/ValueError when it is unreachable or answers nonsense)."""
    dates = {url: fetch_date(url, timeout=timeout) for url in inrelease_urls(mirror, security, suite)}
    newest = max(parsedate_to_datetime(d) for d in dates.values())
    return MirrorState(
        mirrors=(mirror, security),
        dates=dates,
        stamp=newest.strftime("%Y%m%d%H%M"),
        checked_at=time.time(),
    )


def read_state(cache_dir: Path) -> MirrorState | None:
    try:
        data = json.loads((cache_dir / STATE_FILE).read_text())
        return MirrorState(
            mirrors=tuple(data["mirrors"]),
            dates=dict(data["dates"]),
            stamp=str(data["stamp"]),
            checked_at=float(data["checked_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_state(cache_dir: Path, state: MirrorState) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=cache_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "mirrors": list(state.mirrors),
                "dates": state.dates,
                "stamp": state.stamp,
                "checked_at": state.checked_at,
            },
            f,
            indent=1,
            sort_keys=True,
        )
    os.replace(tmp, cache_dir / STATE_FILE)


def newest_cached(recipe: Recipe, cache_dir: Path) -> str | None:
    """The version of the newest complete cached base built from `recipe` (by build time), if any."""
    from imagebuilder.providers.local import bases

    best: tuple[str, str] | None = None
    for manifest in cache_dir.glob(f"{recipe.kind}-*.manifest.json"):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        version = str(m.get("version", ""))
        if m.get("recipe_hash") != recipe.content_hash or not recipe.owns(version):
            continue
        if not bases.tarball_path(recipe.kind, version, cache_dir).is_file():
            continue
        key = (str(m.get("built_at", "")), version)
        if best is None or key > best:
            best = key
    return best[1] if best else None


def current_version(recipe: Recipe, cache_dir: Path) -> str | None:
    """The version the recorded state points at (no network), if a state was recorded for this mirror."""
    from imagebuilder.providers.local import bases

    state = read_state(cache_dir)
    if state is None or state.mirrors != tuple(bases.debian_mirrors()):
        return None
    return recipe.mirror_version(state.stamp)


def latest_debian_version(
    recipe: Recipe,
    cache_dir: Path,
    *,
    refresh_hours: float | None,
    log: LogSink | None = None,
    now: float | None = None,
) -> str:
    """The exact version `latest` means for the Debian base now (see the module docstring)."""
    from imagebuilder.providers.local import bases

    cache_dir = Path(cache_dir)
    mirror, security = bases.debian_mirrors()
    state = read_state(cache_dir)
    now = time.time() if now is None else now
    same_mirror = state is not None and state.mirrors == (mirror, security)
    if (
        state is not None
        and same_mirror
        and (refresh_hours is None or now - state.checked_at < refresh_hours * 3600)
    ):
        return recipe.mirror_version(state.stamp)
    if refresh_hours is None:
        cached = newest_cached(recipe, cache_dir)
        if cached is not None:
            return cached
    try:
        fresh = check(mirror, security, recipe.suite)
    except (OSError, ValueError) as exc:
        fallback = newest_cached(recipe, cache_dir) or recipe.version
        if log is not None:
            log.write(
                f"WARNING: cannot check the Debian mirror's state ({type(exc).__name__}: {exc}); "
                f"using the newest cached base {fallback}\n"
            )
        return fallback
    if state is not None and state.stamp != fresh.stamp and log is not None:
        log.write(f"the Debian mirror moved ({state.stamp} -> {fresh.stamp}): latest is a new base\n")
    write_state(cache_dir, fresh)
    return recipe.mirror_version(fresh.stamp)
