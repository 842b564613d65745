"""Command line of the local host.

`python -m local_runtime start [APP_DIR] [--port 7071] [--state-dir DIR] [--private-storage]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from local_runtime.host import HostOptions, run_host


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m local_runtime", description="Run a Python v2 Functions app locally."
    )
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="serve the app (like `func start`)")
    start.add_argument(
        "app_dir", nargs="?", default=".", type=Path, help="folder with function_app.py and host.json"
    )
    start.add_argument(
        "--port",
        type=int,
        default=None,
        help="HTTP port (0 picks a free one); default: local.settings.json Host.LocalHttpPort, else 7071",
    )
    start.add_argument("--host", default="127.0.0.1", help="address to listen on; default 127.0.0.1")
    start.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keys, timer status, receipts, durable state, Azurite data (default APP_DIR/.state)",
    )
    start.add_argument(
        "--private-storage",
        action="store_true",
        help="with UseDevelopmentStorage=true, start Azurite on free ports (data in the state dir) and "
        "give the app the explicit connection string, instead of using ports 10000-10002",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "start":
        return run_host(
            HostOptions(
                app_dir=args.app_dir,
                port=args.port,
                host=args.host,
                state_dir=args.state_dir,
                private_storage=args.private_storage,
            )
        )
    return 2
