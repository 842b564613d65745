"""Azurite lifecycle: starts on free ports, serves blobs and queues, stops with no leftover process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from local_runtime.azurite import Azurite, AzuriteError, find_azurite, port_open, start_azurite


def test_fixture_serves_blob_and_queue(azurite: Azurite) -> None:
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs.create_container("fixture-check")
    blobs.get_blob_client("fixture-check", "a.txt").upload_blob(b"hello")
    assert blobs.get_blob_client("fixture-check", "a.txt").download_blob().readall() == b"hello"
    queues = QueueServiceClient.from_connection_string(azurite.connection_string)
    q = queues.create_queue("fixture-check")
    q.send_message("m1")
    assert [m.content for m in q.receive_messages()] == ["m1"]


def test_start_and_stop_leaves_nothing(tmp_path: Path) -> None:
    with start_azurite(tmp_path / "az") as az:
        pid = az.pid
        assert pid is not None
        assert port_open(az.blob_port) and port_open(az.queue_port) and port_open(az.table_port)
    assert not port_open(az.blob_port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_azurite_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import local_runtime.azurite as mod

    monkeypatch.setattr(mod, "REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AzuriteError, match=r"make setup. \(npm ci\)"):
        find_azurite(tmp_path)
