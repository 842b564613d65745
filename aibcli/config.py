"""Where `aib` sends its requests: `--endpoint/--key`, else AIB_ENDPOINT/AIB_KEY, else the local runtime
found through its state directory (`--state-dir`, AIB_STATE_DIR, default `./.state`): `runtime.json`
(written by `python -m local_runtime start` while it serves: pid and URL) and `keys.json` (its default
function key). Errors: `ConfigError`, whose message says what to set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


class ConfigError(Exception):
    """No endpoint or key could be found; the message says what to set."""


@dataclass(frozen=True)
class Target:
    endpoint: str
    key: str
    subscription: str
    local_state_dir: Path | None = None  # set when talking to the local runtime found on this machine


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_runtime(state_dir: Path) -> tuple[str, str]:
    """(url, default function key) of the local runtime serving from `state_dir`."""
    info_path = state_dir / "runtime.json"
    try:
        info = json.loads(info_path.read_text())
        url, pid = str(info["url"]), int(info["pid"])
    except FileNotFoundError:
        raise ConfigError(
            f"no local runtime is serving from {state_dir} ({info_path} does not exist): start one with "
            "`make serve`, point --state-dir (AIB_STATE_DIR) at its state directory, or give --endpoint "
            "and --key (AIB_ENDPOINT, AIB_KEY)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{info_path} cannot be read ({exc}); restart the runtime") from None
    if not _pid_alive(pid):
        raise ConfigError(
            f"the local runtime recorded in {info_path} (pid {pid}) is not running; "
            "start it with `make serve`"
        )
    keys_path = state_dir / "keys.json"
    try:
        key = str(json.loads(keys_path.read_text())["functionKeys"]["default"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the runtime's function key cannot be read from {keys_path} ({exc}); run aib as the user that "
            "started the runtime, or give --key (AIB_KEY)"
        ) from None
    return url.rstrip("/"), key


def resolve(
    *,
    endpoint: str | None,
    key: str | None,
    subscription: str | None,
    state_dir: Path | None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    env = os.environ if environ is None else environ
    endpoint = endpoint or env.get("AIB_ENDPOINT") or None
    key = key or env.get("AIB_KEY") or None
    sub = subscription or env.get("AIB_SUBSCRIPTION") or DEFAULT_SUBSCRIPTION
    if endpoint:
        if not key:
            raise ConfigError(f"--endpoint {endpoint} needs a function key: give --key or set AIB_KEY")
        return Target(endpoint.rstrip("/"), key, sub)
    folder = (state_dir or Path(env.get("AIB_STATE_DIR") or ".state")).resolve()
    url, local_key = local_runtime(folder)
    return Target(url, key or local_key, sub, local_state_dir=folder)
