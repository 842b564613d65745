"""The leak audit itself can fail: blobs the store no longer knows and uncommitted blobs of ended runs
are counted (against a real Azurite, no build), so a reliability test that reports 0 leaked blobs means
it looked."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store import Store
from local_runtime.azurite import Azurite
from tests.reliability.audit import audit

pytestmark = [pytest.mark.reliability]
SUB = "00000000-0000-0000-0000-0000000000a1"


def _template(name: str) -> dict[str, object]:
    return {
        "id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.VirtualMachineImages/"
        f"imageTemplates/{name}",
        "name": name,
        "location": "westus",
        "properties": {"provisioningState": "Succeeded", "source": {"type": "PlatformImage"}},
    }


def test_the_audit_counts_orphan_and_staged_blobs(e2e_azurite: Azurite, tmp_path: Path) -> None:
    store = Store(e2e_azurite.connection_string, prefix=f"a{uuid.uuid4().hex[:12]}")
    store.templates.create(SUB, "rg", "Kept", _template("Kept"))
    run = RunRef(subscription_id=SUB, resource_group="rg", template_name="Kept", run_id="r1")
    store.runs.create(run, template_snapshot={})
    store.runs.log(run).write("a line\n")
    store.runs.put_sbom_inventory(run, {"packages": []})
    assert audit(tmp_path, store=store).total() == 0  # a live run's blobs: known

    # an upload of a running run that has only staged blocks is still under way: not a leak yet
    staged = store.runs.log(run, "staged.bin").blob_name
    store.runs._logs.get_blob_client(staged).stage_block("b1", b"half")
    assert audit(tmp_path, store=store).total() == 0
    store.runs.set_status(run, run_state="Failed", message="x")
    assert audit(tmp_path, store=store).staged_blobs == [staged]  # the run ended: it outlived it

    gone = run.model_copy(update={"run_id": "r-unknown"})
    store.runs.log(gone).write("written for a run the store never had\n")
    store.templates.create(SUB, "rg", "Dropped", _template("Dropped"))
    dropped = RunRef(subscription_id=SUB, resource_group="rg", template_name="Dropped", run_id="r2")
    store.runs.create(dropped, template_snapshot={})
    store.runs.log(dropped).write("x\n")
    store.purge_template(SUB, "rg", "Dropped")
    store.runs.log(dropped).write("a late write after the purge\n")  # recreates the blob
    store.runs._logs.upload_blob("stray.txt", b"named by no run")
    leaks = audit(tmp_path, store=store)
    assert sorted(leaks.orphan_blobs) == sorted(
        [store.runs.log(gone).blob_name, store.runs.log(dropped).blob_name, "stray.txt"]
    )
    assert leaks.total() == 4
