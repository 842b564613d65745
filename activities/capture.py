"""The `capture` activity: capture the generalized build environment as an image to distribute. What
the provider read from the image (its SBOM inventory) is stored with the run, not passed on: the run
record keeps a summary (`details.sbom`) and the freshness check (`details.freshness`)."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from activities._common import run_phase, store
from imagebuilder.pipeline.messages import BuildEnv, BuildInput, CaptureResult
from imagebuilder.providers.base import LogSink

bp = df.Blueprint()


def keep_inventory(build: BuildInput, result: Any, log: LogSink) -> Any:
    """`result` without its inventory, which goes to the run's store (the durable history stays small)."""
    if not isinstance(result, CaptureResult) or result.status != "succeeded":
        return result
    image = dict(result.image)
    inventory = image.pop("inventory", None)
    freshness = image.get("freshness")
    details: dict[str, Any] = {}
    if image.get("sha256"):
        details["capture"] = {"sha256": image["sha256"], "size": image.get("size")}
    if isinstance(inventory, dict):
        store().runs.put_sbom_inventory(build.run, inventory)
        image["sbom"] = {
            "kind": inventory.get("kind"),
            "os": inventory.get("os_name"),
            "packages": len(inventory.get("packages") or []),
            "files": len(inventory.get("files") or []),
        }
        details["sbom"] = {**image["sbom"], "formats": ["spdx", "cyclonedx"]}
        log.write(f"==> capture: SBOM inventory stored ({image['sbom']['packages']} packages)\n")
    if isinstance(freshness, dict):
        details["freshness"] = freshness
    if details:
        store().runs.set_status(build.run, details=details)
    return result.model_copy(update={"image": image})


@bp.activity_trigger(input_name="payload")
def capture(payload: dict[str, Any]) -> dict[str, Any]:
    """Input: {build, step, env: BuildEnv}. Returns an Outcome of CaptureResult."""
    env = BuildEnv.model_validate(payload["env"])
    return run_phase(
        payload, lambda provider, build, log: keep_inventory(build, provider.capture(build, env, log), log)
    )
