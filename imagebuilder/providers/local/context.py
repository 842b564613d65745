"""The typed view of one provider call: `Settings` (what the provider was configured with, read once from
the environment) and `RunContext` (one run of one template: the template as the frozen model, its folders,
its per-template options, its log files). Every phase module takes a `RunContext` and reads the template
through `RunContext.template` (parsed once per call, see `template.parse_stored_template`), never as a dict;
the one exception is the step cache key, which hashes each step's JSON as stored (`stored_customize`).

Per-template options are template tags, so templates move to Azure unchanged (tags are ignored there):
    imagebuilder.local.network = off        customizers and validators run with no network (only lo)
    imagebuilder.local.qcow2 = true         capture also writes a qcow2 (or IMAGEBUILDER_LOCAL_QCOW2=1)
    imagebuilder.local.stepTimeoutMinutes   per-step timeout (default: buildTimeoutInMinutes, else 240)
    imagebuilder.local.stepDiskMB           MB a step may write to the build root in all (default:
                                            IMAGEBUILDER_STEP_DISK_MB, else 16384; see limits.py)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import BuildInput
from imagebuilder.providers.base import LogSink, TemplateUnreadable, read_template
from imagebuilder.providers.local import catalog, limits, stepcache
from imagebuilder.providers.local.gallery import Stores
from imagebuilder.providers.local.layout import RunLayout
from imagebuilder.template import ImageTemplate

__all__ = ["RunContext", "Settings", "TemplateUnreadable"]

TAG_NETWORK = "imagebuilder.local.network"
TAG_QCOW2 = "imagebuilder.local.qcow2"
TAG_STEP_TIMEOUT = "imagebuilder.local.stepTimeoutMinutes"
TAG_STEP_DISK = limits.DISK_TAG
VHD_ROOT_ENV = "IMAGEBUILDER_LOCAL_VHD_ROOT"
QCOW2_ENV = "IMAGEBUILDER_LOCAL_QCOW2"
BOOT_CHECK_ENV = "IMAGEBUILDER_LOCAL_BOOT_CHECK"
EARLY_DISK_ENV = "IMAGEBUILDER_LOCAL_EARLY_DISK"
DEFAULT_BUILD_MINUTES = 240
LOG_TAIL = 20

BlobFetcher = Callable[[str], bytes]
BlobUploader = Callable[[str, Path], str]


def is_false(value: Any) -> bool:
    return str(value).strip().lower() in ("off", "false", "0", "no", "disabled")


def is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("on", "true", "1", "yes", "enabled")


def file_uri(path: Path) -> str:
    return Path(path).resolve().as_uri()


@dataclass(frozen=True)
class Settings:
    """The provider's configuration (see `LocalProvider`)."""

    state_dir: Path
    cache_dir: Path
    stores: Stores
    blob_fetcher: BlobFetcher | None = None
    blob_uploader: BlobUploader | None = None
    file_roots: list[Path] = field(default_factory=list)
    vhd_roots: list[Path] = field(default_factory=list)
    qcow2: bool = False
    catalog_file: str | None = None
    step_cache: bool = True
    boot_check: bool = True
    early_disk: bool = True  # IMAGEBUILDER_LOCAL_EARLY_DISK (earlydisk.py)
    step_cache_dir: Path | None = None
    step_cache_cap: int = 10 * 1024**3
    base_refresh_hours: float | None = 24.0  # IMAGEBUILDER_LOCAL_BASE_REFRESH_HOURS; None: pinned

    def catalog_extra(self) -> dict[str, str] | None:
        return catalog.load_catalog_file(self.catalog_file) if self.catalog_file else None


class Tee:
    """Writes to the run's LogSink and to a local file (kept with the build root on `abort`)."""

    def __init__(self, inner: LogSink, path: Path) -> None:
        self._inner = inner
        self._path = path

    @property
    def uri(self) -> str:
        return self._inner.uri

    def write(self, text: str) -> None:
        self._inner.write(text)
        # Never creates the folder: a step still writing after cleanup must not bring the run back.
        with contextlib.suppress(OSError):
            if self._path.parent.is_dir():
                with self._path.open("a") as fh:
                    fh.write(text)


@dataclass(frozen=True)
class RunContext:
    """One call of the provider for one run: settings, the build input, the run's folders."""

    settings: Settings
    build: BuildInput

    @cached_property
    def layout(self) -> RunLayout:
        return RunLayout.for_run(self.settings.state_dir, self.build.run)

    @property
    def marker(self) -> str:
        """The name every process of this run carries (its run folder's name)."""
        return self.layout.run_dir.name

    @cached_property
    def template(self) -> ImageTemplate:
        """The template as the frozen model, parsed once per call (`providers.base.read_template`: a
        stored template always loads; one that cannot be read raises `TemplateUnreadable`, naming the
        field)."""
        return read_template(self.build.template)

    @cached_property
    def stored_customize(self) -> list[dict[str, Any]]:
        """Each customizer's JSON exactly as stored, for the step cache key (`stepcache.step_id` hashes it):
        the model's dump is not always the same JSON (an upper-case sha256Checksum is lowered, members
        matched case-insensitively are respelt, unknown members dropped), so hashing it would change the
        ids of existing cache entries. Only when the stored list cannot be matched one to one with the
        model's steps (members spelt in another case) are the model's dumps used."""
        steps = self.template.properties.customizers
        props = self.build.template.get("properties")
        raw = props.get("customize") if isinstance(props, dict) else None
        if isinstance(raw, list) and len(raw) == len(steps) and all(isinstance(s, dict) for s in raw):
            return list(raw)
        return [s.to_json() for s in steps]

    @cached_property
    def tags(self) -> dict[str, str]:
        """The template's tags, names lower-cased (per-template options are matched case-insensitively)."""
        return {k.lower(): v for k, v in (self.template.tags or {}).items()}

    @property
    def network(self) -> bool:
        return not is_false(self.tags.get(TAG_NETWORK.lower(), "on"))

    @property
    def qcow2(self) -> bool:
        return self.settings.qcow2 or is_true(self.tags.get(TAG_QCOW2.lower(), ""))

    @property
    def step_timeout(self) -> float:
        """Seconds a step may run."""
        props = self.template.properties
        raw = self.tags.get(TAG_STEP_TIMEOUT.lower()) or props.build_timeout_in_minutes or 0
        try:
            minutes = float(raw)
        except (TypeError, ValueError):
            minutes = 0.0
        return (minutes if minutes > 0 else DEFAULT_BUILD_MINUTES) * 60.0

    @property
    def step_limits(self) -> limits.StepLimits:
        """The limits of this run's sandbox steps: the app settings, with the disk limit from the tag
        TAG_STEP_DISK when the template sets it (a bad value is a config error naming the tag)."""
        lim = limits.StepLimits.from_env()
        raw = self.tags.get(TAG_STEP_DISK.lower())
        return dataclasses.replace(lim, disk_mb=limits.disk_mb_of_tag(raw)) if raw else lim

    @property
    def template_hash(self) -> str:
        """sha256 of the template as stored (keys prepare's record of a retried call)."""
        text = json.dumps(self.build.template, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def step_cache(self) -> stepcache.StepCache | None:
        """The step cache, unless the app setting turned it off."""
        if not self.settings.step_cache:
            return None
        where = self.settings.step_cache_dir or self.settings.cache_dir / "steps"
        return stepcache.StepCache(where, self.settings.step_cache_cap)

    @property
    def cache_reuse(self) -> bool:
        """False when the run asked for a full rebuild (POST .../run {"cache": "off"}): nothing is
        reused, results are still stored."""
        return self.build.options.cache != "off"

    def log(self, sink: LogSink, phase: str) -> LogSink:
        """`sink` teed into the run's own `logs/<phase>.log`."""
        return Tee(sink, self.layout.logs / f"{phase}.log")
