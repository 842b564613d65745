"""Fetching scriptUri/sourceUri into staging: schemes, the file:// allow-list, checksums, HTTP errors,
blob URLs through the blob fetcher, SAS tokens kept out of logs and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.providers.base import TransientProviderError
from imagebuilder.providers.local import artifacts
from tests.providers_local.test_provider_support import RecLog, file_root, http_server, sha256

_FIXTURES = (file_root,)  # pytest fixtures used by name in this module


ROOTS: list[Path] = []  # no file:// folder allowed but the examples


def _ref(
    uri: str, checksum: str = "", field: str = "properties.customize[0].scriptUri"
) -> artifacts.ArtifactRef:
    return artifacts.ArtifactRef(field, uri, checksum)


def test_collect_finds_customizers_and_validators() -> None:
    template = {
        "properties": {
            "customize": [
                {"type": "Shell", "inline": ["true"]},
                {"type": "Shell", "scriptUri": "https://x/a.sh", "sha256Checksum": "AB" * 32},
                {"type": "File", "sourceUri": "https://x/f", "destination": "/f"},
            ],
            "validate": {"inVMValidations": [{"type": "Shell", "scriptUri": "https://x/v.sh"}]},
        }
    }
    refs = artifacts.collect(template)
    assert [(r.field, r.uri, r.sha256) for r in refs] == [
        ("properties.customize[1].scriptUri", "https://x/a.sh", "ab" * 32),
        ("properties.customize[2].sourceUri", "https://x/f", ""),
        ("properties.validate.inVMValidations[0].scriptUri", "https://x/v.sh", ""),
    ]


def test_file_uri_in_allowed_root_is_staged_idempotently(file_root: Path, tmp_path: Path) -> None:
    (file_root / "a b.sh").write_bytes(b"echo hi\n")
    uri = (file_root / "a b.sh").as_uri()
    dest = tmp_path / "staging"
    staged = artifacts.fetch_all(
        [_ref(uri, sha256(b"echo hi\n"))],
        dest,
        blob_fetcher=None,
        log=RecLog(),
        roots=artifacts.file_roots(str(file_root)),
    )
    assert staged[0].sha256 == sha256(b"echo hi\n") and staged[0].size == 8
    assert Path(staged[0].location).read_bytes() == b"echo hi\n"
    (file_root / "a b.sh").unlink()  # already staged: not fetched again
    again = artifacts.fetch_all(
        [_ref(uri, sha256(b"echo hi\n"))],
        dest,
        blob_fetcher=None,
        log=RecLog(),
        roots=artifacts.file_roots(str(file_root)),
    )
    assert again == staged


def test_file_uri_outside_roots_and_symlink_tricks_refused(file_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (file_root / "link").symlink_to(outside)
    for uri in (outside.as_uri(), (file_root / "link").as_uri(), f"file://{file_root}/../outside.txt"):
        with pytest.raises(artifacts.ArtifactError) as err:
            artifacts.fetch_all(
                [_ref(uri)],
                tmp_path / "s",
                blob_fetcher=None,
                log=RecLog(),
                roots=artifacts.file_roots(str(file_root)),
            )
        assert err.value.code == "ArtifactNotAllowed"
        assert "properties.customize[0].scriptUri" in str(err.value)


def test_http_download_checksum_mismatch_and_404(tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "s.sh").write_bytes(b"echo web\n")
    with http_server(served) as url:
        ok = artifacts.fetch_all(
            [_ref(f"{url}/s.sh", sha256(b"echo web\n"))], tmp_path / "s", blob_fetcher=None, log=RecLog()
        )
        assert Path(ok[0].location).read_bytes() == b"echo web\n"
        wrong = "0" * 64
        with pytest.raises(artifacts.ArtifactError) as err:
            artifacts.fetch_all(
                [_ref(f"{url}/s.sh?sig=SECRET", wrong)], tmp_path / "s2", blob_fetcher=None, log=RecLog()
            )
        text = str(err.value)
        assert err.value.code == "ChecksumMismatch"
        assert wrong in text and sha256(b"echo web\n") in text and f"{url}/s.sh" in text
        assert "SECRET" not in text
        assert list((tmp_path / "s2").iterdir()) == []
        with pytest.raises(artifacts.ArtifactError) as err404:
            artifacts.fetch_all(
                [_ref(f"{url}/missing.sh")], tmp_path / "s3", blob_fetcher=None, log=RecLog(), roots=ROOTS
            )
        assert "404" in str(err404.value)


def test_unreachable_host_is_transient(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientProviderError):
        artifacts.fetch_all(
            [_ref(f"http://127.0.0.1:{port}/x.sh")], tmp_path / "s", blob_fetcher=None, log=RecLog()
        )


def test_blob_urls_go_through_the_blob_fetcher(tmp_path: Path) -> None:
    asked: list[str] = []

    def fetch(url: str) -> bytes:
        asked.append(url)
        return b"blob-bytes"

    uri = "http://127.0.0.1:10000/devstoreaccount1/scripts/x.sh?sv=1&sig=SECRET"
    log = RecLog()
    staged = artifacts.fetch_all(
        [_ref(uri, sha256(b"blob-bytes"))], tmp_path / "s", blob_fetcher=fetch, log=log
    )
    assert asked == [uri]
    assert "SECRET" not in log.text and "SECRET" not in staged[0].uri


def test_bad_scheme_and_bad_checksum_format(tmp_path: Path) -> None:
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.fetch_all([_ref("ftp://x/y")], tmp_path / "s", blob_fetcher=None, log=RecLog(), roots=ROOTS)
    assert err.value.code == "UnsupportedUriScheme"
    with pytest.raises(artifacts.ArtifactError) as err2:
        artifacts.fetch_all(
            [_ref("https://x/y", "nothex")], tmp_path / "s", blob_fetcher=None, log=RecLog(), roots=ROOTS
        )
    assert err2.value.code == "InvalidChecksum"
    assert "properties.customize[0].sha256Checksum" in str(err2.value)


def test_file_roots_come_from_the_setting_plus_examples(tmp_path: Path) -> None:
    roots = artifacts.file_roots(f"{tmp_path}:{tmp_path}/b")
    assert roots[:2] == [tmp_path.resolve(), (tmp_path / "b").resolve()]
    assert roots[-1].name == "examples"
