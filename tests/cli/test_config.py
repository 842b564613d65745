"""Where `aib` sends requests: flags, environment, or the local runtime's state directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aibcli.config import ConfigError, resolve


def test_flags_win_over_the_environment_and_need_a_key(tmp_path: Path) -> None:
    env = {"AIB_ENDPOINT": "http://env:1", "AIB_KEY": "envkey"}
    target = resolve(endpoint="http://flag:2/", key="k", subscription=None, state_dir=None, environ=env)
    assert (target.endpoint, target.key, target.local_state_dir) == ("http://flag:2", "k", None)
    assert resolve(endpoint=None, key=None, subscription="s", state_dir=None, environ=env).key == "envkey"
    with pytest.raises(ConfigError, match="needs a function key"):
        resolve(endpoint="http://x", key=None, subscription=None, state_dir=None, environ={})


def test_the_local_runtime_is_found_through_its_state_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="make serve"):
        resolve(endpoint=None, key=None, subscription=None, state_dir=tmp_path, environ={})
    (tmp_path / "runtime.json").write_text(json.dumps({"pid": os.getpid(), "url": "http://127.0.0.1:7071"}))
    (tmp_path / "keys.json").write_text(json.dumps({"masterKey": "m", "functionKeys": {"default": "d"}}))
    target = resolve(endpoint=None, key=None, subscription=None, state_dir=tmp_path, environ={})
    assert (target.endpoint, target.key, target.local_state_dir) == ("http://127.0.0.1:7071", "d", tmp_path)


def test_a_stale_runtime_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "runtime.json").write_text(json.dumps({"pid": 2**22 + 12345, "url": "http://127.0.0.1:1"}))
    with pytest.raises(ConfigError, match="is not running"):
        resolve(endpoint=None, key=None, subscription=None, state_dir=tmp_path, environ={})
