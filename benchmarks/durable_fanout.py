"""Benchmark: N orchestrations x M trivial activities on local_runtime.durable vs durabletask's in-memory backend.

Ours: the DurableHost on a real aiohttp server (port 0), orchestrations started over HTTP through the
Durable RPC endpoint, history persisted in SQLite (WAL), real azure-functions-durable replay, user code
in the host's worker process (FUNCTIONS_WORKER_PROCESS_COUNT 1, as on Azure by default). Peer:
durabletask 1.12.0 InMemoryOrchestrationBackend + TaskHubGrpcWorker/Client (in-process gRPC, no
persistence) doing the same fan-out. Also: the median gap between two chained activities (end of one
to start of the next). Prints measured numbers only.

Usage: python benchmarks/durable_fanout.py [N] [M] [--runs R] [--chain K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import azure.durable_functions as df
import azure.functions as func
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_runtime.durable import DurableHost
from local_runtime.indexing import index_functions

bench_app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@bench_app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    m = context.get_input()
    results = yield context.task_all([context.call_activity("inc", i) for i in range(m)])
    return sum(results)


@bench_app.orchestration_trigger(context_name="context")
def chained(context: df.DurableOrchestrationContext):
    k = context.get_input()
    stamps = []
    for i in range(k):
        stamps.append((yield context.call_activity("stamp", i)))
    return stamps


@bench_app.activity_trigger(input_name="x")
def inc(x: int) -> int:
    return x + 1


@bench_app.activity_trigger(input_name="i")
def stamp(i: int) -> float:
    """When it ran (wall clock: activities run in the host's worker process, not in this one)."""
    return time.time()


# ---------------------------------------------------------------------------------------------- ours
class OurRuntime:
    def __init__(self, state_dir: Path, max_activities: int) -> None:
        self.state_dir = state_dir
        self.max_activities = max_activities
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.functions = index_functions(bench_app)

    def start(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = web.Application()
        self.host = DurableHost(
            functions=self.functions,
            state_dir=self.state_dir,
            host_json={
                "extensions": {"durableTask": {"maxConcurrentActivityFunctions": self.max_activities}}
            },
            app_settings={},
            base_url=base,
        )
        self.host.add_routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()
        await self.host.start()
        return self.host.rpc_base_url

    def stop(self) -> None:
        async def _stop() -> None:
            await self.host.stop()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _run_ours(
    rpc: str, name: str, inputs: list[int], poll: float = 0.005
) -> tuple[float, list[object]]:
    """Start every instance over HTTP (as start_new does), then wait for each in turn by polling its
    status over HTTP, like the peer's client waits for each instance in turn."""
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        ids = []
        for x in inputs:
            async with s.post(f"{rpc}orchestrators/{name}", json=json.dumps(x)) as r:
                ids.append((await r.json())["id"])
        outputs = []
        for iid in ids:
            while True:
                async with s.get(f"{rpc}instances/{iid}") as r:
                    body = await r.json()
                if body["runtimeStatus"] in ("Completed", "Failed", "Terminated"):
                    outputs.append(body["output"])
                    break
                await asyncio.sleep(poll)
        return time.perf_counter() - t0, outputs


def bench_ours(n: int, m: int, runs: int, chain: int, max_activities: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        rt = OurRuntime(Path(tmp), max_activities)
        rpc = rt.start()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_run_ours(rpc, "fan_out", [2]))  # warm-up
            walls = []
            stats = rt.host.engine.stats
            before = dict(stats)
            for _ in range(runs):
                wall, outs = loop.run_until_complete(_run_ours(rpc, "fan_out", [m] * n))
                bad = sum(1 for o in outs if o != sum(range(1, m + 1)))
                if bad:
                    print(f"  ours: {bad} wrong outputs!")
                walls.append(wall)
            episodes = stats["episodes"] - before["episodes"]
            print(
                f"  ours: {episodes / (runs * n):.1f} episodes (replays) per orchestration of {m} activities"
            )
            _, (stamps,) = loop.run_until_complete(_run_ours(rpc, "chained", [chain], poll=0.05))
            gaps = [stamps[i + 1] - stamps[i] for i in range(len(stamps) - 1)]  # type: ignore[index]
            size = Path(tmp, "durable.sqlite").stat().st_size + Path(tmp, "durable.sqlite-wal").stat().st_size
            print(f"  ours: durable.sqlite + WAL = {size / 1e6:.1f} MB after {runs * n + 2} orchestrations")
        finally:
            loop.close()
            rt.stop()
    return walls, gaps


# ---------------------------------------------------------------------------------------------- peer
def bench_peer(n: int, m: int, runs: int, chain: int) -> tuple[list[float], list[float]]:
    from durabletask import client as dt_client
    from durabletask import task
    from durabletask import worker as dt_worker
    from durabletask.testing import create_test_backend

    logging.getLogger("durabletask").setLevel(logging.WARNING)
    quiet = logging.getLogger("bench-peer")
    quiet.setLevel(logging.WARNING)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    backend = create_test_backend(port=port)
    addr = f"localhost:{port}"
    w = dt_worker.TaskHubGrpcWorker(host_address=addr, logger=quiet)
    peer_chain: list[tuple[float, float]] = []

    def p_inc(ctx: task.ActivityContext, x: int) -> int:
        return x + 1

    def p_stamp(ctx: task.ActivityContext, i: int) -> int:
        t = time.perf_counter()
        peer_chain.append((t, time.perf_counter()))
        return i

    def p_fan_out(ctx: task.OrchestrationContext, m: int):
        results = yield task.when_all([ctx.call_activity(p_inc, input=i) for i in range(m)])
        return sum(results)

    def p_chained(ctx: task.OrchestrationContext, k: int):
        for i in range(k):
            yield ctx.call_activity(p_stamp, input=i)
        return k

    for f in (p_inc, p_stamp):
        w.add_activity(f)
    for o in (p_fan_out, p_chained):
        w.add_orchestrator(o)
    w.start()
    c = dt_client.TaskHubGrpcClient(host_address=addr, logger=quiet)
    walls = []
    try:
        wid = c.schedule_new_orchestration(p_fan_out, input=2)
        c.wait_for_orchestration_completion(wid, timeout=60)
        for _ in range(runs):
            t0 = time.perf_counter()
            ids = [c.schedule_new_orchestration(p_fan_out, input=m) for _ in range(n)]
            for i in ids:
                st = c.wait_for_orchestration_completion(i, timeout=600)
                if st is None or int(st.serialized_output) != sum(range(1, m + 1)):
                    print("  peer: wrong output!")
            walls.append(time.perf_counter() - t0)
        cid = c.schedule_new_orchestration(p_chained, input=chain)
        c.wait_for_orchestration_completion(cid, timeout=600)
        gaps = [peer_chain[i + 1][0] - peer_chain[i][1] for i in range(len(peer_chain) - 1)]
    finally:
        w.stop()
        backend.stop()
    return walls, gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=20)
    ap.add_argument("m", nargs="?", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chain", type=int, default=30)
    ap.add_argument("--max-activities", type=int, default=10, help="maxConcurrentActivityFunctions (ours)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    acts = a.n * a.m
    print(f"workload: N={a.n} orchestrations x M={a.m} activities = {acts} activities, {a.runs} runs each")
    ours, our_gaps = bench_ours(a.n, a.m, a.runs, a.chain, a.max_activities)
    peer, peer_gaps = bench_peer(a.n, a.m, a.runs, a.chain)
    o_best, p_best = acts / statistics.median(ours), acts / statistics.median(peer)
    print(
        "  ours (HTTP start + SQLite, azure-functions-durable replay): walls "
        + ", ".join(f"{w:.3f}s" for w in ours)
        + f" -> median {o_best:.0f} activities/s"
    )
    print(
        "  peer (durabletask InMemoryOrchestrationBackend, gRPC, no persistence): walls "
        + ", ".join(f"{w:.3f}s" for w in peer)
        + f" -> median {p_best:.0f} activities/s"
    )
    print(f"ratio ours/peer (median activities/s): {o_best / p_best:.2f}  (goal >= 1.0)")
    print(
        f"median gap between two chained activities: ours {statistics.median(our_gaps) * 1000:.2f} ms, "
        f"peer {statistics.median(peer_gaps) * 1000:.2f} ms  (goal: ours < 10 ms; {a.chain} activities)"
    )


if __name__ == "__main__":
    main()
