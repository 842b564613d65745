"""Benchmark: rebuilds side by side. The same Debian 12 job built three ways, each cold once and warm
N times (warm = only the last customizer changed), the page cache dropped before every build, in rounds
(every builder cold, then every builder warm, N times) so that on a shared machine the builders compared
run under about the same load:

  (a) hand-written: mmdebstrap + chroot + sfdisk + `mkfs.ext4 -d` + BIOS GRUB + fixed VHD, caching its
      root tree after the expensive customizer (nginx);
  (b) mkosi (Debian's package, installed here with apt-get when missing) with Incremental=yes (and
      --nspawn-keep-unit: there is no system bus here for nspawn to register a scope with), building
      the tree (Format=directory: mkosi 14's disk formats need partition-scanning loop devices, which this
      kernel lacks), then the same disk + VHD tail as (a);
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


def mkosi(work: Path, marker: str, cold: bool) -> dict[str, float]:
    proj = work / "mkosi"
    if cold:
        shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True, exist_ok=True)
    mirror, _ = bases.debian_mirrors()
    (proj / "mkosi.conf").write_text(
        "[Distribution]\nDistribution=debian\nRelease=bookworm\n"
        f"Mirror={mirror}\n\n"
        "[Output]\nFormat=directory\nOutput=image\n\n"
        f"[Content]\nPackages={','.join((*bases.DEBIAN_PACKAGES, 'nginx'))}\nWithDocs=yes\n"
    )
    (proj / "mkosi.extra" / "var" / "www" / "html").mkdir(parents=True, exist_ok=True)
    shutil.copy(PAGE, proj / "mkosi.extra" / "var" / "www" / "html" / "index.html")
    post = proj / "mkosi.postinst"
    post.write_text(f"#!/bin/sh\necho {marker} > /marker\n")
    post.chmod(0o755)
    # --nspawn-keep-unit: its systemd-nspawn steps (the postinst script) run in our own scope; without it
    # nspawn asks systemd over D-Bus for a scope unit and fails where there is no system bus (this host).
    argv = ["mkosi", "--nspawn-keep-unit", "--incremental", "--force"] + (["--force"] if cold else [])
    t = {
        "mkosi": timed(
            lambda: subprocess.run(
                [*argv, "build"], cwd=proj, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    }
    t.update(disk_and_vhd(proj / "image", work / "mkosi.vhd"))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--skip-mkosi", action="store_true")
    parser.add_argument("--skip-boot", action="store_true")
    parser.add_argument("--skip-peers", action="store_true", help="this project only (profiling)")
    args = parser.parse_args(argv)
    print(machine())
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        peers: dict[str, Callable[[Path, str, bool], dict[str, float]]] = {"hand-written": handwritten}
        if args.skip_peers:
            peers = {}
        elif not args.skip_mkosi:
            problem = ensure_mkosi()
            if problem:
                print(f"mkosi: not measured ({problem})")
            else:
                peers["mkosi"] = mkosi
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
                project = Project(
                    ImageBuilderApi(runtime.base_url, runtime.key, resource_group="bench"),
                    open_store(az.connection_string),
                    url,
                )
                builders: dict[str, Callable[[str, bool], dict[str, Any]]] = {}
                for label, fn in peers.items():
                    work = tmp / label
                    work.mkdir()
                    builders[label] = functools.partial(fn, work)
                builders["this project"] = lambda marker, cold: project.build(marker)
                # Round by round (every builder cold, then every builder warm, ...): on a shared machine
                # the builders being compared run under about the same load.
                for label in builders:
                    results[label] = {"cold": [], "warm": []}
                for i in range(args.warm + 1):
                    kind = "cold" if i == 0 else "warm"
                    for label, build in list(builders.items()):
                        drop_caches()
                        try:
                            row = build(f"m{i}", i == 0)
                        except (subprocess.CalledProcessError, disk.DiskError) as exc:
                            # e.g. mkosi 14 here: its directory image has no initrd (it makes one only
                            # for its own disk formats, and a prepare script that could make one fails
                            # to idmap-mount the build sources in nspawn), so the same disk cannot be made
                            print(
                                f"{label}: failed ({exc}: {getattr(exc, 'output', '') or ''}); not measured"
                            )
                            del builders[label], results[label]
                            continue
                        results[label][kind].append(row)
                        hits = f" (cache hits {row['hits']})" if "hits" in row else ""
                        print(f"{label} {kind if i == 0 else f'warm{i}'}: {total(row):.2f} s{hits} "
                              f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
                drop_caches()
                same = project.build(f"m{args.warm}")
                before = sum(same.get(p, 0.0) for p in ("Building", "Customizing", "Validating"))
                print(f"rerun, nothing changed: {same['total']:.2f} s, {before:.2f} s before distribution "
                      f"(goal <= 2 s), cache hits {same['hits']}")  # fmt: skip
            finally:
                runtime.stop()
            if not args.skip_boot:
                env["IMAGEBUILDER_LOCAL_BOOT_CHECK"] = "on"
                runtime = LocalRuntime(state_dir=tmp / "runtime", env=env).start()
                try:
                    project = Project(
                        ImageBuilderApi(runtime.base_url, runtime.key, resource_group="bench"),
                        open_store(az.connection_string),
                        url,
                    )
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
    print()
    print("| builder | cold s | warm s (median) | warm / this project |")
    print("|---|---|---|---|")
    ours = median(results["this project"]["warm"], "total")
    for label, rows in results.items():
        cold = total(rows["cold"][0]) if rows["cold"] else float("nan")
        warm = statistics.median(total(r) for r in rows["warm"])
        print(f"| {label} | {cold:.1f} | {warm:.1f} | {warm / ours:.2f} |")
    peers_warm = [
        statistics.median(total(r) for r in rows["warm"])
        for k, rows in results.items()
        if k != "this project"
    ]
    if peers_warm:
        print(f"\nwarm: this project / faster peer = {ours / min(peers_warm):.2f} (goal <= 0.8)")
    hand = results.get("hand-written")
    if hand and hand["cold"]:
        print(
            f"cold: this project / hand-written = {total(results['this project']['cold'][0]) / total(hand['cold'][0]):.2f} (goal <= 1.1)"
        )
    print("\nper-phase medians (s):")
    for label, rows in results.items():
        for kind in ("cold", "warm"):
            keys = sorted({k for r in rows[kind] for k, v in r.items() if isinstance(v, float)})
            print(f"  {label} {kind}: " + ", ".join(f"{k} {median(rows[kind], k):.2f}" for k in keys))
    w = results["this project"]["warm"]
    overhead = [(r["run"] - r["work"]) / r["run"] for r in w if r.get("run", 0) > 0]
    print(f"orchestration overhead (warm, median): {statistics.median(overhead):.3f} (goal < 0.05)")
    print(json.dumps({"machine": machine()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
