"""Benchmark: N BusyBox builds started at once through the REST API on the local runtime, with the build
slot limit (IMAGEBUILDER_MAX_CONCURRENT_BUILDS) at its default for this machine and with it lifted (= N),
each on a fresh runtime and state (same base cache). Prints, per setting: the wall time until all are
done, the mean and worst time from POST .../run to a run's recorded end, and the peak resident memory of
the runtime's whole process group (host, workers, sandboxed steps, QEMU) and of the host and its workers
alone, sampled every 0.2 s; then the limited / unlimited ratios. Measures only; asserts nothing.

Each build: a Shell step that burns about `--work` seconds of one core (sha256 over /dev/zero), unique
per template so no step cache hit makes it free; a VHD. `--boot` turns on the shipped-image boot check
(QEMU TCG: the memory-heavy part; minutes per build on 2 cores).

    .venv/bin/python benchmarks/concurrency.py [--builds 8] [--work 4] [--boot]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.demo import ImageBuilderApi, LocalRuntime, load_template, serve_examples  # noqa: E402
from imagebuilder.settings import default_max_concurrent_builds  # noqa: E402
from imagebuilder.store import open_store  # noqa: E402
from local_runtime.azurite import start_azurite  # noqa: E402

SHARED_CACHE = Path(os.environ.get("IMAGEBUILDER_TEST_CACHE", "/var/tmp/imagebuilder-test-cache"))


def seed(cache: Path) -> None:
    """Hard-link the machine's built base tarballs (a cold base is a download, not what is measured)."""
    cache.mkdir(parents=True, exist_ok=True)
    if SHARED_CACHE.is_dir():
        for f in SHARED_CACHE.iterdir():
            if f.is_file() and f.name.endswith((".tar.zst", ".manifest.json")):
                try:
                    os.link(f, cache / f.name)
                except OSError:
                    shutil.copy2(f, cache / f.name)


class Memory(threading.Thread):
    """Peak resident memory of a process and all its descendants (sandboxed steps, QEMU), and of its
    `local_runtime` processes alone (the host and its worker processes)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.peak_all_kb = 0
        self.peak_runtime_kb = 0

    def run(self) -> None:
        while not self.stop.is_set():
            procs: dict[int, tuple[int, int, bool]] = {}  # pid -> (ppid, rss kB, is local_runtime)
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    status = Path(f"/proc/{entry}/status").read_text()
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                rss = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
                procs[int(entry)] = (ppid, rss, b"local_runtime" in cmdline)
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            total = runtime = 0
            todo = [self.root] if self.root in procs else []
            while todo:
                pid = todo.pop()
                _, rss, ours = procs[pid]
                total += rss
                runtime += rss if ours else 0
                todo.extend(children.get(pid, []))
            self.peak_all_kb = max(self.peak_all_kb, total)
            self.peak_runtime_kb = max(self.peak_runtime_kb, runtime)
            self.stop.wait(0.2)


def template(url: str, name: str, work: float) -> dict[str, Any]:
    data = load_template(ROOT / "examples" / "templates" / "busybox-webpage.json", url)
    blocks = max(1, int(work * 150))  # ~150 MiB/s of sha256 on one core of this machine kind
    data["properties"].update(
        customize=[
            {
                "type": "Shell",
                "name": "work",
                "inline": [
                    f"dd if=/dev/zero bs=1M count={blocks} 2>/dev/null | sha256sum",
                    f"echo {name} | sudo tee /etc/bench >/dev/null",
                ],
            }
        ],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "vhd"}],
    )
    return data


def measure(
    az: Any, url: str, base: Path, limit: int, builds: int, work: float, boot: bool
) -> dict[str, Any]:
    cache = base.parent / "cache"
    env = {
        "IMAGEBUILDER_PROVIDER": "local",
        "AzureWebJobsStorage": az.connection_string,
        "IMAGEBUILDER_STATE_DIR": str(base / "provider"),
        "IMAGEBUILDER_CACHE_DIR": str(cache),
        "IMAGEBUILDER_STEP_CACHE_DIR": str(base / "steps"),
        "IMAGEBUILDER_LOCAL_BOOT_CHECK": "on" if boot else "off",
        "IMAGEBUILDER_MAX_CONCURRENT_BUILDS": str(limit),
    }
    runtime = LocalRuntime(state_dir=base / "runtime", env=env).start()
    try:
        api = ImageBuilderApi(runtime.base_url, runtime.key, resource_group=f"bench-{base.name}")
        store = open_store(az.connection_string)
        names = [f"conc-{i}" for i in range(builds)]
        for name in names:
            api.put_template(name, template(url, f"{base.name}-{name}", work))
        assert runtime.proc is not None
        memory = Memory(runtime.proc.pid)
        memory.start()
        start = time.monotonic()
        threads = [threading.Thread(target=api.run, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        finals = {n: api.watch(n, timeout=7200, interval=0.5) for n in names}
        wall = time.monotonic() - start
        memory.stop.set()
        memory.join(5)
        latencies = []
        for n in names:
            record = store.runs.latest(api.subscription, api.resource_group, n)
            assert record is not None and record.end_time is not None
            latencies.append((record.end_time - record.created_time).total_seconds())
        failed = [n for n, f in finals.items() if f.get("runState") != "Succeeded"]
        return {
            "limit": limit,
            "wall": wall,
            "mean": sum(latencies) / len(latencies),
            "worst": max(latencies),
            "all_mb": memory.peak_all_kb / 1024,
            "runtime_mb": memory.peak_runtime_kb / 1024,
            "failed": failed,
        }
    finally:
        runtime.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--builds", type=int, default=8)
    parser.add_argument("--work", type=float, default=4.0, help="seconds of one core per build step")
    parser.add_argument("--boot", action="store_true", help="shipped-image boot check on (QEMU TCG)")
    args = parser.parse_args(argv)
    limit = default_max_concurrent_builds("local")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} vCPU, load {load[0]:.2f}; default IMAGEBUILDER_MAX_CONCURRENT_BUILDS={limit}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-conc-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        seed(tmp / "cache")
        with start_azurite(tmp / "azurite") as az, serve_examples() as url:
            results = []
            for setting in (limit, args.builds):
                r = measure(az, url, tmp / f"limit{setting}", setting, args.builds, args.work, args.boot)
                results.append(r)
                print(
                    f"limit {setting:>2}: all {args.builds} done in {r['wall']:6.1f} s; run to end mean "
                    f"{r['mean']:6.1f} s, worst {r['worst']:6.1f} s; peak RSS all {r['all_mb']:6.0f} MB, "
                    f"host+workers {r['runtime_mb']:5.0f} MB; failed {r['failed'] or 'none'}"
                )
    limited, unlimited = results
    print(
        f"ratios limited/unlimited: wall {limited['wall'] / unlimited['wall']:.2f}, "
        f"mean run-to-end {limited['mean'] / unlimited['mean']:.2f}, "
        f"peak RSS all {limited['all_mb'] / unlimited['all_mb']:.2f}"
    )
    load = os.getloadavg()
    print(f"load at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
