"""Benchmark: the demo template (or --template) built through the REST API on the local runtime, first
with an empty base cache (cold), then again with the cache warm. Prints, per build, the time of each
phase, the activities' own work, and the orchestration overhead: (wall - work) / wall, where wall is
the client's time from POST .../run to a terminal lastRunStatus and work is the sum of the phase
activities' own durations. Goals: overhead < 5 %, warm build < 60 s. Prints numbers only.

    .venv/bin/python benchmarks/build_local.py [--template FILE] [--runs-warm N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.demo import (  # noqa: E402
    EXAMPLES,
    ImageBuilderApi,
    LocalRuntime,
    load_template,
    serve_examples,
)
from imagebuilder.store import open_store  # noqa: E402
from local_runtime.azurite import start_azurite  # noqa: E402


def one_build(api: ImageBuilderApi, store: Any, name: str, template: dict[str, Any]) -> dict[str, Any]:
    api.put_template(name, template)
    t0 = time.monotonic()
    api.run(name)
    final = api.watch(name, timeout=3600, interval=0.1)
    wall = time.monotonic() - t0
    record = store.runs.latest(api.subscription, api.resource_group, name)
    details = record.details if record is not None else {}
    return {"final": final, "wall": wall, "details": details}


def report(label: str, result: dict[str, Any]) -> None:
    details = result["details"]
    wall = result["wall"]
    work = float(details.get("workSeconds") or 0.0)
    phases = details.get("phases") or {}
    print(f"{label}: runState={result['final'].get('runState')} wall={wall:.2f}s work={work:.2f}s")
    for phase, p in phases.items():
        print(
            f"  {phase:<13} wall={float(p.get('seconds') or 0):8.2f}s work={float(p.get('workSeconds') or 0):8.2f}s"
        )
    overhead = (wall - work) / wall if wall > 0 else 0.0
    print(f"  overhead={wall - work:.2f}s ratio={overhead:.4f} (goal < 0.05)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--template", type=Path, default=EXAMPLES / "templates" / "debian12-webserver.json")
    parser.add_argument("--runs-warm", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp_name:
        tmp = Path(tmp_name)
        with start_azurite(tmp / "azurite") as az, serve_examples() as url:
            env = {
                "IMAGEBUILDER_PROVIDER": "local",
                "AzureWebJobsStorage": az.connection_string,
                "IMAGEBUILDER_STATE_DIR": str(tmp / "provider"),
                "IMAGEBUILDER_CACHE_DIR": str(tmp / "cache"),  # empty: the first build is cold
            }
            runtime = LocalRuntime(state_dir=tmp / "runtime", env=env).start()
            try:
                api = ImageBuilderApi(runtime.base_url, runtime.key, resource_group="bench")
                store = open_store(az.connection_string)
                template = load_template(args.template.resolve(), url)
                report("cold", one_build(api, store, "bench-cold", template))
                for i in range(args.runs_warm):
                    report(f"warm{i + 1}", one_build(api, store, f"bench-warm{i + 1}", template))
            finally:
                runtime.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
