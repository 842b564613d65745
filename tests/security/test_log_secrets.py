"""Secrets never reach run logs: whatever a step or the provider writes to customization.log (a SAS
scriptUri, a storage connection string, a function key in a URL) is scrubbed by the log sink itself,
and the command lines the local provider logs are scrubbed the same way."""

from __future__ import annotations

import uuid

from azure.storage.blob import BlobServiceClient

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.local import proc
from imagebuilder.store import open_store
from imagebuilder.store.logs import BlobLog, scrub_secrets
from local_runtime.azurite import Azurite
from tests.security.conftest import RecLog

SAS = "https://acct.blob.core.windows.net/c/s.sh?sv=2024-01-01&se=2030&sp=r&sig=AbC%2Fsecret%3D"
CONN = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqF==;BlobEndpoint=x"
)


def test_run_log_blob_scrubs_sas_keys_and_account_keys(azurite: Azurite) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client(f"sec{uuid.uuid4().hex[:8]}")
    container.create_container()
    log = BlobLog(container, "customization.log")
    log.write(f"[customize[0]] fetching {SAS}\n")
    log.write(f"[customize[1]] conn {CONN}\n")
    log.write("[customize[2]] curl https://app.azurewebsites.net/api/x?code=FUNCKEY123&a=1\n")
    text = log.read()
    for secret in ("AbC%2Fsecret", "Eby8vdM02xNOcqF", "FUNCKEY123"):
        assert secret not in text
    assert "sig=<redacted>" in text and "AccountKey=<redacted>" in text and "code=<redacted>&a=1" in text
    assert "sv=2024-01-01&se=2030" in text  # the rest stays readable


def test_scrub_leaves_ordinary_text_alone() -> None:
    for text in ("exit code 1", "error code=5 in step", "design=flat", "signature verified"):
        assert scrub_secrets(text) == text


def test_command_lines_and_output_in_logs_are_scrubbed() -> None:
    log = RecLog()
    done = proc.run(["echo", SAS, CONN], log=log, timeout=30)
    assert "AbC%2Fsecret" in done.stdout  # the command itself got the real value
    assert "AbC%2Fsecret" not in log.text and "Eby8vdM02xNOcqF" not in log.text
    failed = RecLog()
    try:
        proc.run(["sh", "-c", f"echo {SAS}; exit 3"], log=failed, timeout=30)
    except proc.CommandError as exc:
        assert "AbC%2Fsecret" not in str(exc)
    else:
        raise AssertionError("the command should have failed")
    assert "AbC%2Fsecret" not in failed.text


def test_run_records_scrub_messages_errors_and_step_tails(azurite: Azurite) -> None:
    store = open_store(azurite.connection_string, prefix=f"sec{uuid.uuid4().hex[:8]}")
    run = RunRef(subscription_id=str(uuid.uuid4()), resource_group="rg", template_name="t", run_id="r1")
    store.templates.create(run.subscription_id, "rg", "t", {"location": "westus", "properties": {}})
    store.runs.create(run, template_snapshot={"properties": {}})
    store.runs.add_step(run, {"name": "customize[0] (Shell)", "tail": [f"curl {SAS}"]})
    store.runs.set_status(
        run,
        run_state="Failed",
        message=f"fetching {SAS} failed",
        error={"code": "X", "message": f"cannot read {SAS}", "details": [{"message": CONN}]},
    )
    record = store.runs.get(run)
    assert record is not None
    dumped = repr(record)
    assert "AbC%2Fsecret" not in dumped and "Eby8vdM02xNOcqF" not in dumped
    assert "sig=<redacted>" in record.message
