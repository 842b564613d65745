"""Benchmark: rebuilds side by side. The same Debian 12 job built three ways, each cold once and warm
N times (warm = only the last customizer changed), the page cache dropped before every build, in rounds
(every builder cold, then every builder warm, N times) so that on a shared machine the builders compared
run under about the same load:

  (a) hand-written: mmdebstrap + chroot + sfdisk + `mkfs.ext4 -d` + BIOS GRUB + fixed VHD, caching its
      root tree after the expensive customizer (nginx);
  (b) mkosi 14 (Debian's package, installed here with apt-get when missing) with Incremental=yes (and
      --nspawn-keep-unit: there is no system bus here for nspawn to register a scope with), building
      the tree (Format=directory: mkosi 14's disk formats need partition-scanning loop devices, which this
      kernel lacks) with Bootable=yes, so that mkosi itself makes the initrd (dracut, by kernel-install in
      its nspawn), CacheInitrd=yes (made once, in its cached tree), and two mkosi 14 bugs worked around
      inside its timed build (see mkosi()); then the same disk + VHD tail as (a);
  (c) this project through its REST API on the local runtime (step cache on, no inVMValidations, the
      shipped-image boot check off, like the peers).

Same job: the Debian base package set (bases.DEBIAN_PACKAGES), a File customizer (a web page), a Shell
that installs nginx, a Shell that writes a marker; a bootable GPT disk (BIOS GRUB); a fixed VHD. Then, for
(c): a rerun with nothing changed (work before distribution), and one build with an inVMValidation and the
shipped-image boot check against a bare boot-to-login of the same VHD under the same QEMU.

Prints medians, ratios us/peer and the per-phase split. Goals (issue 10): cold <= 1.1x (a); warm <= 0.8x
the faster peer; rerun with nothing changed <= 2 s before distribution; each boot <= 1.3x bare boot;
orchestration overhead < 5 %. Measures only; asserts nothing.

    .venv/bin/python benchmarks/rebuild.py [--warm 3] [--skip-mkosi] [--skip-boot] [--skip-peers]
                                           [--only hand-written|mkosi|project]

Unless --skip-boot, each peer's last VHD is also booted as it ships (to a login prompt or multi-user.target),
so that a peer's figures are those of a disk that boots.

Capture's own split (size walk, disk, VHD, sha256, SBOM) per build of (c) is in the per-phase medians.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.demo import EXAMPLES, ImageBuilderApi, LocalRuntime, serve_examples  # noqa: E402
from imagebuilder.providers.local import bases, boot, disk  # noqa: E402
from imagebuilder.store import open_store  # noqa: E402
from local_runtime.azurite import start_azurite  # noqa: E402

PAGE = EXAMPLES / "www" / "index.html"
NGINX = (
    "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx"
    " && apt-get clean"
)


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        print(f"  (page cache not dropped: {exc})")


def sh(script: str, *, cwd: Path | None = None) -> None:
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, cwd=cwd)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


# ------------------------------------------------------------------------------ the shared disk tail


def disk_and_vhd(tree: Path, out: Path) -> dict[str, float]:
    """sfdisk + mkfs.ext4 -d + BIOS GRUB (the same tool calls as the project: disk.build_disk), then a
    fixed VHD with qemu-img, as a script would."""
    raw = out.with_suffix(".raw")
    t = {"disk": timed(lambda: disk.build_disk(tree, raw, generation="V1", bootable=True))}
    t["vhd"] = timed(
        lambda: subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw, out],
            check=True,
        )
    )
    raw.unlink()
    return t


def chroot_run(tree: Path, command: str) -> None:
    """`command` in the tree, with /proc, /sys, /dev and the host's resolv.conf, in a private mount
    namespace (nothing outlives it), no service started (policy-rc.d)."""
    sh(
        f"""
export R={tree}
printf '#!/bin/sh\\nexit 101\\n' > $R/usr/sbin/policy-rc.d; chmod 755 $R/usr/sbin/policy-rc.d
cp /etc/resolv.conf $R/etc/resolv.conf
unshare --mount --propagation private bash -euo pipefail -c '
  mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount --rbind /dev $R/dev
  chroot $R /bin/sh -c "{command}"'
rm -f $R/usr/sbin/policy-rc.d; : > $R/etc/resolv.conf
"""
    )


def mmdebstrap(tree: Path, extra: tuple[str, ...] = ()) -> None:
    mirror, security = bases.debian_mirrors()
    subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private",
            "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory", "--components=main",
            f"--include={','.join(bases.DEBIAN_PACKAGES + extra)}",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
            "bookworm", str(tree), f"deb {mirror} bookworm main", f"deb {mirror} bookworm-updates main",
            f"deb {security} bookworm-security main",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


# ------------------------------------------------------------------------------ (a) hand-written


def handwritten(work: Path, marker: str, cold: bool) -> dict[str, float]:
    cache = work / "rootfs-after-nginx"
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    t: dict[str, float] = {}
    if cold or not cache.is_dir():
        shutil.rmtree(cache, ignore_errors=True)
        t["base"] = timed(lambda: mmdebstrap(tree))
        t["file"] = timed(lambda: shutil.copy(PAGE, tree / "tmp" / "index.html"))
        t["nginx"] = timed(lambda: chroot_run(tree, NGINX + " && install -D -m 0644 /tmp/index.html "
                                                   "/var/www/html/index.html"))  # fmt: skip
        t["cache"] = timed(lambda: subprocess.run(["cp", "-a", "--reflink=auto", tree, cache], check=True))
    else:
        t["restore"] = timed(lambda: subprocess.run(["cp", "-a", "--reflink=auto", cache, tree], check=True))
    t["marker"] = timed(lambda: (tree / "marker").write_text(marker + "\n"))
    t.update(disk_and_vhd(tree, work / "disk.vhd"))
    shutil.rmtree(tree, ignore_errors=True)
    return t


# ------------------------------------------------------------------------------ (b) mkosi


def ensure_mkosi() -> str | None:
    if shutil.which("mkosi"):
        return None
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", "mkosi"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not shutil.which("mkosi"):
        return f"apt-get install mkosi failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    return None


def mkosi_version() -> str:
    done = subprocess.run(["mkosi", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip() or "?"


MKOSI_NOTE = (
    "mkosi: Format=directory, Bootable=yes (mkosi installs dracut and makes the initrd itself with "
    "kernel-install in its nspawn), CacheInitrd=yes, Incremental=yes; mkosi 14 workarounds, all inside its "
    "timed build: an empty image.cache-pre-dev (without a build script it never makes one and so rebuilds "
    "its cache every time), a fixed MachineID= (else the cached initrd is looked up under a new machine id) "
    "with a mkosi.finalize that resets /etc/machine-id as mkosi does otherwise; then the same disk + VHD "
    "tail as the hand-written script"
)


def mkosi(work: Path, marker: str, cold: bool) -> dict[str, float]:
    """mkosi 14 (Debian bookworm's) builds the tree, initrd included; the disk + VHD tail is disk_and_vhd.

    mkosi 14 makes an initrd only when Bootable=yes; with Format=directory that works here (its disk
    formats need partition-scanning loop devices, which this kernel lacks): it adds dracut to the packages
    and runs `kernel-install add` in systemd-nspawn, which leaves /boot/initrd.img-<kver> (dracut,
    hostonly=no) in the tree. CacheInitrd=yes builds it once, in the cached tree, as the other builders
    keep theirs. Two mkosi 14 bugs are worked around here, both named in MKOSI_NOTE and printed: without a
    build script `need_cache_images` still wants image.cache-pre-dev, so the cached tree would be rebuilt
    on every run (systemd/mkosi#296): an empty placeholder (never read: it is only used by a build script);
    and with a directory cache the final stage takes a new machine id and then looks for the cached
    initrd under it: a fixed MachineID=, with a mkosi.finalize that empties /etc/machine-id
    ("uninitialized") as mkosi itself does when MachineID= is unset. Removing the previous output tree is
    not timed (the hand-written script's cleanup is not either). What mkosi adds to the package set stays
    (dracut in place of initramfs-tools, systemd-resolved): that is mkosi's image."""
    proj = work / "mkosi"
    if cold:
        shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True, exist_ok=True)
    mirror, _ = bases.debian_mirrors()
    if cold:
        (proj / "mkosi.conf").write_text(
            "[Distribution]\nDistribution=debian\nRelease=bookworm\n"
            f"Mirror={mirror}\n\n"
            "[Output]\nFormat=directory\nOutput=image\nBootable=yes\nCacheInitrd=yes\n"
            f"MachineID={uuid.uuid4().hex}\n\n"
            f"[Content]\nPackages={','.join((*bases.DEBIAN_PACKAGES, 'nginx'))}\nWithDocs=yes\n"
        )
        (proj / "mkosi.extra" / "var" / "www" / "html").mkdir(parents=True, exist_ok=True)
        shutil.copy(PAGE, proj / "mkosi.extra" / "var" / "www" / "html" / "index.html")
        finalize = proj / "mkosi.finalize"
        finalize.write_text(
            '#!/bin/sh\n[ "$1" = final ] && echo uninitialized > "$BUILDROOT/etc/machine-id"\nexit 0\n'
        )
        finalize.chmod(0o755)
    post = proj / "mkosi.postinst"
    post.write_text(f"#!/bin/sh\necho {marker} > /marker\n")
    post.chmod(0o755)
    # --nspawn-keep-unit: its systemd-nspawn steps (kernel-install, the postinst script) run in our own
    # scope; without it nspawn asks systemd over D-Bus for a scope unit and fails where there is no system
    # bus (this host).
    argv = ["mkosi", "--nspawn-keep-unit", "--incremental", "--force"] + (["--force"] if cold else [])
    log = work / "mkosi.log"

    def build() -> None:
        (proj / "image.cache-pre-dev").mkdir(exist_ok=True)  # see the docstring (mkosi 14, no build script)
        with log.open("w") as out:
            done = subprocess.run(
                [*argv, "build"], cwd=proj, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if done.returncode != 0:
            tail = [
                ln for ln in log.read_text(errors="replace").splitlines() if not ln.startswith("Ignoring")
            ]
            raise subprocess.CalledProcessError(done.returncode, argv, output="\n".join(tail[-15:]))

    t = {"mkosi": timed(build)}
    tree = proj / "image"
    t.update(disk_and_vhd(tree, work / "mkosi.vhd"))
    shutil.rmtree(tree, ignore_errors=True)  # as the hand-written script does, after the build
    return t


# ------------------------------------------------------------------------------ (c) this project


def template(url: str, marker: str, *, validate: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {
        "buildTimeoutInMinutes": 120,
        "source": {
            "type": "PlatformImage",
            "publisher": "Debian",
            "offer": "debian-12",
            "sku": "12",
            "version": "latest",
        },
        "customize": [
            {
                "type": "File",
                "name": "page",
                "sourceUri": f"{url}/www/index.html",
                "destination": "/tmp/index.html",
            },
            {
                "type": "Shell",
                "name": "nginx",
                "inline": [
                    f"sudo sh -c '{NGINX}'",
                    "sudo install -D -m 0644 /tmp/index.html /var/www/html/index.html",
                ],
            },
            {"type": "Shell", "name": "marker", "inline": [f"echo {marker} | sudo tee /marker"]},
        ],
        "distribute": [{"type": "VHD", "runOutputName": "vhd"}],
    }
    if validate:
        props["validate"] = {
            "inVMValidations": [{"type": "Shell", "name": "nginx", "inline": ["test -x /usr/sbin/nginx"]}]
        }
    return {
        "location": "westeurope",
        "identity": {
            "type": "UserAssigned",
            "userAssignedIdentities": {
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/bench/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/bench": {}
            },
        },
        "properties": props,
    }


class Project:
    def __init__(self, api: ImageBuilderApi, store: Any, url: str) -> None:
        self.api, self.store, self.url, self.n = api, store, url, 0

    @classmethod
    def on(cls, runtime: LocalRuntime, connection_string: str, url: str) -> Project:
        """Builds through a started runtime's REST API, read back from its store."""
        api = ImageBuilderApi(runtime.base_url, runtime.key, resource_group="bench")
        return cls(api, open_store(connection_string), url)

    def build(self, marker: str, *, validate: bool = False) -> dict[str, Any]:
        self.n += 1
        name = f"bench-{self.n}"
        self.api.put_template(name, template(self.url, marker, validate=validate))
        t0 = time.monotonic()
        self.api.run(name)
        final = self.api.watch(name, timeout=7200, interval=0.1)
        wall = time.monotonic() - t0
        record = self.store.runs.latest(self.api.subscription, self.api.resource_group, name)
        details = record.details if record is not None else {}
        if final.get("runState") != "Succeeded":
            raise SystemExit(f"{name}: {final}")
        out: dict[str, Any] = {"total": wall, "work": float(details.get("workSeconds") or 0.0)}
        if record is not None and record.end_time is not None:
            # the run's own wall (POST .../run to its terminal status, stamped by the app): the client's
            # polling delay is not orchestration overhead (see benchmarks/build_local.py)
            out["run"] = record.end_time.timestamp() - record.created_time.timestamp()
        for phase, p in (details.get("phases") or {}).items():
            out[phase] = float(p.get("seconds") or 0.0)
        out["hits"] = sum(1 for s in details.get("steps") or [] if (s.get("cache") or {}).get("hit"))
        out["log"] = self.store.runs.log(record.run).read() if record is not None else ""
        # capture's own split (the "[capture] ... in N s {timings}" line of the run's log)
        found = re.search(r"\[capture\] .* in [\d.]+ s (\{.*\})", out["log"])
        if found:
            for step, seconds in ast.literal_eval(found.group(1)).items():
                out[f"capture.{step}"] = float(seconds)
        outputs = {o["name"]: o["properties"] for o in self.api.run_outputs(name)}
        out["vhd"] = outputs["vhd"]["artifactUri"]
        return out


# ------------------------------------------------------------------------------ reporting


def median(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


def total(row: dict[str, float]) -> float:
    return row["total"] if "total" in row else sum(v for k, v in row.items() if isinstance(v, float))


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        "?",
    )
    mem = int(
        next(
            ln.split()[1]
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
    )
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} vCPU {cpu}, {mem // 1024**2} GiB, kernel {platform.release()}, "
        f"load average at start {load[0]:.1f} (shared with other builds)"
    )


#: each peer's VHD (in its work folder) after its last build; booted once when boots are measured
PEER_VHD = {"hand-written": "disk.vhd", "mkosi": "mkosi.vhd"}


def rounds(
    builders: dict[str, Callable[[str, bool], dict[str, Any]]],
    results: dict[str, dict[str, list[dict[str, float]]]],
    warm: int,
) -> None:
    """Round by round (every builder cold, then every builder warm, ...): on a shared machine the builders
    being compared run under about the same load."""
    for label in builders:
        results[label] = {"cold": [], "warm": []}
    for i in range(warm + 1):
        kind = "cold" if i == 0 else "warm"
        for label, build in list(builders.items()):
            drop_caches()
            try:
                row = build(f"m{i}", i == 0)
            except (subprocess.CalledProcessError, disk.DiskError) as exc:
                # a peer that cannot build here (its command fails, or its tree has no kernel + initrd so
                # the same bootable disk cannot be made) is reported, not measured
                print(f"{label}: failed ({exc}: {getattr(exc, 'output', '') or ''}); not measured")
                del builders[label], results[label]
                continue
            results[label][kind].append(row)
            hits = f" (cache hits {row['hits']})" if "hits" in row else ""
            print(f"{label} {kind if i == 0 else f'warm{i}'}: {total(row):.2f} s{hits} "
                  f"load {os.getloadavg()[0]:.1f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--skip-mkosi", action="store_true")
    parser.add_argument("--skip-boot", action="store_true")
    parser.add_argument("--skip-peers", action="store_true", help="this project only (profiling)")
    parser.add_argument(
        "--only",
        choices=("hand-written", "mkosi", "project"),
        help="one builder only (development; no ratios)",
    )
    args = parser.parse_args(argv)
    print(machine())
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        peers: dict[str, Callable[[Path, str, bool], dict[str, float]]] = {"hand-written": handwritten}
        if args.skip_peers or args.only == "project":
            peers = {}
        elif not args.skip_mkosi and args.only in (None, "mkosi"):
            problem = ensure_mkosi()
            if problem:
                print(f"mkosi: not measured ({problem})")
            else:
                print(f"{mkosi_version()}. {MKOSI_NOTE}")
                peers["mkosi"] = mkosi
        if args.only:
            peers = {k: v for k, v in peers.items() if k == args.only}
        builders: dict[str, Callable[[str, bool], dict[str, Any]]] = {}
        for label, fn in peers.items():
            work = tmp / label
            work.mkdir()
            builders[label] = functools.partial(fn, work)
        if args.only not in (None, "project"):
            rounds(builders, results, args.warm)
        else:
            with start_azurite(tmp / "azurite") as az, serve_examples() as url:
                env = {
                    "IMAGEBUILDER_PROVIDER": "local",
                    "AzureWebJobsStorage": az.connection_string,
                    "IMAGEBUILDER_STATE_DIR": str(tmp / "provider"),
                    "IMAGEBUILDER_CACHE_DIR": str(tmp / "cache"),  # empty: the first build is cold
                    "IMAGEBUILDER_LOCAL_BOOT_CHECK": "off",
                }
                runtime = LocalRuntime(state_dir=tmp / "runtime", env=env).start()
                try:
                    project = Project.on(runtime, az.connection_string, url)
                    builders["this project"] = lambda marker, cold: project.build(marker)
                    rounds(builders, results, args.warm)
                    drop_caches()
                    same = project.build(f"m{args.warm}")
                    before = sum(same.get(p, 0.0) for p in ("Building", "Customizing", "Validating"))
                    print(f"rerun, nothing changed: {same['total']:.2f} s, {before:.2f} s before distribution "
                          f"(goal <= 2 s), cache hits {same['hits']}")  # fmt: skip
                finally:
                    runtime.stop()
                if not args.skip_boot:
                    boot_peers(tmp, results)
                    env["IMAGEBUILDER_LOCAL_BOOT_CHECK"] = "on"
                    runtime = LocalRuntime(state_dir=tmp / "runtime", env=env).start()
                    try:
                        project = Project.on(runtime, az.connection_string, url)
                        project.n = 100
                        row = project.build("boot", validate=True)
                    finally:
                        runtime.stop()
                    vboot = re.search(r"boot validation passed in ([\d.]+) s", row["log"])
                    sboot = re.search(
                        r"shipped-image boot check reached its first-boot target in ([\d.]+) s", row["log"]
                    )
                    vhd = Path(row["vhd"].removeprefix("file://"))
                    bare = boot.boot_to_target(vhd, generation="V1", timeout=900, workdir=tmp / "bare")
                    print(f"bare boot to login of the shipped VHD: {bare.seconds:.2f} s (ok={bare.ok})")
                    for label, m in (("inVMValidations boot", vboot), ("shipped-image boot check", sboot)):
                        if m:
                            s = float(m.group(1))
                            print(f"{label}: {s:.2f} s = {s / bare.seconds:.2f}x bare (goal <= 1.3x)")
        if args.only not in (None, "project") and not args.skip_boot:
            boot_peers(tmp, results)
    report(results)
    return 0


def boot_peers(tmp: Path, results: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    """Each peer's last VHD booted as it ships (the project's boot helper, snapshot=on) to a login prompt
    or multi-user.target: a peer's figure counts only for a disk that boots."""
    for label, name in PEER_VHD.items():
        vhd = tmp / label / name
        if label in results and vhd.is_file():
            r = boot.boot_to_target(vhd, generation="V1", timeout=900, workdir=tmp / "bare" / label)
            why = f", {r.reason}" if r.reason else ""
            print(f"{label}'s VHD (its last build), bare boot to login: {r.seconds:.2f} s (ok={r.ok}{why})")


def report(results: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    print()
    print("| builder | cold s | warm s (median) | warm / this project |")
    print("|---|---|---|---|")
    mine = results.get("this project")
    ours = median(mine["warm"], "total") if mine else float("nan")
    for label, rows in results.items():
        cold = total(rows["cold"][0]) if rows["cold"] else float("nan")
        warm = statistics.median(total(r) for r in rows["warm"]) if rows["warm"] else float("nan")
        print(f"| {label} | {cold:.1f} | {warm:.1f} | {warm / ours:.2f} |")
    peers_warm = [
        statistics.median(total(r) for r in rows["warm"])
        for k, rows in results.items()
        if k != "this project" and rows["warm"]
    ]
    if mine and peers_warm:
        print(f"\nwarm: this project / faster peer = {ours / min(peers_warm):.2f} (goal <= 0.8)")
    hand = results.get("hand-written")
    if mine and mine["cold"] and hand and hand["cold"]:
        print(
            f"cold: this project / hand-written = {total(mine['cold'][0]) / total(hand['cold'][0]):.2f} (goal <= 1.1)"
        )
    print("\nper-phase medians (s):")
    for label, rows in results.items():
        for kind in ("cold", "warm"):
            keys = sorted({k for r in rows[kind] for k, v in r.items() if isinstance(v, float)})
            print(f"  {label} {kind}: " + ", ".join(f"{k} {median(rows[kind], k):.2f}" for k in keys))
    if mine:
        overhead = [(r["run"] - r["work"]) / r["run"] for r in mine["warm"] if r.get("run", 0) > 0]
        if overhead:
            print(f"orchestration overhead (warm, median): {statistics.median(overhead):.3f} (goal < 0.05)")
    print(json.dumps({"machine": machine()}))


if __name__ == "__main__":
    raise SystemExit(main())
