"""Provenance: in-toto Statement v1 / SLSA v1 in a DSSE envelope signed with Ed25519; an untouched
artifact verifies, one changed byte does not; a local key is created 0600 once."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagebuilder.provenance import keys
from imagebuilder.provenance.sbom import ArtifactRef, SourceRef
from imagebuilder.provenance.slsa import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Subject,
    VerificationError,
    open_envelope,
    pae,
    public_pem,
    sign,
    statement,
)
from imagebuilder.provenance.verify import verify_artifact
from imagebuilder.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _disk(tmp_path: Path) -> tuple[Path, str]:
    disk = tmp_path / "disk.vhd"
    disk.write_bytes(os.urandom(4096) + b"conectix" + bytes(504))
    return disk, hashlib.sha256(disk.read_bytes()).hexdigest()


def _statement(sha: str) -> dict:
    return statement(
        subjects=[Subject("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/web", sha)],
        template_id="/subscriptions/s/resourceGroups/g/providers/Microsoft.VirtualMachineImages/imageTemplates/web",
        run_id="r1",
        fingerprint="f" * 64,
        source=SourceRef(type="PlatformImage", id="Debian:debian-12:12:latest", version="0.20241201.1"),
        artifacts=[ArtifactRef(uri="https://a.blob.core.windows.net/c/s.sh?sig=SECRET", sha256="d" * 64)],
    )


def test_statement_shape() -> None:
    stmt = _statement("a" * 64)
    assert stmt["_type"] == STATEMENT_TYPE and stmt["predicateType"] == PREDICATE_TYPE
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["annotations"]["version"] == "0.20241201.1"
    assert deps[1] == {"uri": "https://a.blob.core.windows.net/c/s.sh", "digest": {"sha256": "d" * 64}}
    assert stmt["predicate"]["buildDefinition"]["externalParameters"]["templateFingerprint"] == "f" * 64
    assert "SECRET" not in json.dumps(stmt)


def test_dsse_pae_matches_the_spec() -> None:
    # the DSSE v1 spec's example encoding
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_untouched_artifact_passes_one_changed_byte_fails(tmp_path: Path) -> None:
    disk, sha = _disk(tmp_path)
    key = Ed25519PrivateKey.generate()
    envelope = sign(_statement(sha), key)
    pem = public_pem(key.public_key()).encode()
    ok = verify_artifact(envelope, pem, disk)
    assert ok.sha256 == sha
    data = bytearray(disk.read_bytes())
    data[100] ^= 0x01
    disk.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="not the digest of any subject"):
        verify_artifact(envelope, pem, disk)


def test_signature_checks(tmp_path: Path) -> None:
    _, sha = _disk(tmp_path)
    key = Ed25519PrivateKey.generate()
    envelope = sign(_statement(sha), key)
    with pytest.raises(VerificationError, match="no valid signature"):
        open_envelope(envelope, Ed25519PrivateKey.generate().public_key())
    # a payload swapped for another statement naming the tampered disk is refused
    forged = dict(envelope)
    forged["payload"] = base64.b64encode(json.dumps(_statement("0" * 64)).encode()).decode()
    with pytest.raises(VerificationError, match="no valid signature"):
        open_envelope(forged, key.public_key())
    assert open_envelope(envelope, key.public_key())["subject"][0]["digest"]["sha256"] == sha


def test_local_key_is_created_once_0600(tmp_path: Path) -> None:
    settings = Settings(provider="local", storage_connection="", state_dir=tmp_path, task_hub="h")
    first = keys.signing_key(settings)
    second = keys.signing_key(settings)
    private, public = keys.key_paths(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_pem(first.public_key()) == public_pem(second.public_key()) == public.read_text()


def test_key_from_setting_and_azure_needs_one(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = keys._pem(key).decode()
    on_azure = Settings(
        provider="azure", storage_connection="", state_dir=tmp_path, task_hub="h", provenance_key=pem
    )
    assert public_pem(keys.signing_key(on_azure).public_key()) == public_pem(key.public_key())
    with pytest.raises(keys.SigningKeyError, match="IMAGEBUILDER_PROVENANCE_SIGNING_KEY"):
        keys.signing_key(Settings(provider="azure", storage_connection="", state_dir=tmp_path, task_hub="h"))
    with pytest.raises(keys.SigningKeyError, match="not a PEM"):
        keys.signing_key(
            Settings(
                provider="local", storage_connection="", state_dir=tmp_path, task_hub="h", provenance_key="x"
            )
        )
    assert not (tmp_path / "keys").exists()
    assert pem not in repr(on_azure)


def test_verify_command(tmp_path: Path) -> None:
    disk, sha = _disk(tmp_path)
    settings = Settings(provider="local", storage_connection="", state_dir=tmp_path / "state", task_hub="h")
    envelope = sign(_statement(sha), keys.signing_key(settings))
    env_file = tmp_path / "provenance.json"
    env_file.write_text(json.dumps(envelope))
    cmd = [
        sys.executable,
        "-m",
        "imagebuilder.provenance",
        "verify",
        "--provenance",
        str(env_file),
        str(disk),
    ]
    environ = {**os.environ, "IMAGEBUILDER_STATE_DIR": str(tmp_path / "state")}
    ok = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK")
    data = bytearray(disk.read_bytes())
    data[-1] ^= 0xFF
    disk.write_bytes(bytes(data))
    bad = subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout.startswith("FAIL")
