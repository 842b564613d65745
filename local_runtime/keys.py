"""Function keys kept in the state directory: a host master key and a default host function key.

Keys are generated with `secrets` on first start and stored in `<state>/keys.json` with mode 0600. The
auth rule is the host's: anonymous needs nothing, function accepts any function or host key (or the master
key), admin accepts only the master key. Errors: `KeysError` (the keys file is unreadable).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEYS_FILE = "keys.json"


class KeysError(Exception):
    """The keys file in the state directory cannot be read."""


def _new_key() -> str:
    # Same shape as the host's keys: URL-safe, no padding, long enough to be unguessable.
    return secrets.token_urlsafe(40)


@dataclass(frozen=True)
class Keys:
    """The host's keys. `function_keys` maps a key name to its value (host-level function keys)."""

    master: str
    function_keys: dict[str, str]

    @property
    def default(self) -> str:
        return self.function_keys["default"]

    def authorized(self, auth_level: str, presented: str | None) -> bool:
        """Whether `presented` (from `code` or `x-functions-key`) satisfies `auth_level`."""
        level = auth_level.lower()
        if level == "anonymous":
            return True
        if not presented:
            return False
        given = presented.encode()  # bytes: compare_digest rejects non-ASCII str
        if hmac.compare_digest(given, self.master.encode()):
            return True
        if level == "admin":
            return False
        return any(hmac.compare_digest(given, k.encode()) for k in self.function_keys.values())


def load_keys(state_dir: Path) -> Keys:
    """Read the keys from the state dir, creating them (file mode 0600) on first use."""
    path = state_dir / KEYS_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return Keys(master=str(data["masterKey"]), function_keys=dict(data["functionKeys"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise KeysError(
                f"{path} is not a valid keys file ({exc!r}); delete it to generate new keys on the next start"
            ) from exc
    keys = Keys(master=_new_key(), function_keys={"default": _new_key()})
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"masterKey": keys.master, "functionKeys": keys.function_keys}, f, indent=2)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return keys


def load_or_create_system_key(path: Path) -> str:
    """An extension's system key (durabletask, eventgrid) kept in `path`, created with mode 0600 on first
    use (written through a temporary file, so a crash never leaves a half-written key)."""
    if path.is_file():
        key = path.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return key
