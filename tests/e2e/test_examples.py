"""The example templates are valid AIB templates, and the checksums they carry match their files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from examples.demo import EXAMPLES, load_template
from imagebuilder.template import parse_template

TEMPLATES = sorted((EXAMPLES / "templates").glob("*.json"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_example_template_parses_and_checksums_match(path: Path) -> None:
    template = load_template(path, "http://127.0.0.1:8080")
    parse_template(json.loads(json.dumps(template)))
    for c in template["properties"].get("customize", []):
        if c.get("sha256Checksum"):
            uri = c.get("sourceUri") or c.get("scriptUri")
            local = EXAMPLES / uri.removeprefix("http://127.0.0.1:8080/")
            assert hashlib.sha256(local.read_bytes()).hexdigest() == c["sha256Checksum"], local


def test_there_is_a_debian_demo_and_a_busybox_example() -> None:
    assert {p.name for p in TEMPLATES} >= {"debian12-webserver.json", "busybox-webpage.json"}
