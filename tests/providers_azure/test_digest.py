"""The captured disk's SHA-256 on Azure: the generalized OS disk read through its export SAS (only the
pages holding data), equal to the SHA-256 of the fixed VHD a VHD distribution copies; a provenance
statement signed with it verifies that VHD and fails one with a changed byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagebuilder.provenance.runs import run_statement
from imagebuilder.provenance.slsa import VerificationError, sign
from imagebuilder.provenance.verify import verify_artifact
from tests.providers_azure.conftest import linux_template
from tests.providers_azure.fake_arm import FakeArm
from tests.providers_azure.test_service_rules import _captured, settle_in_time


def test_capture_hashes_the_exported_disk_reading_only_its_data_pages(provider, arm: FakeArm, clock) -> None:
    disk = bytearray(64 << 20)  # 64 MiB of disk, three places written, then the VHD footer
    disk[0:4096] = b"\x01" * 4096
    disk[(20 << 20) + 100 : (20 << 20) + 5000] = b"etc/motd" * 612
    disk[(40 << 20) : (41 << 20)] = bytes(range(256)) * 4096
    disk[-512:] = b"conectix".ljust(512, b"\0")
    arm.disk_bytes = disk
    _, captured, log = _captured(provider, arm, linux_template())
    assert captured.status == "succeeded", captured
    assert captured.image["sha256"] == hashlib.sha256(disk).hexdigest()
    assert captured.image["size"] == len(disk) and captured.image["digestOf"] == "osDiskVhd"
    read = sum(int(r.split("-")[1]) - int(r.split("=")[1].split("-")[0]) + 1 for r in arm.disk_reads)
    assert read < 2 << 20, f"read {read} bytes of a 64 MiB disk holding ~1 MiB"
    assert "SECRET" not in log.text and "sig=" not in log.text
    # the SAS was revoked (and that awaited) before capture returned
    revokes = [p for m, p, _, _ in arm.requests if m == "POST" and p.lower().endswith("/endgetaccess")]
    assert revokes, "the export SAS stays open"
    disk_res = next(r for r in arm.resources.values() if r["type"] == "Microsoft.Compute/disks")
    assert disk_res["properties"].get("diskState") != "ActiveSAS"  # revoked before capture returned
    assert arm.problems == []


def test_a_pending_capture_carries_no_sas(provider, arm: FakeArm, clock) -> None:
    from tests.providers_azure.test_service_rules import _ready_env

    build, env, log = _ready_env(provider, arm, linux_template())
    settle_in_time(provider, provider.generalize(build, env, log), log, clock)
    result = provider.capture(build, env, log)
    seen = []
    while not hasattr(result, "status"):
        seen.append(result.model_dump_json())
        clock.now += result.retry_after_seconds
        result = provider.poll(type(result).model_validate_json(seen[-1]), log)
    assert result.status == "succeeded"
    assert seen and not any("sig=" in text or "SECRET" in text for text in seen)


def test_provenance_of_an_azure_run_verifies_the_vhd_and_fails_a_changed_byte(
    provider, arm: FakeArm, clock, tmp_path: Path
) -> None:
    build, captured, _ = _captured(provider, arm, linux_template())
    vhd_uri = "https://acct.blob.core.windows.net/vhds/out.vhd"
    outputs = [
        {
            "name": "vhd",
            "properties": {
                "artifactUri": vhd_uri,
                "regions": [{"status": "succeeded", "artifactUri": vhd_uri}],
            },
        }
    ]
    stmt = run_statement(
        template_id=build.run.template_id,
        run_id=build.run.run_id,
        snapshot=build.template,
        details={"capture": {"sha256": captured.image["sha256"], "size": captured.image["size"]}},
        outputs=outputs,
        builder_id="https://imagebuilder.invalid/builders/azure",
        started=None,
        finished=None,
    )
    assert stmt["subject"] == [{"name": vhd_uri, "digest": {"sha256": captured.image["sha256"]}}]
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    envelope = json.loads(json.dumps(sign(stmt, key)))
    downloaded = tmp_path / "out.vhd"  # what `az storage blob download` of the VHD target gives
    downloaded.write_bytes(bytes(arm.disk_bytes))
    verify_artifact(envelope, public, downloaded)
    tampered = bytearray(arm.disk_bytes)
    tampered[1 << 20] ^= 1
    downloaded.write_bytes(bytes(tampered))
    with pytest.raises(VerificationError):
        verify_artifact(envelope, public, downloaded)
