"""A Schedule trigger with onlyWhenSecurityUpdatesPending: the first due tick builds (nothing succeeded
yet); an image with no Debian packages is skipped, saying so; an image whose recorded packages have a
newer version in the real bookworm-security suite (deb.debian.org) is rebuilt, with the count."""

from __future__ import annotations

import pytest

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.provenance.sbom import InstalledPackage, Inventory
from tests.triggers.conftest import RG, SUB, Env, template

pytestmark = pytest.mark.slow


def test_schedule_builds_only_when_security_updates_are_pending(env: Env) -> None:
    name = "security-scheduled"
    env.api.put_template(name, template())
    env.trigger(
        name,
        "patch-tuesday",
        {
            "properties": {
                "kind": "Schedule",
                "schedule": "*/4 * * * * *",
                "onlyWhenSecurityUpdatesPending": True,
            }
        },
    )
    try:
        runs = env.wait_runs(name, lambda rs: len(rs) >= 1, "the first scheduled build")
        first = runs[0]["name"]
        env.wait_done(name, first)
        runs = env.wait_runs(
            name,
            lambda rs: any(r["properties"]["message"].startswith("Skipped:") for r in rs),
            "a skipped run",
        )
        skipped = next(r for r in runs if r["properties"]["message"].startswith("Skipped:"))["properties"]
        assert "recorded no Debian package inventory" in skipped["message"], skipped["message"]

        # the image of the first run, as if it were a Debian 12 image with an old openssl
        old = Inventory(
            kind="dpkg", os_id="debian", os_version_id="12", os_codename="bookworm",
            packages=[InstalledPackage(name="openssl", version="3.0.0-1", arch="amd64")],
        )  # fmt: skip
        ref = RunRef(subscription_id=SUB, resource_group=RG, template_name=name, run_id=first)
        env.store.runs.put_sbom_inventory(ref, old.model_dump(mode="json"))
        runs = env.wait_runs(
            name,
            lambda rs: any(
                (r["properties"]["details"].get("trigger") or {}).get("securityUpdatesPending") for r in rs
            ),
            "a build for pending security updates",
        )
        patched = next(
            r for r in runs if (r["properties"]["details"].get("trigger") or {}).get("securityUpdatesPending")
        )
        assert patched["properties"]["details"]["trigger"]["packages"] == ["openssl"]
        env.wait_done(name, patched["name"])
    finally:
        env.api.request("DELETE", env.api.template_path(name) + "/triggers/patch-tuesday")
