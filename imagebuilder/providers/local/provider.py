"""`LocalProvider`: the ComputeProvider that builds images on this machine. A thin class: it holds the
settings (read from the environment once) and hands each seam method to its phase module:

    prepare.py      source resolution, artifact staging        buildroot.py   the copy-on-write build root
    customize.py    one customizer                             validate.py    inVMValidations
    generalize.py   offline deprovision                        capture.py     disk, VHD, hash
    earlydisk.py    the disk begun while the customizers run
    distribute.py   managed image / gallery / VHD targets      cleanup.py     everything transient

Per-template options (tags) and the typed view of one call: `context` (every phase reads the template as
the frozen model, `RunContext.template`, parsed once per call from the JSON as stored; one that cannot be
read fails prepare naming the field). Folders: `layout`. The build root
is an overlay over a cached, extracted base; customizers run in a bubblewrap sandbox (`sandbox`); the
stores (images, gallery, VHDs) are in `gallery`. Each customizer's result is kept in the step cache
(`stepcache`; IMAGEBUILDER_STEP_CACHE=off turns it off, IMAGEBUILDER_STEP_CACHE_MAX_GB caps it), so a
rebuild runs only the steps after the longest unchanged prefix. The run's disk is begun in the background
from that prefix when the build root is made and finished at capture with the later layers (`earlydisk`;
IMAGEBUILDER_LOCAL_EARLY_DISK=off writes the whole tree at capture instead). Bootable images are booted
once more as captured (the shipped-image boot check, `capture`; IMAGEBUILDER_LOCAL_BOOT_CHECK=off turns
it off).

VHD targets: no `uri` -> state_dir/vhds/...; `file://` -> only below state_dir/vhds or
IMAGEBUILDER_LOCAL_VHD_ROOT; `http(s)://` blob URL -> the `blob_uploader` the provider was given.
Network on gives each step its own namespace NATed to the outside by slirp4netns (see `sandbox`): the
host's loopback services are not reachable from a step, as from a build VM. Gallery image definitions
are created on first use; versioning defaults to Latest (1.0.0 first); replicaCount and
storageAccountType are recorded per region (one verified replica per region: a hard link of the one
captured disk); of vmProfile only osDiskSizeGB applies (the disk size; 0 or absent: the tree plus
headroom, in whole MiB; smaller than the tree is refused, naming the size needed).

Exceptions: permanent failures are returned as results (ErrorInfo); `TransientProviderError` (a download
that may work next time) and `ProviderConfigError` (a tool missing) are raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from imagebuilder.pipeline.messages import (
    BuildEnv,
    BuildInput,
    CaptureResult,
    CleanupReport,
    PrepareResult,
    ReplicationResult,
    SourceInfo,
    StepResult,
    TemplateInput,
    TemplateStaging,
)
from imagebuilder.providers.base import ComputeProvider, LogSink
from imagebuilder.providers.local import (
    artifacts,
    buildroot,
    capture,
    catalog,
    cleanup,
    customize,
    distribute,
    generalize,
    mirrorstate,
    prepare,
    staging,
    stepcache,
    validate,
)
from imagebuilder.providers.local.context import (
    BOOT_CHECK_ENV,
    EARLY_DISK_ENV,
    QCOW2_ENV,
    VHD_ROOT_ENV,
    BlobUploader,
    RunContext,
    Settings,
    is_false,
    is_true,
)
from imagebuilder.providers.local.gallery import Stores
from imagebuilder.providers.local.layout import RunLayout

__all__ = ["BlobUploader", "LocalProvider"]


class LocalProvider(ComputeProvider):
    """Builds on this machine. `state_dir` (default $IMAGEBUILDER_STATE_DIR or .state) holds runs and
    stores; `cache_dir` (default $IMAGEBUILDER_CACHE_DIR or state_dir/cache) the base tarballs and their
    extracted trees; `blob_fetcher(url) -> bytes` reads blobs of our storage account;
    `blob_uploader(url, file) -> url` writes VHD targets that name a blob URL."""

    name = "local"

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        cache_dir: Path | None = None,
        blob_fetcher: Callable[[str], bytes] | None = None,
        blob_uploader: BlobUploader | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        # The environment is read here, once (never at import, never per call).
        env = os.environ if environ is None else environ
        self.state_dir = Path(state_dir or env.get("IMAGEBUILDER_STATE_DIR") or ".state").resolve()
        self.cache_dir = Path(
            cache_dir or env.get("IMAGEBUILDER_CACHE_DIR") or self.state_dir / "cache"
        ).resolve()
        self.blob_fetcher = blob_fetcher
        self.blob_uploader = blob_uploader
        self.file_roots = artifacts.file_roots(env.get(artifacts.FILE_ROOT_ENV, ""))
        self.vhd_roots = [self.state_dir / "vhds"] + [
            Path(p) for p in env.get(VHD_ROOT_ENV, "").split(os.pathsep) if p.strip()
        ]
        self.qcow2 = is_true(env.get(QCOW2_ENV, ""))
        self.catalog_file = env.get(catalog.CATALOG_SETTING) or None
        self.step_cache = not is_false(env.get(stepcache.CACHE_SETTING, "on") or "on")
        self.boot_check = not is_false(env.get(BOOT_CHECK_ENV, "on") or "on")
        self.early_disk = not is_false(env.get(EARLY_DISK_ENV, "on") or "on")
        self.step_cache_dir = Path(env.get(stepcache.DIR_SETTING) or self.cache_dir / "steps").resolve()
        self.step_cache_cap = stepcache.cap_bytes(env.get(stepcache.CAP_SETTING))
        self.base_refresh_hours = mirrorstate.parse_refresh_hours(env.get(mirrorstate.REFRESH_SETTING))
        self.stores = Stores(self.state_dir)

    @property
    def settings(self) -> Settings:
        """The settings as they are now (attributes may be set after construction, e.g. in tests)."""
        return Settings(
            state_dir=self.state_dir,
            cache_dir=self.cache_dir,
            stores=self.stores,
            blob_fetcher=self.blob_fetcher,
            blob_uploader=self.blob_uploader,
            file_roots=list(self.file_roots),
            vhd_roots=list(self.vhd_roots),
            qcow2=self.qcow2,
            catalog_file=self.catalog_file,
            step_cache=self.step_cache,
            boot_check=self.boot_check,
            early_disk=self.early_disk,
            step_cache_dir=self.step_cache_dir,
            step_cache_cap=self.step_cache_cap,
            base_refresh_hours=self.base_refresh_hours,
        )

    def context(self, build: BuildInput) -> RunContext:
        return RunContext(self.settings, build)

    def layout(self, build: BuildInput) -> RunLayout:
        return RunLayout.for_run(self.state_dir, build.run)

    def _resolve_source(self, build: BuildInput) -> SourceInfo:
        return prepare.resolve_source(self.context(build))

    # ------------------------------------------------------------------------------------ the seam

    def prepare(self, build: BuildInput, log: LogSink) -> PrepareResult:
        return prepare.prepare(self.context(build), log)

    def create_build_env(self, build: BuildInput, prepared: PrepareResult, log: LogSink) -> BuildEnv:
        return buildroot.create_build_env(self.context(build), prepared, log)

    def customize(self, build: BuildInput, env: BuildEnv, index: int, log: LogSink) -> StepResult:
        return customize.customize(self.context(build), env, index, log)

    def validate(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult:
        return validate.validate(self.context(build), env, log)

    def generalize(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult:
        return generalize.generalize(self.context(build), env, log)

    def capture(self, build: BuildInput, env: BuildEnv, log: LogSink) -> CaptureResult:
        return capture.capture(self.context(build), env, log)

    def distribute(
        self, build: BuildInput, captured: CaptureResult, target_index: int, region: str, log: LogSink
    ) -> ReplicationResult:
        return distribute.distribute(self.context(build), captured, target_index, region, log)

    def cleanup(self, build: BuildInput, *, keep: bool, log: LogSink) -> CleanupReport:
        return cleanup.cleanup(self.context(build), keep=keep, log=log)

    def create_template(self, template: TemplateInput, log: LogSink) -> TemplateStaging:
        return staging.create_template(self.settings, template, log)

    def delete_template(self, template: TemplateInput, log: LogSink) -> CleanupReport:
        return staging.delete_template(self.settings, template, log)
