"""scriptUri/sourceUri fetching and File destinations under attack, for real: file:// outside the allowed
roots (directly, through `..`, through a symlink inside an allowed root, FIFOs and devices), redirects to
file:// and ftp://, oversized downloads, checksums (case-insensitive, mismatch names both sums, verified
before use), SAS signatures kept out of logs and errors, and destinations that would leave the root."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.providers.base import TransientProviderError
from imagebuilder.providers.local import artifacts, customizers
from imagebuilder.providers.local.artifacts import ArtifactError, ArtifactRef
from imagebuilder.template.models import FileCustomizer, ShellCustomizer
from tests.security.conftest import RecLog

SECRET_SIG = "sv=2024&sig=TOPSECRETsignature%2Bvalue%3D"
BIG = 3 * 1024 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        elif path == "/to-ftp":
            self.send_response(301)
            self.send_header("Location", "ftp://127.0.0.1:1/x")
            self.end_headers()
        elif path == "/to-ok":
            self.send_response(302)
            self.send_header("Location", "/ok.sh")
            self.end_headers()
        elif path == "/ok.sh":
            body = b"#!/bin/sh\necho ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path in ("/big", "/big-chunked"):
            self.send_response(200)
            if path == "/big":
                self.send_header("Content-Length", str(BIG))
            self.end_headers()
            for _ in range(BIG // 65536):
                try:
                    self.wfile.write(b"\0" * 65536)
                except OSError:
                    return
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetch(
    uri: str, dest: Path, *, sha: str = "", roots: list[Path] | None = None, log: RecLog | None = None
) -> Path:
    ref = ArtifactRef("properties.customize[0].scriptUri", uri, sha)
    staged = artifacts.fetch_all([ref], dest, blob_fetcher=None, log=log or RecLog(), roots=roots or [])
    return Path(staged[0].location)


def test_file_uris_outside_the_allowed_roots_are_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.sh").write_text("echo ok\n")
    (allowed / "to-shadow").symlink_to("/etc/shadow")
    (allowed / "to-root").symlink_to("/root")
    os.mkfifo(allowed / "fifo")
    (tmp_path / "secret").write_text("secret")
    roots = [allowed]
    dest = tmp_path / "staging"
    assert _fetch((allowed / "ok.sh").as_uri(), dest, roots=roots).read_text() == "echo ok\n"
    for uri, code in [
        ("file:///etc/shadow", "ArtifactNotAllowed"),
        (f"file://{allowed}/../secret", "ArtifactNotAllowed"),
        (f"file://{allowed}/%2e%2e/secret", "ArtifactNotAllowed"),
        (f"file://{allowed}/to-shadow", "ArtifactNotAllowed"),
        (f"file://{allowed}/to-root/.bashrc", "ArtifactNotAllowed"),
        (f"file://{allowed}/fifo", "ArtifactFetchFailed"),
        (f"file://{allowed}", "ArtifactFetchFailed"),
        ("file://otherhost/etc/passwd", "UnsupportedUriScheme"),
        ("ftp://127.0.0.1/x", "UnsupportedUriScheme"),
        ("data:text/plain,hello", "UnsupportedUriScheme"),
    ]:
        with pytest.raises(ArtifactError) as err:
            _fetch(uri, dest, roots=roots)
        assert err.value.code == code, (uri, err.value)
        assert "properties.customize[0].scriptUri" in str(err.value)
    assert sorted(p.name for p in dest.iterdir()) == [artifacts.staged_name((allowed / "ok.sh").as_uri())]


def test_device_files_are_not_sources(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as err:
        _fetch("file:///dev/zero", tmp_path / "staging", roots=[Path("/dev")])
    assert err.value.code == "ArtifactFetchFailed"


def test_redirects_only_to_http(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "staging"
    for path in ("/to-file", "/to-ftp"):
        with pytest.raises(ArtifactError) as err:
            _fetch(server + path, dest)
        assert "redirect" in str(err.value).lower()
    assert "root:" not in "".join(p.read_text(errors="replace") for p in dest.iterdir())
    assert _fetch(server + "/to-ok", dest).read_text() == "#!/bin/sh\necho ok\n"


def test_oversized_downloads_stop_at_the_limit(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts, "MAX_BYTES", 1024 * 1024)
    dest = tmp_path / "staging"
    for path in ("/big", "/big-chunked"):
        with pytest.raises(ArtifactError) as err:
            _fetch(server + path, dest)
        assert err.value.code == "ArtifactTooLarge"
    assert list(dest.iterdir()) == []  # no partial file left behind


def test_checksums_case_insensitive_mismatch_names_both(tmp_path: Path) -> None:
    src = tmp_path / "allowed" / "s.sh"
    src.parent.mkdir()
    src.write_bytes(b"echo hi\n")
    good = hashlib.sha256(b"echo hi\n").hexdigest()
    ref = artifacts.collect(
        {
            "properties": {
                "customize": [{"type": "Shell", "scriptUri": src.as_uri(), "sha256Checksum": good.upper()}]
            }
        }
    )
    staged = artifacts.fetch_all(ref, tmp_path / "st", blob_fetcher=None, log=RecLog(), roots=[src.parent])
    assert staged[0].sha256 == good
    wrong = "0" * 64
    target = tmp_path / "st2"
    with pytest.raises(ArtifactError) as err:
        _fetch(src.as_uri(), target, sha=wrong, roots=[src.parent])
    assert err.value.code == "ChecksumMismatch" and wrong in str(err.value) and good in str(err.value)
    assert list(target.iterdir()) == []  # a file that failed its checksum is not kept for use
    # A staged file altered after the fact is fetched again and checked, never used as is.
    (target / artifacts.staged_name(src.as_uri())).write_bytes(b"tampered")
    assert _fetch(src.as_uri(), target, sha=good, roots=[src.parent]).read_bytes() == b"echo hi\n"


def test_sas_signatures_never_reach_logs_or_errors(server: str, tmp_path: Path) -> None:
    log = RecLog()
    with pytest.raises(ArtifactError) as err:
        _fetch(f"{server}/missing.sh?{SECRET_SIG}", tmp_path / "st", log=log)
    with pytest.raises(TransientProviderError) as err2:
        _fetch(f"http://127.0.0.1:1/x.sh?{SECRET_SIG}", tmp_path / "st", log=log)
    outcome = customizers.run_shell(
        ShellCustomizer.model_construct(type="Shell", script_uri=f"https://h.invalid/x.sh?{SECRET_SIG}"),
        step_key="s",
        root=tmp_path,
        inbox=tmp_path / "inbox",
        artifacts=tmp_path / "none",
        network=False,
        run_marker="m",
        log=log,
        timeout=10,
    )
    for text in (str(err.value), str(err2.value), log.text, outcome.message):
        assert "TOPSECRET" not in text
    assert (
        artifacts.scrub(f"x?{SECRET_SIG}&se=1 AccountKey=abc==;B=1")
        == "x?sv=2024&sig=<redacted>&se=1 AccountKey=<redacted>;B=1"
    )


@pytest.mark.parametrize(
    "destination",
    ["/etc/../../../../tmp/evil", "etc/relative", "/", "/a\x00b", "../x", "/etc/./../x"],
)
def test_file_destinations_that_would_leave_the_root_are_refused(
    root: Path, tmp_path: Path, destination: str
) -> None:
    staged = tmp_path / "artifacts"
    staged.mkdir()
    uri = "https://h.invalid/f.conf"
    (staged / artifacts.staged_name(uri)).write_text("x")
    outcome = customizers.run_file(
        FileCustomizer.model_construct(type="File", source_uri=uri, destination=destination),
        where="properties.customize[0]",
        root=root,
        artifacts=staged,
        log=RecLog(),
    )
    assert not outcome.ok and outcome.code == "InvalidDestination"
    assert "properties.customize[0].destination" in outcome.message
    assert not Path("/tmp/evil").exists()


def test_file_destination_onto_a_device_or_fifo_in_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    os.mkfifo(root / "etc" / "fifo")
    staged = tmp_path / "artifacts"
    staged.mkdir()
    uri = "https://h.invalid/f.conf"
    (staged / artifacts.staged_name(uri)).write_text("x")
    outcome = customizers.run_file(
        FileCustomizer.model_construct(type="File", source_uri=uri, destination="/etc/fifo"),
        where="properties.customize[0]",
        root=root,
        artifacts=staged,
        log=RecLog(),
    )
    assert not outcome.ok and outcome.code == "InvalidDestination"
