"""Checking an artifact on disk against a run's signed provenance: the function the `aib verify` command
and `python -m imagebuilder.provenance verify` call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagebuilder.provenance.slsa import (
    VerificationError,
    Verified,
    load_public_key,
    open_envelope,
    verify_digest,
)

_CHUNK = 4 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_envelope(path: Path) -> dict[str, Any]:
    """A DSSE envelope from a file (as `GET .../runs/{runId}/provenance` returns it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VerificationError(f"cannot read the provenance envelope {path}: {exc}") from None
    if not isinstance(data, dict):
        raise VerificationError(f"{path} holds no DSSE envelope (a JSON object)")
    return data


def verify_artifact(envelope: Mapping[str, Any], public_key_pem: bytes, artifact: Path) -> Verified:
    """Raise `VerificationError` unless `envelope` is signed by the key and `artifact`'s SHA-256 is one
    of its subjects."""
    stmt = open_envelope(envelope, load_public_key(public_key_pem))
    try:
        digest = file_sha256(artifact)
    except OSError as exc:
        raise VerificationError(f"cannot read the artifact {artifact}: {exc}") from None
    return verify_digest(stmt, digest, path=str(artifact))
