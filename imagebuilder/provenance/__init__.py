"""What is in an image and where it came from: SBOM documents (SPDX 2.3, CycloneDX 1.5), signed SLSA
provenance (in-toto Statement v1 in a DSSE envelope), package freshness and retention policies.

The document builders (`sbom`, `slsa`, `freshness`, `retention`) are pure; `keys` reads and creates the
deployment's signing key; `python -m imagebuilder.provenance verify ...` checks an artifact on disk.
"""
