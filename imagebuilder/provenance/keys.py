"""The deployment's provenance signing key: the setting IMAGEBUILDER_PROVENANCE_SIGNING_KEY (an Ed25519
private key in PEM; on Azure a Key Vault reference resolves into it) or, for the local provider, a key
created once in the state directory (`keys/provenance-ed25519.pem`, mode 0600) with its public half next to
it (`keys/provenance-ed25519.pub.pem`) for whoever verifies.

Exceptions::

    ValueError
    └── SigningKeyError    the setting holds no Ed25519 key, or no key is configured on Azure
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imagebuilder.settings import Settings

KEY_FILE = "provenance-ed25519.pem"
PUBLIC_FILE = "provenance-ed25519.pub.pem"


class SigningKeyError(ValueError):
    """No usable signing key."""


def key_paths(state_dir: Path) -> tuple[Path, Path]:
    """(private, public) key files of the local deployment."""
    folder = state_dir / "keys"
    return folder / KEY_FILE, folder / PUBLIC_FILE


def load_private_key(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.strip(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where} is not a PEM private key without password: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{where} is not an Ed25519 key; create one with `openssl genpkey -algorithm ed25519`"
        )
    return key


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_or_create_local_key(state_dir: Path) -> Ed25519PrivateKey:
    """The state directory's key, created (0600, O_EXCL so two processes agree on one) if missing."""
    private, public = key_paths(state_dir)
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        tmp = private.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, _pem(key))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, private)  # fails if another process made one first: then theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    fd = os.open(private, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read()
    finally:
        os.close(fd)
    key = load_private_key(data, str(private))
    want = _public_pem(key)
    with contextlib.suppress(OSError):
        if not public.is_file() or public.read_bytes() != want:
            public.write_bytes(want)
    return key


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The key that signs this deployment's provenance."""
    if settings.provenance_key.strip():
        return load_private_key(
            settings.provenance_key.encode(), "the setting IMAGEBUILDER_PROVENANCE_SIGNING_KEY"
        )
    if settings.provider != "local":
        raise SigningKeyError(
            "the setting IMAGEBUILDER_PROVENANCE_SIGNING_KEY is empty; on Azure set it to a Key Vault "
            "reference holding an Ed25519 private key in PEM (`openssl genpkey -algorithm ed25519`)"
        )
    return load_or_create_local_key(settings.state_dir)
