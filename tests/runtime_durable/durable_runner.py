"""A minimal host process for crash tests: DurableHost on an aiohttp server, nothing else.

Usage: python durable_runner.py APP_DIR STATE_DIR  -> prints "READY <base_url>" once serving.
Exists so the engine's crash safety is tested on its own; test_crash.py also runs the real CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from local_runtime.durable import DurableHost
from local_runtime.indexing import index_functions, load_app


async def main(app_dir: Path, state_dir: Path) -> None:
    functions = index_functions(load_app(app_dir))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    host = DurableHost(
        functions=functions,
        state_dir=state_dir,
        host_json=json.loads((app_dir / "host.json").read_text()),
        app_settings=dict(os.environ),
        base_url=base,
    )
    app = web.Application()
    host.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    await host.start()
    print(f"READY {base}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await host.stop()
        await runner.cleanup()


if __name__ == "__main__":
    # SIGINT stops this host (asyncio.run's handler): whatever the starting process left of it (ignored or
    # blocked, which a child inherits across exec) must not make the graceful-stop test wait forever
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
