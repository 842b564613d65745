"""`latest` of the local Debian base follows the mirror: a tiny HTTP mirror served here (InRelease files
with a Date) moves, and `latest` moves with it after the refresh window, not inside it; an unreachable
mirror falls back to the newest cached base with a warning; the SourceImage trigger probe sees the new
version; explicit versions stay exact. No Debian base is built (the cache holds stand-in manifests)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imagebuilder.providers.base import ProviderError
from imagebuilder.providers.local import bases, catalog, mirrorstate
from imagebuilder.providers.local.probe import probe_inputs


class ListLog:
    uri = "mem://log"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


class Mirror:
    """A Debian mirror's dists/*/InRelease heads, with a Date that the test moves."""

    def __init__(self) -> None:
        self.date = "Sat, 05 Dec 2026 08:12:01 UTC"
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                if not self.path.endswith("/InRelease"):
                    self.send_error(404)
                    return
                suite = self.path.split("/")[-2]
                body = (
                    "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n"
                    f"Suite: {suite}\nCodename: {suite}\nDate: {mirror.date}\n"
                    + "SHA256:\n"
                    + " 0123 1 main/binary-amd64/Packages\n" * 2000
                ).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/debian"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    m = Mirror()
    monkeypatch.setenv(bases.MIRROR_SETTING, m.url)
    try:
        yield m
    finally:
        m.server.shutdown()
        m.server.server_close()


RECIPE = bases.recipe_for("debian")


def fake_cached(cache: Path, version: str, built_at: str) -> None:
    """A cached base as `ensure_base` leaves it (tarball + manifest): a stand-in, never extracted here."""
    tarball = bases.tarball_path("debian", version, cache)
    tarball.write_bytes(b"stand-in")
    manifest = {"version": version, "recipe_hash": RECIPE.content_hash, "built_at": built_at}
    tarball.with_name(f"debian-{version}.manifest.json").write_text(json.dumps(manifest))


def latest(cache: Path, hours: float | None, log: ListLog | None = None) -> str:
    return catalog.resolve(
        "Debian", "debian-12", "12", "latest", cache_dir=cache, refresh_hours=hours, log=log
    ).version


def test_latest_moves_with_the_mirror_after_the_window(tmp_path: Path, mirror: Mirror) -> None:
    first = latest(tmp_path, 24)
    assert first == RECIPE.mirror_version("202612050812")
    assert len(mirror.requests) == 3  # one InRelease per suite
    assert {r.split("/")[-2] for r in mirror.requests} == {
        "bookworm",
        "bookworm-updates",
        "bookworm-security",
    }
    mirror.date = "Sun, 06 Dec 2026 02:00:00 UTC"
    assert latest(tmp_path, 24) == first  # inside the window: no request, the same base
    assert len(mirror.requests) == 3
    log = ListLog()
    moved = latest(tmp_path, 0, log)  # the window is over
    assert moved == RECIPE.mirror_version("202612060200") != first
    assert any("mirror moved" in line for line in log.lines)
    # Both stay exact and resolvable: the new one is what the state names, the old one once cached.
    assert catalog.resolve("Debian", "debian-12", "12", moved, cache_dir=tmp_path).version == moved
    with pytest.raises(catalog.CatalogError, match="not available locally"):
        catalog.resolve("Debian", "debian-12", "12", first, cache_dir=tmp_path)
    fake_cached(tmp_path, first, "2026-12-05T09:00:00Z")
    assert catalog.resolve("Debian", "debian-12", "12", first, cache_dir=tmp_path).version == first


def test_unreachable_mirror_falls_back_to_the_newest_cached_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(bases.MIRROR_SETTING, "http://127.0.0.1:9/debian")  # discard port: refused
    log = ListLog()
    assert latest(tmp_path, 0, log) == RECIPE.version  # nothing cached: the recipe's own version
    assert any(line.startswith("WARNING: cannot check the Debian mirror") for line in log.lines)
    older, newer = RECIPE.mirror_version("202611010000"), RECIPE.mirror_version("202612010000")
    fake_cached(tmp_path, older, "2026-11-01T01:00:00Z")
    fake_cached(tmp_path, newer, "2026-12-01T01:00:00Z")
    log = ListLog()
    assert latest(tmp_path, 0, log) == newer
    assert f"using the newest cached base {newer}" in "".join(log.lines)
    # Pinned (the tests' setting): the newest cached base, and no mirror check at all.
    assert latest(tmp_path, None, ListLog()) == newer


def test_pinned_without_a_cached_base_checks_once_then_holds(tmp_path: Path, mirror: Mirror) -> None:
    first = latest(tmp_path, None)
    mirror.date = "Mon, 07 Dec 2026 00:00:00 UTC"
    assert latest(tmp_path, None) == first
    assert len(mirror.requests) == 3


def test_busybox_has_no_mirror(tmp_path: Path, mirror: Mirror) -> None:
    base = catalog.resolve(
        "ImageBuilderLocal", "busybox", "stable", "latest", cache_dir=tmp_path, refresh_hours=0
    )
    assert base.version == bases.recipe_for("busybox").version
    assert mirror.requests == []


def test_the_refresh_setting() -> None:
    assert mirrorstate.parse_refresh_hours(None) == 24
    assert mirrorstate.parse_refresh_hours("6") == 6
    assert mirrorstate.parse_refresh_hours("never") is None
    with pytest.raises(ProviderError, match=mirrorstate.REFRESH_SETTING):
        mirrorstate.parse_refresh_hours("daily")


def test_the_source_trigger_probe_sees_the_new_version(
    tmp_path: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEBUILDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(mirrorstate.REFRESH_SETTING, "0")
    template = {  # a template as stored (what triggers probe)
        "location": "westus",
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": "Debian",
                "offer": "debian-12",
                "sku": "12",
                "version": "latest",
            },
            "distribute": [{"type": "VHD", "runOutputName": "vhd"}],
        },
    }
    before = probe_inputs(template, with_artifacts=False, state_dir=tmp_path / "state").source
    mirror.date = "Tue, 08 Dec 2026 10:30:00 UTC"
    after = probe_inputs(template, with_artifacts=False, state_dir=tmp_path / "state").source
    assert before.exact_version == RECIPE.mirror_version("202612050812")
    assert after.exact_version == RECIPE.mirror_version("202612081030")
