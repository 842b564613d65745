"""Per-step cost of the customizer sandbox: a trivial step (`true`) on a BusyBox root, confined (user
namespace, idmapped root, seccomp, limits) and unconfined, with network off and on. Prints seconds per
step and the confined/unconfined ratio.

    .venv/bin/python benchmarks/sandbox_step.py [steps]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from imagebuilder.providers.local import bases, catalog, limits, sandbox


class _Null:
    uri = ""

    def write(self, text: str) -> None:
        return None


def _per_step(root: Path, *, network: bool, confine: bool, steps: int) -> float:
    lim = limits.StepLimits(confine=confine)
    times = []
    for _ in range(steps):
        t0 = time.monotonic()
        done = sandbox.run(
            root, ["/bin/true"], network=network, inbox=None, run_marker="bench", log=_Null(), timeout=60,
            step_limits=lim,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as tmp:
        tarball = bases.ensure_base(
            catalog.resolve("ImageBuilderLocal", "busybox", "stable", "latest"), Path(tmp)
        )
        root = Path(tmp) / "root"
        bases.extract_base(tarball, root)
        for network in (False, True):
            plain = _per_step(root, network=network, confine=False, steps=steps)
            confined = _per_step(root, network=network, confine=True, steps=steps)
            print(
                f"network {'on ' if network else 'off'}: unconfined {plain * 1000:.0f} ms/step, "
                f"confined {confined * 1000:.0f} ms/step, ratio {confined / plain:.2f}"
            )


if __name__ == "__main__":
    main()
