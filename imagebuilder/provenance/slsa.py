"""Signed provenance of a run (pure apart from the signature arithmetic): an in-toto Statement v1 with a
SLSA Provenance v1 predicate, wrapped in a DSSE envelope signed with Ed25519, and its verification
against artifacts on disk.

Subjects are the run's outputs with the SHA-256 of their disk (VHD, gallery version's disk); resolved
dependencies are the source image version and every fetched artifact with its SHA-256; the external
parameters carry the template's input fingerprint.

Exceptions::

    ValueError
    └── VerificationError    a bad envelope or signature, an unknown key, or an artifact whose digest
                             is not a subject of the statement (the message says which)
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from imagebuilder.provenance.sbom import ArtifactRef, SourceRef, public_uri

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://imagebuilder.invalid/buildtypes/image-template/v1"
DEFAULT_BUILDER = "https://imagebuilder.invalid/builders/local"


class VerificationError(ValueError):
    """The envelope, its signature or an artifact does not check out."""


@dataclass(frozen=True)
class Subject:
    """One output artifact: a name (its id or uri) and the SHA-256 of its bytes."""

    name: str
    sha256: str


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def statement(
    *,
    subjects: Iterable[Subject],
    template_id: str,
    run_id: str,
    fingerprint: str | None,
    source: SourceRef | None,
    artifacts: Iterable[ArtifactRef],
    builder_id: str = DEFAULT_BUILDER,
    started: datetime | None = None,
    finished: datetime | None = None,
    template: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA Provenance v1 predicate) of one run."""
    deps: list[dict[str, Any]] = []
    if source is not None:
        dep: dict[str, Any] = {"name": source.id, "annotations": {"type": source.type}}
        if source.version:
            dep["annotations"]["version"] = source.version
        deps.append(dep)
    for art in artifacts:
        deps.append({"uri": public_uri(art.uri), "digest": {"sha256": art.sha256}})
    external: dict[str, Any] = {"templateId": template_id}
    if fingerprint:
        external["templateFingerprint"] = fingerprint
    if template is not None:
        external["template"] = dict(template)
    metadata: dict[str, Any] = {"invocationId": f"{template_id}/runs/{run_id}"}
    if started is not None:
        metadata["startedOn"] = _iso(started)
    if finished is not None:
        metadata["finishedOn"] = _iso(finished)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": s.name, "digest": {"sha256": s.sha256}} for s in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {},
                "resolvedDependencies": deps,
            },
            "runDetails": {"builder": {"id": builder_id}, "metadata": metadata},
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public: Ed25519PublicKey) -> str:
    """A stable id of a public key: SHA-256 of its raw bytes (hex)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(stmt: Mapping[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """The DSSE envelope of `stmt` signed with `private` (Ed25519 signatures are deterministic)."""
    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    sig = private.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(private.public_key()), "sig": base64.b64encode(sig).decode()}],
    }


def open_envelope(envelope: Mapping[str, Any], public: Ed25519PublicKey) -> dict[str, Any]:
    """The statement inside `envelope`, once a signature by `public` checks out."""
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise VerificationError(f"payloadType is {envelope.get('payloadType')!r}, expected {PAYLOAD_TYPE!r}")
    try:
        payload = base64.b64decode(str(envelope["payload"]), validate=True)
        sigs = list(envelope["signatures"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"the envelope is malformed: {exc}") from None
    wanted = key_id(public)
    for entry in sigs:
        if not isinstance(entry, Mapping) or entry.get("keyid") not in (wanted, "", None):
            continue
        try:
            public.verify(
                base64.b64decode(str(entry.get("sig", "")), validate=True), pae(PAYLOAD_TYPE, payload)
            )
        except (InvalidSignature, ValueError):
            continue
        try:
            stmt = json.loads(payload)
        except ValueError as exc:
            raise VerificationError(f"the signed payload is not JSON: {exc}") from None
        if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE:
            raise VerificationError("the signed payload is not an in-toto Statement v1")
        return stmt
    raise VerificationError(
        f"no valid signature by key {wanted[:16]}… in the envelope",
    )


@dataclass(frozen=True)
class Verified:
    """A successful verification: the artifact's digest and the subject it matched."""

    path: str
    sha256: str
    subject: str


def verify_digest(stmt: Mapping[str, Any], sha256: str, *, path: str = "") -> Verified:
    """Check that an artifact with digest `sha256` is a subject of the (already verified) statement."""
    for subject in stmt.get("subject") or []:
        digest = (subject.get("digest") or {}).get("sha256") if isinstance(subject, Mapping) else None
        if isinstance(digest, str) and digest.lower() == sha256.lower():
            return Verified(path, sha256, str(subject.get("name")))
    names = ", ".join(str(s.get("name")) for s in stmt.get("subject") or [] if isinstance(s, Mapping))
    raise VerificationError(
        f"{path or 'the artifact'} has SHA-256 {sha256}, which is not the digest of any subject of the "
        f"provenance ({names or 'no subjects'}); the file was changed after the build or is another image"
    )


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or 32 raw bytes (base64 or binary)."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise VerificationError("the public key is not an Ed25519 key")
        return key
    raw = text
    if len(raw) != 32:
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise VerificationError("the public key is neither PEM nor 32 bytes (raw or base64)") from None
    if len(raw) != 32:
        raise VerificationError("the public key is neither PEM nor 32 bytes (raw or base64)")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
