"""`LocalProvider`: the ComputeProvider that builds images on this machine: a copy-on-write build root
(overlayfs over a cached, extracted base; a plain extract where overlayfs is unavailable), customizers
in a bubblewrap sandbox, offline deprovision, capture to a fixed VHD (and qcow2), and distribution into
the local image store, Compute Gallery and VHD folder (see `gallery`). Folders: see `layout`.

Per-template options are template tags, so templates move to Azure unchanged (tags are ignored there):
    imagebuilder.local.network = off        customizers and validators run with no network (only lo)
    imagebuilder.local.qcow2 = true         capture also writes a qcow2 (or IMAGEBUILDER_LOCAL_QCOW2=1)
    imagebuilder.local.stepTimeoutMinutes   per-step timeout (default: buildTimeoutInMinutes, else 240)
VHD targets: no `uri` -> state_dir/vhds/...; `file://` -> only below state_dir/vhds or
IMAGEBUILDER_LOCAL_VHD_ROOT; `http(s)://` blob URL -> the `blob_uploader` the provider was given.
Network on gives each step its own namespace NATed to the outside by slirp4netns (see `sandbox`): the
host's loopback services are not reachable from a step, as from a build VM. Gallery image definitions
are created on first use; versioning defaults to Latest (1.0.0 first); replicaCount and
storageAccountType are recorded per region (one verified copy per region); vmProfile is not applied
(the disk is sized to the tree plus headroom, in whole MiB).

Exceptions: permanent failures are returned as results (ErrorInfo); `TransientProviderError` (a download
that may work next time) and `ProviderConfigError` (a tool missing) are raised.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildEnv,
    BuildInput,
    CaptureResult,
    CleanupReport,
    ErrorInfo,
    PrepareResult,
    ReplicationResult,
    SourceInfo,
    StepResult,
)
from imagebuilder.providers.base import ComputeProvider, LogSink, ProviderError, TransientProviderError
from imagebuilder.providers.local import artifacts, catalog, customizers, deprovision, gallery, proc, sandbox
from imagebuilder.providers.local.gallery import GalleryError, GalleryImageId, ImageId, Stores, sha256_file
from imagebuilder.providers.local.layout import (
    RunLayout,
    check_template_path,
    is_within,
    safe_name,
    short_hash,
)

TAG_NETWORK = "imagebuilder.local.network"
TAG_QCOW2 = "imagebuilder.local.qcow2"
TAG_STEP_TIMEOUT = "imagebuilder.local.stepTimeoutMinutes"
VHD_ROOT_ENV = "IMAGEBUILDER_LOCAL_VHD_ROOT"
QCOW2_ENV = "IMAGEBUILDER_LOCAL_QCOW2"
DEFAULT_BUILD_MINUTES = 240
LOG_TAIL = 20

BlobUploader = Callable[[str, Path], str]


def _false(value: Any) -> bool:
    return str(value).strip().lower() in ("off", "false", "0", "no", "disabled")


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("on", "true", "1", "yes", "enabled")


def _file_uri(path: Path) -> str:
    return Path(path).resolve().as_uri()


class _Tee:
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
        self.qcow2 = _true(env.get(QCOW2_ENV, ""))
        self.catalog_file = env.get(catalog.CATALOG_SETTING) or None
        self.stores = Stores(self.state_dir)

    # ------------------------------------------------------------------------------------- helpers

    def layout(self, build: BuildInput) -> RunLayout:
        return RunLayout.for_run(self.state_dir, build.run)

    @staticmethod
    def _marker(layout: RunLayout) -> str:
        return layout.run_dir.name

    @staticmethod
    def _props(build: BuildInput) -> dict[str, Any]:
        props = build.template.get("properties") or {}
        return props if isinstance(props, dict) else {}

    @staticmethod
    def _tags(build: BuildInput) -> dict[str, str]:
        tags = build.template.get("tags") or {}
        return {str(k).lower(): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}

    def _network(self, build: BuildInput) -> bool:
        return not _false(self._tags(build).get(TAG_NETWORK.lower(), "on"))

    def _step_timeout(self, build: BuildInput) -> float:
        tags = self._tags(build)
        raw = tags.get(TAG_STEP_TIMEOUT.lower()) or self._props(build).get("buildTimeoutInMinutes") or 0
        try:
            minutes = float(raw)
        except (TypeError, ValueError):
            minutes = 0.0
        return (minutes if minutes > 0 else DEFAULT_BUILD_MINUTES) * 60.0

    def _log(self, layout: RunLayout, log: LogSink, phase: str) -> LogSink:
        return _Tee(log, layout.logs / f"{phase}.log")

    def _catalog_extra(self) -> dict[str, str] | None:
        return catalog.load_catalog_file(self.catalog_file) if self.catalog_file else None

    @staticmethod
    def _template_hash(build: BuildInput) -> str:
        return hashlib.sha256(json.dumps(build.template, sort_keys=True, default=str).encode()).hexdigest()

    # ------------------------------------------------------------------------------------- prepare

    def prepare(self, build: BuildInput, log: LogSink) -> PrepareResult:
        layout = self.layout(build)
        record = layout.prepare_record
        digest = self._template_hash(build)
        if record.is_file():
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(record.read_text())
                cached = PrepareResult.model_validate(data["result"])
                still_staged = all(Path(a.location).is_file() for a in cached.artifacts)
                if data.get("template_sha256") == digest and still_staged:
                    return cached
        layout.logs.mkdir(parents=True, exist_ok=True)
        log = self._log(layout, log, "prepare")
        try:
            customizers.check_supported(build.template)
            source = self._resolve_source(build)
        except customizers.CustomizerError as exc:
            return self._prepare_failed(exc.code, str(exc), log)
        except catalog.CatalogError as exc:
            return self._prepare_failed("BadPIRSource", str(exc), log)
        except GalleryError as exc:
            return self._prepare_failed(exc.code, str(exc), log)
        log.write(f"source {source.type} {source.id} -> {source.exact_version or source.id}\n")
        try:
            staged = artifacts.fetch_all(
                artifacts.collect(build.template),
                layout.artifacts,
                blob_fetcher=self.blob_fetcher,
                log=log,
                roots=self.file_roots,
            )
        except artifacts.ArtifactError as exc:
            return self._prepare_failed(exc.code, str(exc), log, source=source)
        result = PrepareResult(status="succeeded", source=source, artifacts=staged)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(record.name + ".tmp")
        tmp.write_text(json.dumps({"template_sha256": digest, "result": result.model_dump(mode="json")}))
        os.replace(tmp, record)
        return result

    @staticmethod
    def _prepare_failed(
        code: str, message: str, log: LogSink, source: SourceInfo | None = None
    ) -> PrepareResult:
        log.write(f"! prepare failed: {message}\n")
        return PrepareResult(
            status="failed",
            source=source,
            error=ErrorInfo(code=code, message=message, step="prepare", log_uri=log.uri or None),
        )

    def _resolve_source(self, build: BuildInput) -> SourceInfo:
        src = self._props(build).get("source") or {}
        typ = str(src.get("type") or "")
        if typ == "PlatformImage":
            missing = [k for k in ("publisher", "offer", "sku") if not src.get(k)]
            if missing:
                raise catalog.CatalogError(
                    f"properties.source.{missing[0]} is missing",
                    hint="a PlatformImage source needs publisher, offer, sku and version",
                )
            requested = str(src.get("version") or "latest")
            base = catalog.resolve(
                str(src["publisher"]),
                str(src["offer"]),
                str(src["sku"]),
                requested,
                extra=self._catalog_extra(),
            )
            return SourceInfo(
                type=typ,
                id=f"{src['publisher']}:{src['offer']}:{src['sku']}:{requested}",
                exact_version=base.version,
                hyper_v_generation=base.generation,
                details={
                    "urn": base.urn,
                    "kind": base.kind,
                    "bootable": base.bootable,
                    "publisher": base.publisher,
                    "offer": base.offer,
                    "sku": base.sku,
                },
            )
        if typ == "ManagedImage":
            image_id = str(src.get("imageId") or "")
            image = self.stores.find_image(image_id, "properties.source.imageId")
            return SourceInfo(
                type=typ,
                id=image_id,
                exact_version=None,
                hyper_v_generation="V2" if image.generation == "V2" else "V1",
                details={
                    "bootable": image.bootable,
                    "rootfs": str(image.rootfs),
                    "sha256": image.meta.get("sha256"),
                    "version": image.meta.get("sourceVersion"),
                },
            )
        if typ == "SharedImageVersion":
            version_id = str(src.get("imageVersionId") or "")
            image = self.stores.find_version(
                version_id, "properties.source.imageVersionId", prefer_region=build.template.get("location")
            )
            return SourceInfo(
                type=typ,
                id=version_id,
                exact_version=str(image.meta.get("name")),
                hyper_v_generation="V2" if image.generation == "V2" else "V1",
                details={
                    "exactVersionId": image.id,
                    "bootable": image.bootable,
                    "rootfs": str(image.rootfs),
                    "sha256": image.meta.get("sha256"),
                },
            )
        raise GalleryError(
            "BadSourceType",
            f"properties.source.type {typ!r} is not a source the local provider can build from",
            hint="use PlatformImage, ManagedImage or SharedImageVersion",
        )

    # ---------------------------------------------------------------------------- build environment

    def _source_tarball(self, build: BuildInput, source: SourceInfo, log: LogSink) -> Path:
        if source.type == "PlatformImage":
            d = source.details
            base = catalog.resolve(
                str(d["publisher"]), str(d["offer"]), str(d["sku"]), str(source.exact_version),
                extra=self._catalog_extra(),
            )  # fmt: skip
            return catalog.ensure_base(base, self.cache_dir, log=log)
        rootfs = Path(str(source.details.get("rootfs") or ""))
        if not rootfs.is_file():
            raise ProviderError(
                f"the root tree of source {source.id} is missing from the local store ({rootfs})",
                hint="publish the source image again",
            )
        return rootfs

    def _extracted(self, tarball: Path) -> Path:
        """The tarball extracted once into the cache (read-only lower layer of build roots). Concurrent
        callers (threads or processes) wait on a lock file and reuse the first one's result."""
        st = tarball.stat()
        key = f"{safe_name(tarball.name.removesuffix('.tar.zst'), limit=60)}-" + short_hash(
            str(tarball.resolve()), str(st.st_size), str(st.st_mtime_ns)
        )
        dest = self.cache_dir / "extracted" / key
        if (dest / ".complete").is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with gallery.locked_file(dest.parent / f".{key}.lock"):
            if (dest / ".complete").is_file():
                return dest
            shutil.rmtree(dest, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=dest.parent))
            try:
                catalog.extract_base(tarball, tmp / "tree")
                (tmp / ".complete").write_text(str(tarball))
                os.rename(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def create_build_env(self, build: BuildInput, prepared: PrepareResult, log: LogSink) -> BuildEnv:
        layout = self.layout(build)
        layout.logs.mkdir(parents=True, exist_ok=True)
        log = self._log(layout, log, "build")
        if layout.env_record.is_file():
            recorded: dict[str, Any] = json.loads(layout.env_record.read_text())
            if self._root_ready(recorded):
                return BuildEnv(provider=self.name, handle=recorded)
        if prepared.source is None:
            raise ProviderError("create_build_env needs a succeeded PrepareResult with a source")
        source = prepared.source
        start = time.monotonic()
        tarball = self._source_tarball(build, source, log)
        lower = self._extracted(tarball) / "tree"
        mode = self._make_root(layout, lower, tarball, log)
        policy = deprovision.install_policy_rc_d(layout.root)
        sandbox.prepare_inbox(layout.inbox)
        handle: dict[str, Any] = {
            "run_dir": str(layout.run_dir),
            "root": str(layout.root),
            "mode": mode,
            "lower": str(lower),
            "upper": str(layout.upper),
            "work": str(layout.overlay_work),
            "tarball": str(tarball),
            "inbox": str(layout.inbox),
            "artifacts": str(layout.artifacts),
            "network": self._network(build),
            "bootable": bool(source.details.get("bootable", False)),
            "generation": source.hyper_v_generation,
            "source": source.model_dump(mode="json"),
            "policy_rc_d": policy,
        }
        layout.env_record.write_text(json.dumps(handle, indent=2))
        log.write(f"build root ready ({mode}) at {layout.root} in {time.monotonic() - start:.2f} s\n")
        return BuildEnv(provider=self.name, handle=handle)

    @staticmethod
    def _mounted(path: Path) -> bool:
        return str(path) in _mount_points()

    def _root_ready(self, handle: dict[str, Any]) -> bool:
        root = Path(handle["root"])
        if handle.get("mode") == "overlay":
            if not self._mounted(root):
                if not (Path(handle["lower"]).is_dir() and Path(handle["upper"]).is_dir()):
                    return False
                self._mount_overlay(
                    Path(handle["lower"]), Path(handle["upper"]), Path(handle["work"]), root, None
                )
            return True
        return root.is_dir() and (root / "bin").exists()

    @staticmethod
    def _mount_overlay(lower: Path, upper: Path, work: Path, root: Path, log: LogSink | None) -> None:
        for d in (upper, work, root):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        proc.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], log=log, timeout=60)

    def _make_root(self, layout: RunLayout, lower: Path, tarball: Path, log: LogSink) -> str:
        """Overlay (lower = the extracted base, upper = the run) or, where that fails, a plain extract."""
        for point in sorted(_mounts_under(layout.build), key=len, reverse=True):
            proc.run(["umount", point], log=log, timeout=60)
        if _mounts_under(layout.build):
            raise ProviderError(f"cannot unmount what is mounted under {layout.build}")
        shutil.rmtree(layout.build, ignore_errors=True)
        layout.build.mkdir(parents=True, exist_ok=True)
        if not any(c in str(p) for p in (lower, layout.build) for c in ",:"):
            try:
                self._mount_overlay(lower, layout.upper, layout.overlay_work, layout.root, log)
                return "overlay"
            except ProviderError as exc:
                log.write(f"overlayfs unavailable ({str(exc).splitlines()[0]}); extracting a full copy\n")
                shutil.rmtree(layout.build, ignore_errors=True)
                layout.build.mkdir(parents=True, exist_ok=True)
        catalog.extract_base(tarball, layout.root)
        return "copy"

    def _env_ok(self, env: BuildEnv, step: str, log: LogSink) -> StepResult | None:
        root = Path(str(env.handle.get("root", "")))
        with contextlib.suppress(ProviderError, KeyError, OSError):
            self._root_ready(env.handle)  # remounts the overlay if the host lost it (a reboot)
        if root.is_dir() and (root / "bin").exists():
            return None
        return StepResult(
            status="failed",
            step=step,
            error=ErrorInfo(
                code="BuildEnvMissing",
                message=f"the build root {root} does not exist (cleanup ran, or create_build_env did not)",
                step=step,
                log_uri=log.uri or None,
            ),
        )

    # ------------------------------------------------------------------------------------- customize

    def customize(self, build: BuildInput, env: BuildEnv, index: int, log: LogSink) -> StepResult:
        layout = self.layout(build)
        items = customizers.items(build.template, "customize")
        if not 0 <= index < len(items):
            raise ProviderError(f"properties.customize[{index}] does not exist ({len(items)} customizers)")
        item = items[index]
        step = customizers.step_name("customize", index, item)
        done_file = layout.build / "steps" / f"customize-{index}.json"
        if done_file.is_file():
            return StepResult.model_validate_json(done_file.read_text())
        missing = self._env_ok(env, step, log)
        if missing:
            return missing
        plog = sandbox.PrefixedLog(self._log(layout, log, "customization"), step)
        plog.write(f"starting {step}")
        outcome = self._run_item(build, env, layout, "customize", index, item, Path(env.handle["root"]), plog)
        result = self._step_result(step, outcome, plog, log)
        if result.status == "succeeded":
            done_file.parent.mkdir(parents=True, exist_ok=True)
            done_file.write_text(result.model_dump_json())
        return result

    def _run_item(
        self,
        build: BuildInput,
        env: BuildEnv,
        layout: RunLayout,
        kind: str,
        index: int,
        item: dict[str, Any],
        root: Path,
        plog: LogSink,
    ) -> customizers.Outcome:
        typ = str(item.get("type") or "")
        where = customizers.field_of(kind, index)
        if typ == "Shell":
            return customizers.run_shell(
                item,
                step_key=f"{kind}-{index}",
                root=root,
                inbox=layout.inbox,
                artifacts=layout.artifacts,
                network=bool(env.handle.get("network", True)),
                run_marker=self._marker(layout),
                log=plog,
                timeout=self._step_timeout(build),
            )
        if typ == "File":
            return customizers.run_file(item, where=where, root=root, artifacts=layout.artifacts, log=plog)
        return customizers.Outcome(
            ok=False,
            code="BadCustomizerType",
            message=f"{where}.type {typ!r} cannot run in the local provider",
        )

    @staticmethod
    def _step_result(step: str, outcome: customizers.Outcome, plog: LogSink, log: LogSink) -> StepResult:
        if outcome.ok:
            plog.write(f"succeeded in {outcome.duration:.2f} s")
            return StepResult(
                status="succeeded",
                step=step,
                duration_seconds=outcome.duration,
                exit_code=outcome.exit_code,
                details=outcome.details,
            )
        message = f"{step} failed: {outcome.message}"
        plog.write(f"! {message}")
        return StepResult(
            status="failed",
            step=step,
            duration_seconds=outcome.duration,
            exit_code=outcome.exit_code,
            error=ErrorInfo(
                code=outcome.code or "CustomizerFailed",
                message=message,
                step=step,
                exit_code=outcome.exit_code,
                log_tail=outcome.tail[-LOG_TAIL:],
                log_uri=log.uri or None,
            ),
            details=outcome.details,
        )

    # -------------------------------------------------------------------------------------- validate

    def validate(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult:
        layout = self.layout(build)
        items = customizers.items(build.template, "validate")
        if not items:
            return StepResult(status="skipped", step="validate", details={"reason": "no inVMValidations"})
        missing = self._env_ok(env, "validate", log)
        if missing:
            return missing
        source_only = bool((self._props(build).get("validate") or {}).get("sourceValidationOnly"))
        tree = Path(env.handle["lower"]) if source_only else Path(env.handle["root"])
        vlog = self._log(layout, log, "validation")
        start = time.monotonic()
        if env.handle.get("bootable"):
            result = self._validate_boot(build, env, layout, items, tree, vlog, log)
        else:
            result = self._validate_sandbox(build, env, layout, items, tree, vlog, log)
        details = {
            **result.details,
            "sourceValidationOnly": source_only,
            "tree": "source" if source_only else "customized",
        }
        return result.model_copy(update={"details": details, "duration_seconds": time.monotonic() - start})

    def _validate_sandbox(
        self,
        build: BuildInput,
        env: BuildEnv,
        layout: RunLayout,
        items: list[dict[str, Any]],
        tree: Path,
        vlog: LogSink,
        log: LogSink,
    ) -> StepResult:
        """Images that cannot boot (BusyBox) validate in the sandbox, on a throwaway copy of the tree."""
        work = layout.validate_dir / "root"
        shutil.rmtree(layout.validate_dir, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc.run(["cp", "-a", "--reflink=auto", f"{tree}/.", str(work)], log=vlog, timeout=1800)
            ran: list[str] = []
            for i, item in enumerate(items):
                step = customizers.step_name("validate", i, item)
                plog = sandbox.PrefixedLog(vlog, step)
                plog.write(f"starting {step} (in the sandbox: the image has no kernel to boot)")
                outcome = self._run_item(build, env, layout, "validate", i, item, work, plog)
                res = self._step_result(step, outcome, plog, log)
                if res.status == "failed":
                    return res.model_copy(update={"details": {"mode": "sandbox", "ran": ran}})
                ran.append(step)
            return StepResult(status="succeeded", step="validate", details={"mode": "sandbox", "ran": ran})
        finally:
            shutil.rmtree(layout.validate_dir, ignore_errors=True)

    def _validate_boot(
        self,
        build: BuildInput,
        env: BuildEnv,
        layout: RunLayout,
        items: list[dict[str, Any]],
        tree: Path,
        vlog: LogSink,
        log: LogSink,
    ) -> StepResult:
        """Bootable images: a throwaway disk from the tree, booted under QEMU (its own firmware,
        bootloader and systemd), the validators run inside as root. File validators become a check that
        writes the file (base64) before the next ones run. The serial log is kept in the run's logs."""
        from imagebuilder.providers.local import boot, disk

        shutil.rmtree(layout.validate_dir, ignore_errors=True)
        layout.validate_dir.mkdir(parents=True, exist_ok=True)
        try:
            checks: list[boot.BootCheck] = []
            for i, item in enumerate(items):
                step = customizers.step_name("validate", i, item)
                if item.get("type") == "File":
                    where = customizers.field_of("validate", i)
                    dest = check_template_path(str(item.get("destination") or ""), f"{where}.destination")
                    staged = layout.artifacts / artifacts.staged_name(str(item.get("sourceUri")))
                    data = base64.b64encode(staged.read_bytes()).decode()
                    parent = dest.rsplit("/", 1)[0] or "/"
                    q_parent, q_dest = shlex.quote(parent), shlex.quote(dest)
                    script = (
                        f"mkdir -p {q_parent}\nbase64 -d > {q_dest} <<'IMAGEBUILDER_EOF'\n{data}\n"
                        f"IMAGEBUILDER_EOF\nchmod 0644 {q_dest}\n"
                    )
                    checks.append(boot.BootCheck(name=step, kind="shell", source=script))
                elif item.get("inline"):
                    checks.append(boot.BootCheck(name=step, kind="shell", source="\n".join(item["inline"])))
                else:
                    staged = layout.artifacts / artifacts.staged_name(str(item.get("scriptUri")))
                    checks.append(boot.BootCheck(name=step, kind="file", source=str(staged)))
            raw = layout.validate_dir / "validate.raw"
            generation = str(env.handle.get("generation", "V1"))
            disk.build_disk(tree, raw, generation=generation, bootable=True, log=vlog)
            res = boot.boot_validate(
                raw,
                generation=generation,
                checks=checks,
                timeout=int(min(self._step_timeout(build), 900.0)),
                log=vlog,
                workdir=layout.validate_dir,
            )
            serial = Path(res.serial_log_path)
            kept_serial = None
            if serial.is_file() and layout.logs.is_dir():
                kept_serial = layout.logs / f"validation-{serial.name}"
                shutil.move(str(serial), kept_serial)
            return _boot_step_result(res, kept_serial, vlog, log)
        finally:
            shutil.rmtree(layout.validate_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------ generalize

    def generalize(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult:
        missing = self._env_ok(env, "generalize", log)
        if missing:
            return missing
        layout = self.layout(build)
        glog = self._log(layout, log, "generalize")
        start = time.monotonic()
        report = deprovision.deprovision(Path(env.handle["root"]))
        for what, paths in report.items():
            glog.write(
                f"[generalize] {what}: {len(paths)} ({', '.join(paths[:5])}"
                f"{' ...' if len(paths) > 5 else ''})\n"
            )
        return StepResult(
            status="succeeded",
            step="generalize",
            duration_seconds=time.monotonic() - start,
            details={"cleared": report},
        )

    # --------------------------------------------------------------------------------------- capture

    def capture(self, build: BuildInput, env: BuildEnv, log: LogSink) -> CaptureResult:
        from imagebuilder.providers.local import disk

        layout = self.layout(build)
        record = layout.capture / "capture.json"
        if record.is_file():
            with contextlib.suppress(ValueError, OSError):
                done = CaptureResult.model_validate_json(record.read_text())
                if Path(str(done.image.get("vhd"))).is_file():
                    return done
        root = Path(str(env.handle.get("root", "")))
        with contextlib.suppress(ProviderError, KeyError, OSError):
            self._root_ready(env.handle)
        if not (root.is_dir() and (root / "bin").exists()):
            return CaptureResult(
                status="failed",
                error=ErrorInfo(
                    code="BuildEnvMissing", message=f"the build root {root} does not exist", step="capture"
                ),
            )
        clog = self._log(layout, log, "capture")
        start = time.monotonic()
        shutil.rmtree(layout.capture, ignore_errors=True)
        layout.capture.mkdir(parents=True, exist_ok=True)
        generation = str(env.handle.get("generation", "V1"))
        bootable = bool(env.handle.get("bootable", False))
        raw = layout.capture / "disk.raw"
        vhd = layout.capture / "disk.vhd"
        rootfs = layout.capture / "rootfs.tar.zst"
        timings: dict[str, float] = {}
        # The root tree tarball (for layering) is written while the disk is built: two cores, two jobs.
        tar_argv = ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*",
                    "-I", "zstd -T0 -1", "-cf", str(rootfs), "."]  # fmt: skip
        clog.write(f"$ {proc.format_argv(tar_argv)}\n")
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            tar_job = pool.submit(
                _timed, lambda: (proc.run(tar_argv, timeout=1800), gallery.sha256_cached(rootfs))
            )
            try:
                t0 = time.monotonic()
                info = disk.build_disk(root, raw, generation=generation, bootable=bootable, log=clog)
                timings["build_disk"] = time.monotonic() - t0
                t0 = time.monotonic()
                disk.to_vhd(raw, vhd, log=clog)
                timings["to_vhd"] = time.monotonic() - t0
                image: dict[str, Any] = {
                    "format": "vhd",
                    "vhd": str(vhd),
                    "generation": generation,
                    "bootable": bootable,
                    "disk": {**_plain(info), "path": str(vhd), "raw_removed": True},
                }
                if self.qcow2 or _true(self._tags(build).get(TAG_QCOW2.lower(), "")):
                    t0 = time.monotonic()
                    qcow2 = layout.capture / "disk.qcow2"
                    disk.to_qcow2(raw, qcow2, log=clog)
                    image["qcow2"] = str(qcow2)
                    timings["to_qcow2"] = time.monotonic() - t0
                raw.unlink()
                t0 = time.monotonic()
                image["sha256"] = sha256_file(vhd)
                timings["sha256"] = time.monotonic() - t0
                timings["rootfs_tar"] = tar_job.result()
            except ProviderError as exc:
                tar_job.cancel()
                with contextlib.suppress(Exception):
                    tar_job.result()
                if isinstance(exc, TransientProviderError):
                    raise
                tail = list(getattr(exc, "tail", []) or [])[-LOG_TAIL:]
                clog.write(f"! capture failed: {exc}\n")
                return CaptureResult(
                    status="failed",
                    error=ErrorInfo(
                        code="CaptureFailed",
                        message=f"capture failed: {exc}",
                        step="capture",
                        exit_code=getattr(exc, "returncode", None),
                        log_tail=tail,
                        log_uri=log.uri or None,
                    ),
                )
        image["rootfs"] = str(rootfs)
        image["size"] = vhd.stat().st_size
        image["source"] = env.handle.get("source")
        image["seconds"] = round(time.monotonic() - start, 3)
        image["timings"] = {k: round(v, 3) for k, v in timings.items()}
        clog.write(
            f"[capture] {vhd} ({image['size']} bytes, sha256 {image['sha256']}) in {image['seconds']} s "
            f"{image['timings']}\n"
        )
        result = CaptureResult(status="succeeded", image=image)
        record.write_text(result.model_dump_json())
        return result

    # ------------------------------------------------------------------------------------ distribute

    def distribute(
        self, build: BuildInput, captured: CaptureResult, target_index: int, region: str, log: LogSink
    ) -> ReplicationResult:
        targets = self._props(build).get("distribute") or []
        if not 0 <= target_index < len(targets):
            raise ProviderError(
                f"properties.distribute[{target_index}] does not exist ({len(targets)} targets)"
            )
        target = targets[target_index]
        field = f"properties.distribute[{target_index}]"
        name = str(target.get("runOutputName") or f"distribute{target_index}")
        typ = str(target.get("type") or "")
        step = f"distribute[{target_index}] ({typ}: {name}) {region}"
        layout = self.layout(build)
        dlog = self._log(layout, log, "distribute")
        vhd = Path(str(captured.image.get("vhd", "")))
        if captured.status != "succeeded" or not vhd.is_file():
            return self._dist_failed(
                name, region, step, "CaptureMissing", f"{step}: no captured image at {vhd}", log
            )
        try:
            if typ == "ManagedImage":
                return self._to_managed_image(build, captured, target, field, name, region, dlog)
            if typ == "SharedImage":
                return self._to_gallery(build, captured, target, target_index, field, name, region, dlog)
            if typ == "VHD":
                return self._to_vhd(build, captured, target, field, name, region, dlog)
        except GalleryError as exc:
            return self._dist_failed(name, region, step, exc.code, str(exc), log)
        return self._dist_failed(
            name,
            region,
            step,
            "BadDistributeType",
            f"{field}.type {typ!r} is not ManagedImage, SharedImage or VHD",
            log,
        )

    @staticmethod
    def _dist_failed(
        name: str, region: str, step: str, code: str, message: str, log: LogSink
    ) -> ReplicationResult:
        log.write(f"! {step} failed: {message}\n")
        return ReplicationResult(
            run_output_name=name,
            region=region,
            status="failed",
            error=ErrorInfo(code=code, message=message, step=step, log_uri=log.uri or None),
        )

    def _owner(self, build: BuildInput, target_index: int) -> dict[str, Any]:
        return {"template": build.run.template_id, "run": build.run.run_id, "target": target_index}

    def _meta(self, captured: CaptureResult, target: dict[str, Any]) -> dict[str, Any]:
        img = captured.image
        source = img.get("source") or {}
        return {
            "generation": img.get("generation", "V1"),
            "bootable": bool(img.get("bootable", False)),
            "sha256": img["sha256"],
            "size": img.get("size"),
            "sourceVersion": source.get("exact_version"),
            "source": {
                "type": source.get("type"),
                "id": source.get("id"),
                "exactVersion": source.get("exact_version"),
            },
            "tags": dict(target.get("artifactTags") or {}),
        }

    def _to_managed_image(
        self,
        build: BuildInput,
        captured: CaptureResult,
        target: dict[str, Any],
        field: str,
        name: str,
        region: str,
        log: LogSink,
    ) -> ReplicationResult:
        image_id = str(target.get("imageId") or "")
        location = str(target.get("location") or region or build.template.get("location") or "")
        meta = {
            **self._meta(captured, target),
            "run": {"template": build.run.template_id, "run": build.run.run_id},
        }
        stored = self.stores.publish_image(
            image_id,
            location,
            disk=Path(captured.image["vhd"]),
            rootfs=Path(str(captured.image.get("rootfs", ""))),
            meta=meta,
            field=f"{field}.imageId",
            log=log,
        )
        log.write(f"[distribute] managed image {image_id} in {location}: {stored.disk}\n")
        return ReplicationResult(
            run_output_name=name,
            region=location,
            status="succeeded",
            artifact_id=ImageId.parse(image_id, field).text,
            artifact_uri=_file_uri(stored.disk),
        )

    @staticmethod
    def _target_regions(build: BuildInput, target: dict[str, Any]) -> list[dict[str, Any]]:
        regions = target.get("targetRegions")
        if regions:
            return [
                {
                    "name": str(r.get("name")),
                    "replicaCount": int(r.get("replicaCount") or 1),
                    "storageAccountType": str(r.get("storageAccountType") or "Standard_LRS"),
                }
                for r in regions
                if isinstance(r, dict)
            ]
        names = target.get("replicationRegions") or [build.template.get("location") or "local"]
        sat = str(target.get("storageAccountType") or "Standard_LRS")
        return [{"name": str(n), "replicaCount": 1, "storageAccountType": sat} for n in names]

    def _to_gallery(
        self,
        build: BuildInput,
        captured: CaptureResult,
        target: dict[str, Any],
        target_index: int,
        field: str,
        name: str,
        region: str,
        log: LogSink,
    ) -> ReplicationResult:
        ref = GalleryImageId.parse(str(target.get("galleryImageId") or ""), f"{field}.galleryImageId")
        regions = self._target_regions(build, target)
        settings = next((r for r in regions if r["name"].lower() == region.lower()), None)
        if settings is None:
            raise GalleryError(
                "BadSharedImageDistribute",
                f"{field}: region {region!r} is not one of its target regions "
                f"({', '.join(r['name'] for r in regions)})",
                hint="add the region to targetRegions",
            )
        generation = str(captured.image.get("generation", "V1"))
        self.stores.ensure_definition(ref, generation=generation, field=field)
        base_meta = {
            **self._meta(captured, target),
            "excludeFromLatest": bool(target.get("excludeFromLatest", False)),
            "targetRegions": [r["name"].lower() for r in regions],
            "targetRegionSettings": regions,
        }
        source = captured.image.get("source") or {}
        version, _meta = self.stores.allocate_version(
            ref,
            owner=self._owner(build, target_index),
            versioning=target.get("versioning") if isinstance(target.get("versioning"), dict) else None,
            source_version=source.get("exact_version"),
            base_meta=base_meta,
            field=field,
        )
        copy = self.stores.replicate(
            ref,
            version,
            settings["name"],
            disk=Path(captured.image["vhd"]),
            rootfs=Path(str(captured.image.get("rootfs", ""))),
            sha256=str(captured.image["sha256"]),
            settings={
                "replicaCount": settings["replicaCount"],
                "storageAccountType": settings["storageAccountType"],
            },
            log=log,
        )
        log.write(
            f"[distribute] gallery version {ref.version_id(version)} replicated to {settings['name']}\n"
        )
        return ReplicationResult(
            run_output_name=name,
            region=settings["name"],
            status="succeeded",
            artifact_id=ref.version_id(version),
            artifact_uri=_file_uri(copy),
        )

    def _to_vhd(
        self,
        build: BuildInput,
        captured: CaptureResult,
        target: dict[str, Any],
        field: str,
        name: str,
        region: str,
        log: LogSink,
    ) -> ReplicationResult:
        from imagebuilder.providers.local.gallery import copy_verified

        src = Path(captured.image["vhd"])
        sha = str(captured.image["sha256"])
        uri = str(target.get("uri") or "")
        parts = urllib.parse.urlsplit(uri)
        run = build.run
        if not uri:
            dest = (
                self.stores.vhds_dir / safe_name(run.subscription_id.lower())
                / safe_name(run.resource_group.lower())
                / safe_name(run.template_name) / safe_name(run.run_id) / f"{safe_name(name)}.vhd"
            )  # fmt: skip
        elif parts.scheme == "file":
            dest = Path(os.path.realpath(urllib.parse.unquote(parts.path)))
            allowed = self.vhd_roots
            if not any(is_within(dest.parent, a) and dest != Path(os.path.realpath(a)) for a in allowed):
                raise GalleryError(
                    "BadVhdDistribute",
                    f"{field}.uri {uri} is outside the folders a VHD may be written to "
                    f"({', '.join(str(a) for a in allowed)})",
                    hint=f"leave uri empty, or add the folder to {VHD_ROOT_ENV}",
                )
        elif parts.scheme in ("http", "https"):
            if self.blob_uploader is None:
                raise GalleryError(
                    "BadVhdDistribute",
                    f"{field}.uri {artifacts.display_uri(uri)}: this provider has no blob uploader",
                    hint="leave uri empty (the VHD goes to the state directory), or configure storage",
                )
            log.write(f"[distribute] uploading {src} to {artifacts.display_uri(uri)}\n")
            try:
                out = self.blob_uploader(uri, src)
            except Exception as exc:
                raise GalleryError(
                    "VhdUploadFailed", f"{field}.uri {artifacts.display_uri(uri)}: {exc}"
                ) from exc
            return ReplicationResult(
                run_output_name=name,
                region=region,
                status="succeeded",
                artifact_id=None,
                artifact_uri=out or uri,
            )
        else:
            raise GalleryError(
                "BadVhdDistribute",
                f"{field}.uri {uri!r} has an unsupported scheme",
                hint="use a blob URL, a file:// URI or leave it empty",
            )
        if not (dest.is_file() and sha256_file(dest) == sha):
            copy_verified(src, dest, sha, log=log)
        log.write(f"[distribute] VHD {name}: {dest}\n")
        return ReplicationResult(
            run_output_name=name,
            region=region,
            status="succeeded",
            artifact_id=None,
            artifact_uri=_file_uri(dest),
        )

    # --------------------------------------------------------------------------------------- cleanup

    def cleanup(self, build: BuildInput, *, keep: bool, log: LogSink) -> CleanupReport:
        layout = self.layout(build)
        removed: list[str] = []
        kept: list[str] = []
        errors: list[str] = []
        run_dir = layout.run_dir
        pids = sandbox.find_processes(self._marker(layout), [run_dir])
        for pid in sandbox.kill_processes(pids):
            removed.append(f"process {pid}")
        if pids:
            _wait_gone(pids)
        for loop in _loops_under(run_dir):
            try:
                proc.run(["losetup", "-d", loop], log=log, timeout=60)
                removed.append(f"loop device {loop}")
            except ProviderError as exc:
                errors.append(f"cannot detach {loop}: {exc}")
        if keep and self._mounted(layout.root):
            # Kept for inspection as a plain folder, so that no mount outlives the run.
            kept_copy = layout.build / "root.kept"
            shutil.rmtree(kept_copy, ignore_errors=True)
            try:
                proc.run(
                    ["cp", "-a", "--reflink=auto", f"{layout.root}/.", str(kept_copy)], log=log, timeout=1800
                )
            except ProviderError as exc:
                errors.append(f"cannot copy the build root for inspection: {exc}")
                shutil.rmtree(kept_copy, ignore_errors=True)
        for mount in sorted(_mounts_under(run_dir), key=len, reverse=True):
            try:
                proc.run(["umount", mount], log=log, timeout=120)
            except ProviderError:
                try:
                    proc.run(["umount", "-l", mount], log=log, timeout=60)
                except ProviderError as exc:
                    errors.append(f"cannot unmount {mount}: {exc}")
                    continue
            removed.append(f"mount {mount}")
        if keep and (layout.build / "root.kept").is_dir() and not _mounts_under(layout.build):
            shutil.rmtree(layout.root, ignore_errors=True)
            os.replace(layout.build / "root.kept", layout.root)
            for d in (layout.upper, layout.overlay_work):
                shutil.rmtree(d, ignore_errors=True)
        if keep:
            shutil.rmtree(layout.validate_dir, ignore_errors=True)
            if layout.root.exists():
                kept.append(f"build root {layout.root}")
            if layout.logs.exists():
                kept.append(f"logs {layout.logs}")
            if layout.staging.exists():
                kept.append(f"staging {layout.staging}")
            log.write(f"[cleanup] kept for inspection: {'; '.join(kept) or 'nothing (no build root)'}\n")
            return CleanupReport(removed=removed, kept=kept, errors=errors)
        left = _mounts_under(run_dir)
        if left:
            errors.append(f"mounts remain under {run_dir}: {', '.join(left)}; not deleting it")
        elif run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            if run_dir.exists():
                errors.append(f"cannot remove {run_dir}")
            else:
                removed.append(f"run folder {run_dir}")
        for e in errors:
            log.write(f"! cleanup: {e}\n")
        return CleanupReport(removed=removed, kept=kept, errors=errors)


# ------------------------------------------------------------------------------------------ helpers


def _plain(value: Any) -> Any:
    """A dataclass (or anything) as JSON-able data."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _unescape_mount(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _mount_points() -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    return [_unescape_mount(line.split()[4]) for line in lines if len(line.split()) > 4]


def _mounts_under(folder: Path) -> list[str]:
    base = str(folder)
    return [m for m in _mount_points() if m == base or m.startswith(base + "/")]


def _loops_under(folder: Path) -> list[str]:
    out = []
    base = str(folder)
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            path = backing.read_text().strip()
            if path == base or path.startswith(base + "/"):
                out.append("/dev/" + backing.parent.parent.name)
    return out


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return
        time.sleep(0.05)


def _boot_step_result(res: Any, serial: Path | None, vlog: LogSink, log: LogSink) -> StepResult:
    """A boot.BootResult as a StepResult: the first failing check names the step."""
    details: dict[str, Any] = {
        "mode": "boot",
        "boot_seconds": res.duration,
        "checks": [{"name": c.name, "exit_code": c.exit_code} for c in res.checks],
        "serial_log": str(serial) if serial else None,
    }
    if res.ok:
        vlog.write(f"[validate] boot validation passed in {res.duration} s\n")
        return StepResult(status="succeeded", step="validate", details=details)
    failed = next((c for c in res.checks if c.exit_code != 0), None)
    step = failed.name if failed is not None else "validate"
    tail = (failed.output if failed is not None and failed.output else res.output_tail)[-LOG_TAIL:]
    reason = "; ".join(res.failures) or "boot validation failed"
    code = "ValidationTimeout" if res.timed_out else "ValidationFailed"
    vlog.write(f"! {step} failed: {reason}\n")
    return StepResult(
        status="failed",
        step=step,
        exit_code=res.exit_code,
        error=ErrorInfo(
            code=code,
            message=f"{step} failed: {reason}",
            step=step,
            exit_code=res.exit_code,
            log_tail=[str(x) for x in tail],
            log_uri=log.uri or None,
        ),
        details=details,
    )
