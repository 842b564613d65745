"""`python -m imagebuilder.provenance verify --provenance ENVELOPE.json [--key PUBLIC.pem] ARTIFACT...`:
checks each artifact (a VHD, a gallery version's disk) against a run's signed provenance. Exit 0 when all
pass, 1 when one fails, 2 on bad usage. Without --key, the local deployment's public key
(`$IMAGEBUILDER_STATE_DIR/keys/provenance-ed25519.pub.pem`) is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagebuilder.provenance.keys import key_paths
from imagebuilder.provenance.slsa import VerificationError
from imagebuilder.provenance.verify import read_envelope, verify_artifact
from imagebuilder.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagebuilder.provenance")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check artifacts against a signed provenance envelope")
    verify.add_argument("--provenance", required=True, type=Path, help="DSSE envelope (JSON)")
    verify.add_argument("--key", type=Path, help="Ed25519 public key (PEM); default: the state dir's")
    verify.add_argument("artifacts", nargs="+", type=Path)
    args = parser.parse_args(argv)
    key_file = args.key or key_paths(Settings.from_env().state_dir)[1]
    try:
        key = key_file.read_bytes()
    except OSError as exc:
        print(f"error: cannot read the public key {key_file}: {exc} (pass --key)", file=sys.stderr)
        return 2
    failed = 0
    try:
        envelope = read_envelope(args.provenance)
    except VerificationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for artifact in args.artifacts:
        try:
            ok = verify_artifact(envelope, key, artifact)
        except VerificationError as exc:
            failed += 1
            print(f"FAIL {artifact}: {exc}")
        else:
            print(f"OK   {artifact}: sha256 {ok.sha256} is subject {ok.subject}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
