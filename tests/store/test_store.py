"""The store against a real Azurite: templates, runs, outputs, logs, triggers, operations, ETags."""

from __future__ import annotations

import ast
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.base import LogSink
from imagebuilder.store import (
    AlreadyExistsError,
    ConcurrencyError,
    InvalidContinuationError,
    InvalidKeyError,
    NotFoundError,
    RunInProgressError,
    RunRecord,
    Store,
    TooLargeError,
    open_store,
)
from imagebuilder.store import logs as logs_module

ROOT = Path(__file__).resolve().parents[2]
SUB = "00000000-0000-0000-0000-000000000001"


def resource(name: str, rg: str = "rg1", **props: Any) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates/{name}",
        "name": name,
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "location": "westus",
        "properties": {"provisioningState": "Succeeded", "source": {"type": "PlatformImage"}, **props},
    }


def ref(name: str = "tmpl", run_id: str = "run-1", rg: str = "rg1") -> RunRef:
    return RunRef(subscription_id=SUB, resource_group=rg, template_name=name, run_id=run_id)


# -- templates ---------------------------------------------------------------------------------------


def test_template_roundtrip_case_insensitive_names(store: Store) -> None:
    created = store.templates.create(SUB, "My-RG(1).x", "Tmpl_A", resource("Tmpl_A", "My-RG(1).x"))
    got = store.templates.get(SUB, "my-rg(1).X", "tmpl_a")
    assert got is not None
    assert got.resource == resource("Tmpl_A", "My-RG(1).x")
    assert (got.name, got.resource_group, got.etag) == ("Tmpl_A", "My-RG(1).x", created.etag)
    assert got.created_at <= got.last_modified_at
    assert store.templates.get(SUB, "My-RG(1).x", "other") is None
    with pytest.raises(AlreadyExistsError):
        store.templates.create(SUB, "my-rg(1).x", "TMPL_A", resource("TMPL_A"))


def test_etag_conflict_between_two_writers(store: Store, other_writer: Store) -> None:
    store.templates.create(SUB, "rg1", "t", resource("t"))
    a = store.templates.get(SUB, "rg1", "t")
    b = other_writer.templates.get(SUB, "rg1", "t")
    assert a is not None and b is not None and a.etag == b.etag
    winner = store.templates.replace(SUB, "rg1", "t", {**a.resource, "tags": {"w": "a"}}, etag=a.etag)
    with pytest.raises(ConcurrencyError):
        other_writer.templates.replace(SUB, "rg1", "t", {**b.resource, "tags": {"w": "b"}}, etag=b.etag)
    final = other_writer.templates.get(SUB, "rg1", "t")
    assert final is not None and final.resource["tags"] == {"w": "a"} and final.etag == winner.etag
    with pytest.raises(ConcurrencyError):
        other_writer.templates.delete(SUB, "rg1", "t", etag=b.etag)
    assert store.templates.get(SUB, "rg1", "t") is not None
    with pytest.raises(NotFoundError):
        store.templates.replace(SUB, "rg1", "gone", resource("gone"), etag=a.etag)


def test_large_template_is_whole_or_absent(store: Store) -> None:
    big_inline = [f"echo line {i} of a long inline customizer" for i in range(20_000)]
    body = resource("big", customize=[{"type": "Shell", "name": "x", "inline": big_inline}])
    store.templates.create(SUB, "rg1", "big", body)
    got = store.templates.get(SUB, "rg1", "big")
    assert got is not None and got.resource == body
    noise = os.urandom(1_200_000).hex()  # does not compress below the entity limit
    with pytest.raises(TooLargeError):
        store.templates.create(SUB, "rg1", "huge", resource("huge", customize=[{"inline": [noise]}]))
    assert store.templates.get(SUB, "rg1", "huge") is None
    with pytest.raises(TooLargeError):
        store.templates.replace(SUB, "rg1", "big", resource("big", x=noise), etag=got.etag)
    again = store.templates.get(SUB, "rg1", "big")
    assert again is not None and again.resource == body


def test_listing_pages_by_subscription_and_resource_group(store: Store) -> None:
    for i in range(5):
        store.templates.create(SUB, "rg", f"t{i}", resource(f"t{i}", "rg"))
    for i in range(3):
        store.templates.create(SUB, "rg2", f"u{i}", resource(f"u{i}", "rg2"))
    store.templates.create("other-sub", "rg", "x", resource("x"))

    def collect(fetch: Any) -> tuple[list[str], int]:
        names: list[str] = []
        pages, token = 0, None
        while True:
            page = fetch(token)
            pages += 1
            assert len(page.items) <= 3
            names += [t.name for t in page.items]
            token = page.continuation
            if token is None:
                return names, pages

    names, pages = collect(lambda c: store.templates.list_by_subscription(SUB, page_size=3, continuation=c))
    assert sorted(names) == sorted([f"t{i}" for i in range(5)] + [f"u{i}" for i in range(3)])
    assert pages == 3
    names, pages = collect(lambda c: store.templates.list_by_rg(SUB, "RG", page_size=3, continuation=c))
    assert sorted(names) == [f"t{i}" for i in range(5)] and pages == 2
    assert [t.name for t in store.templates.list_by_rg(SUB, "rg3").items] == []
    with pytest.raises(InvalidContinuationError):
        store.templates.list_by_subscription(SUB, continuation="not-a-token!")


# -- runs --------------------------------------------------------------------------------------------


def test_run_lifecycle_one_at_a_time_and_every_run_kept(store: Store) -> None:
    store.templates.create(SUB, "rg1", "tmpl", resource("tmpl"))
    first = store.runs.create(ref(run_id="r1"), template_snapshot=resource("tmpl"))
    assert first == store.runs.get(ref(run_id="r1"))  # the record written, its ETag included
    assert (first.run_state, first.run_sub_state, first.start_time, first.end_time) == (
        "Running",
        "Queued",
        first.created_time,
        None,
    )
    assert first.template_snapshot == resource("tmpl")
    with pytest.raises(RunInProgressError) as info:
        store.runs.create(ref(run_id="r2"), template_snapshot={})
    assert info.value.active_run_id == "r1"
    store.runs.set_status(ref(run_id="r1"), run_sub_state="Customizing", details={"source": {"id": "x"}})
    # a late report of an earlier phase does not take the run back (the message still updates)
    late = store.runs.set_status(ref(run_id="r1"), run_sub_state="Building", message="late")
    assert (late.run_sub_state, late.message) == ("Customizing", "late")
    assert store.runs.get(ref(run_id="r1")).run_sub_state == "Customizing"
    done = store.runs.set_status(
        ref(run_id="r1"), run_state="Failed", message="step 2 failed", error={"code": "CustomizerFailed"}
    )
    assert done.terminal and done.end_time is not None and done.error == {"code": "CustomizerFailed"}
    assert done.last_run_status() == {
        "runState": "Failed",
        "message": "step 2 failed",
        "startTime": done.last_run_status()["startTime"],
        "endTime": done.last_run_status()["endTime"],
    }
    # a terminal state is final; details still merge
    after = store.runs.set_status(ref(run_id="r1"), run_state="Running", details={"note": 1})
    assert after.run_state == "Failed" and after.details == {"source": {"id": "x"}, "note": 1}
    second = store.runs.create(ref(run_id="r2"), template_snapshot={})
    store.runs.set_status(ref(run_id="r2"), run_state="Canceling")
    progress = store.runs.set_status(ref(run_id="r2"), run_state="Running", run_sub_state="Distributing")
    assert (progress.run_state, progress.run_sub_state) == ("Canceling", "Distributing")
    second = store.runs.get(ref(run_id="r2"))
    assert store.runs.latest(SUB, "RG1", "TMPL") == second
    assert [r.run.run_id for r in store.runs.list(SUB, "rg1", "tmpl")] == ["r1", "r2"]
    with pytest.raises(AlreadyExistsError):
        store.runs.set_status(ref(run_id="r2"), run_state="Succeeded")
        store.runs.create(ref(run_id="r2"), template_snapshot={})
    with pytest.raises(NotFoundError):
        store.runs.create(ref(name="missing", run_id="r9"), template_snapshot={})
    with pytest.raises(InvalidKeyError):
        store.runs.get(ref(run_id="../etc"))
    with pytest.raises(ValueError, match="runState"):
        store.runs.set_status(ref(run_id="r2"), run_state="Done")


def test_concurrent_run_starts_only_one_wins(store: Store, other_writer: Store) -> None:
    store.templates.create(SUB, "rg1", "tmpl", resource("tmpl"))
    results: list[str] = []
    barrier = threading.Barrier(4)

    def start(s: Store, run_id: str) -> None:
        barrier.wait()
        try:
            s.runs.create(ref(run_id=run_id), template_snapshot={})
            results.append(run_id)
        except RunInProgressError:
            pass

    threads = [
        threading.Thread(target=start, args=(s, f"r{i}"))
        for i, s in enumerate((store, other_writer, store, other_writer))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1
    assert [r.run.run_id for r in store.runs.list(SUB, "rg1", "tmpl")] == results
    latest = store.runs.latest(SUB, "rg1", "tmpl")
    assert latest is not None and latest.run.run_id == results[0]


def test_concurrent_status_writers_lose_nothing(store: Store, other_writer: Store) -> None:
    store.templates.create(SUB, "rg1", "tmpl", resource("tmpl"))
    store.runs.create(ref(), template_snapshot={})
    barrier = threading.Barrier(6)

    def write(s: Store, i: int) -> None:
        barrier.wait()
        s.runs.set_status(ref(), details={f"k{i}": i})
        s.runs.put_output(ref(), "out1", {"regions": {f"region{i}": {"status": "Succeeded"}}})

    threads = [threading.Thread(target=write, args=((store, other_writer)[i % 2], i)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = store.runs.get(ref())
    assert record is not None and record.details == {f"k{i}": i for i in range(6)}
    (output,) = store.runs.outputs(ref())
    assert output["properties"]["regions"] == {f"region{i}": {"status": "Succeeded"} for i in range(6)}


def test_outputs_steps_and_purge(store: Store) -> None:
    store.templates.create(SUB, "rg1", "tmpl", resource("tmpl"))
    store.runs.create(ref(), template_snapshot={})
    store.runs.put_output(ref(), "img", {"artifactId": "/x/images/i", "provisioningState": "Creating"})
    store.runs.put_output(ref(), "img", {"provisioningState": "Succeeded"})
    assert store.runs.output(ref(), "IMG") == {
        "id": f"{ref().template_id}/runOutputs/img",
        "name": "img",
        "type": "Microsoft.VirtualMachineImages/imageTemplates/runOutputs",
        "properties": {"artifactId": "/x/images/i", "provisioningState": "Succeeded"},
    }
    store.runs.add_step(ref(), {"name": "customize[0]", "status": "running"})
    store.runs.add_step(ref(), {"name": "customize[0]", "status": "succeeded"})
    record = store.runs.add_step(ref(), {"name": "customize[1]", "status": "failed"})
    assert [s["status"] for s in record.details["steps"]] == ["succeeded", "failed"]
    store.runs.log(ref()).write("hello\n")
    store.triggers.put(SUB, "rg1", "tmpl", "source", {"properties": {"kind": "SourceImage"}})
    store.purge_template(SUB, "rg1", "tmpl")
    assert store.templates.get(SUB, "rg1", "tmpl") is None
    assert store.runs.list(SUB, "rg1", "tmpl") == []
    assert store.runs.outputs(ref()) == []
    assert store.runs.log(ref()).read() == ""
    assert store.triggers.list(SUB, "rg1", "tmpl") == []


def test_logs_append_read_and_roll_over(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    log = store.runs.log(ref())
    sink: LogSink = log  # mypy checks the protocol statically (see store/logs.py)
    assert callable(sink.write) and isinstance(sink.uri, str)
    assert log.read() == ""
    log.write("first line\n")
    store.runs.log(ref()).write("zweite Zeile ✓\n")  # a second writer (another activity) appends
    assert log.read() == "first line\nzweite Zeile ✓\n"
    assert log.uri.startswith("http://127.0.0.1:") and log.uri.endswith("/run-1/customization.log")
    assert "sig=" not in log.uri and "AccountKey" not in log.uri
    monkeypatch.setattr(logs_module, "MAX_BLOCKS_PER_SEGMENT", 2)
    rolling = store.runs.log(ref(), "distribute.log")
    for i in range(5):
        rolling.write(f"{i}\n")
    assert store.runs.log(ref(), "distribute.log").read() == "0\n1\n2\n3\n4\n"
    assert len(rolling._segments()) == 3
    with pytest.raises(InvalidKeyError):
        store.runs.log(ref(), "../x")


def test_triggers_and_operations(store: Store) -> None:
    stored, created = store.triggers.put(
        SUB, "rg1", "tmpl", "source", {"properties": {"kind": "SourceImage"}}
    )
    assert created and stored.resource == {"properties": {"kind": "SourceImage"}}
    again, created = store.triggers.put(
        SUB, "rg1", "tmpl", "SOURCE", {"properties": {"kind": "SourceImage", "x": 1}}
    )
    assert not created and again.created_at == stored.created_at and again.name == "SOURCE"
    with pytest.raises(ConcurrencyError):
        store.triggers.put(SUB, "rg1", "tmpl", "source", {}, etag=stored.etag)
    assert [t.name for t in store.triggers.list(SUB, "rg1", "tmpl")] == ["SOURCE"]
    assert [t.template_name for t in store.triggers.list_all()] == ["tmpl"]
    store.triggers.delete(SUB, "rg1", "tmpl", "source")
    assert store.triggers.get(SUB, "rg1", "tmpl", "source") is None

    op = store.operations.create(SUB, "westus", kind="run", resource_id="/x", run_id="r1")
    assert op.status == "InProgress" and not op.done and op.end_time is None
    done = store.operations.complete(
        SUB, op.operation_id, status="Failed", error={"code": "E", "message": "m"}
    )
    assert done.done and done.error == {"code": "E", "message": "m"} and done.end_time is not None
    same = store.operations.complete(SUB, op.operation_id, status="Succeeded")
    assert same.status == "Failed"
    assert store.operations.get(SUB, "nope") is None


def test_open_store_is_cached_and_idempotent(store_azurite: Any, prefix: str) -> None:
    a = open_store(store_azurite.connection_string, prefix=prefix)
    assert open_store(store_azurite.connection_string, prefix=prefix) is a
    Store(store_azurite.connection_string, prefix=prefix)  # tables/containers exist: no error


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_storage_clients_live_only_in_the_store() -> None:
    for path in sorted((ROOT / "imagebuilder" / "store").rglob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(("azure.functions", "azure.durable_functions"))}
        assert not bad, f"{path} imports {bad}"
    # the app's own storage goes through the store; the Azure provider may reach the user's accounts
    exempt = (ROOT / "imagebuilder" / "store", ROOT / "imagebuilder" / "providers" / "azure")
    for pkg in ("api", "activities", "orchestrators", "triggers", "imagebuilder"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if any(e in path.parents for e in exempt):
                continue
            bad = {m for m in _imports(path) if m.startswith(("azure.data.tables", "azure.storage"))}
            assert not bad, f"{path} creates storage clients ({bad}); use imagebuilder.store"


def test_identity_based_connections_need_no_key() -> None:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    from imagebuilder.store._storage import expand_connection_string, identity_endpoints

    conn = "AccountName=stib123;Credential=managedidentity;ClientId=1111-2222"
    ep = identity_endpoints(conn)
    assert ep is not None
    assert (ep.table_url, ep.blob_url) == (
        "https://stib123.table.core.windows.net",
        "https://stib123.blob.core.windows.net",
    )
    assert isinstance(ep.credential(), ManagedIdentityCredential) and ep.client_id == "1111-2222"
    other = identity_endpoints("AccountName=a;TableEndpoint=https://t.example;BlobEndpoint=https://b.example")
    assert other is not None and other.table_url == "https://t.example"
    assert isinstance(other.credential(), DefaultAzureCredential)
    assert identity_endpoints(expand_connection_string("UseDevelopmentStorage=true")) is None
    assert identity_endpoints("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=eA==") is None


def test_values_shrink_without_leftover_chunks(store: Store) -> None:
    store.templates.create(SUB, "rg1", "tmpl", resource("tmpl"))
    store.runs.create(ref(), template_snapshot={})
    noise = os.urandom(90_000).hex()  # incompressible: several chunks
    store.runs.set_status(ref(), details={"blob": noise})
    table = store.runs._runs.client
    assert table.get_entity(*store.runs._keys(ref()))["DetailsChunks"] > 1
    store.runs.set_status(ref(), details={"blob": "small"})
    entity = table.get_entity(*store.runs._keys(ref()))
    assert entity["DetailsChunks"] == 1 and "Details1" not in entity
    assert store.runs.get(ref()).details == {"blob": "small"}  # type: ignore[union-attr]
    with pytest.raises(TooLargeError):
        store.runs.set_status(ref(), details={"blob": os.urandom(400_000).hex()})


def test_status_write_returns_what_is_stored_and_shows_the_state_it_replaces(
    store: Store, other_writer: Store
) -> None:
    store.templates.create(SUB, "rg1", "tmpl", resource("tmpl"))
    store.runs.create(ref(), template_snapshot={})
    seen: list[tuple[str | None, dict[str, Any]]] = []

    def before(record: RunRecord) -> None:
        seen.append((record.run_sub_state, record.details))
        if len(seen) == 1:  # another writer gets in between this read and the write: read again
            other_writer.runs.set_status(ref(), details={"other": True})

    written = store.runs.set_status(ref(), run_sub_state="Building", details={"mine": 1}, before_write=before)
    assert seen == [("Queued", {}), ("Queued", {"other": True})]
    assert written == store.runs.get(ref())  # the record written (its new ETag too), without a re-read
    assert written.details == {"other": True, "mine": 1}
    stepped = store.runs.add_step(ref(), {"name": "customize[0]", "status": "succeeded"})
    assert stepped == store.runs.get(ref())


def test_a_run_log_stays_open_for_the_next_activity(store: Store) -> None:
    store.templates.create(SUB, "rg1", "tmpl", resource("tmpl"))
    log = store.runs.log(ref())
    assert store.runs.log(ref()) is log and store.runs.log(ref(), "other.log") is not log
    log.write("one\n")
    store.purge_template(SUB, "rg1", "tmpl")  # its blobs are gone; the open log makes its blob again
    store.runs.log(ref()).write("two\n")
    assert store.runs.log(ref()).read() == "two\n"


def test_opening_a_log_finds_its_latest_segment_or_creates_it(
    store: Store, other_writer: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs_module, "MAX_BLOCKS_PER_SEGMENT", 2)
    log = store.runs.log(ref(), "roll.log")
    for i in range(3):  # segment 0 full after two blocks, the third goes to segment 1
        log.write(f"{i}\n")
    other = other_writer.runs.log(ref(), "roll.log")  # another process: its own open-log cache
    other.open()
    other.write("3\n")
    assert log.read() == "0\n1\n2\n3\n"  # "3" went to segment 1 (and filled it: segment 2 is made)
    assert [i for i, _ in other._segments()] == [0, 1, 2]
    fresh = other_writer.runs.log(ref(), "new.log")
    fresh.open()  # a new log: created by the open, empty
    assert fresh.read() == "" and [name for _, name in fresh._segments()] == [fresh.blob_name]
    fresh.write("x\n")
    assert store.runs.log(ref(), "new.log").read() == "x\n"
