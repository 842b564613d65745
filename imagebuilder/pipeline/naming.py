"""Deterministic names of a build: durable function names, child instance ids and step names.

Everything here derives from (template, run, step) so that a replay or a retry computes the same name
again; nothing reads a clock or a random source.
"""

from __future__ import annotations

import hashlib
from typing import Any

from imagebuilder.pipeline.messages import RunRef, TemplateRef

# Durable function names (the orchestrators and activities register exactly these).
BUILD_ORCHESTRATION = "build_image"
DISTRIBUTE_ORCHESTRATION = "distribute_image"
CANCEL_EVENT = "cancel"
# Template lifecycle: create (checks, staging resources, then autoRun's build) and delete (staging removed).
PROVISION_ORCHESTRATION = "provision_template"
DELETE_TEMPLATE_ORCHESTRATION = "delete_template"
ACTIVITY_CREATE_TEMPLATE = "create_template_step"
ACTIVITY_DELETE_TEMPLATE = "delete_template_step"

ACTIVITY_PREPARE = "prepare"
ACTIVITY_CREATE_ENV = "create_env"
ACTIVITY_CUSTOMIZE = "customize"
ACTIVITY_VALIDATE = "validate"
ACTIVITY_GENERALIZE = "generalize"
ACTIVITY_CAPTURE = "capture"
ACTIVITY_DISTRIBUTE = "distribute"
ACTIVITY_CLEANUP = "cleanup"
ACTIVITY_RUN_STATUS = "run_status"
ACTIVITY_POLL = "poll"
# Build slots (activities/build_slots.py): at most IMAGEBUILDER_MAX_CONCURRENT_BUILDS runs past Queued.
ACTIVITY_ACQUIRE_SLOT = "acquire_build_slot"
ACTIVITY_RELEASE_SLOT = "release_build_slot"

PHASE_ACTIVITIES = (
    ACTIVITY_PREPARE,
    ACTIVITY_CREATE_ENV,
    ACTIVITY_CUSTOMIZE,
    ACTIVITY_VALIDATE,
    ACTIVITY_GENERALIZE,
    ACTIVITY_CAPTURE,
    ACTIVITY_DISTRIBUTE,
    ACTIVITY_CLEANUP,
)


def build_instance_id(run: RunRef) -> str:
    """The `build_image` instance of a run: derived from (template, run id), so it is stable."""
    digest = hashlib.sha256(run.template_id.lower().encode()).hexdigest()[:12]
    return f"{run.template_name}-{digest}-{run.run_id}"


def template_instance_id(kind: str, ref: TemplateRef, operation_id: str) -> str:
    """The instance of a template's `provision_template` / `delete_template` for one ARM operation."""
    digest = hashlib.sha256(ref.template_id.lower().encode()).hexdigest()[:12]
    return f"{kind}-{ref.template_name}-{digest}-{operation_id}"


def distribute_instance_id(parent_instance_id: str, target_index: int) -> str:
    """The instance id of the `distribute_image` child for `properties.distribute[target_index]`."""
    return f"{parent_instance_id}:distribute:{target_index}"


def customizer_step(index: int, customizer: dict[str, Any]) -> str:
    """`customize[2] (Shell: install nginx)`: the JSON path plus what the user called the step (the
    local provider names its steps the same way)."""
    kind = str(customizer.get("type") or "?")
    name = customizer.get("name")
    return f"customize[{index}] ({kind}: {name})" if name else f"customize[{index}] ({kind})"


def distribute_step(index: int, run_output_name: str, region: str) -> str:
    """`distribute[1] (galleryOut) in westeurope`."""
    return f"distribute[{index}] ({run_output_name}) in {region}"


STEP_PREPARE = "prepare (source and artifacts)"
STEP_CREATE_ENV = "create build environment"
STEP_VALIDATE = "validate.inVMValidations"
STEP_GENERALIZE = "generalize"
STEP_CAPTURE = "capture"
STEP_CLEANUP = "cleanup"
