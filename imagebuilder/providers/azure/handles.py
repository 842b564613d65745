"""Typed handles of the Azure provider: what a run's build environment and its captured image are, as
frozen models. On the durable wire they stay plain JSON (`BuildEnv.handle`, `CaptureResult.image`); the
phases read them through these models, never as loose dicts."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from imagebuilder.pipeline.messages import BuildEnv, CaptureResult, ErrorInfo, Message, SourceInfo


class BuildHandle(Message):
    """The build VM of one run and what the steps need to know about it."""

    status: str = Field("ready", description="ready, or failed (then `error` says why)")
    subscription: str = ""
    resource_group: str = ""
    vm: str = ""
    vm_id: str = ""
    os_disk: str = ""
    os_type: str = "Linux"
    location: str = ""
    hyper_v_generation: str = "V1"
    security_type: str = "Standard"
    source: SourceInfo | None = None
    artifacts: dict[str, str] = Field(default_factory=dict, description="scriptUri/sourceUri -> sha256")
    identities: list[str] = Field(default_factory=list, description="vmProfile.userAssignedIdentities")
    error: ErrorInfo | None = None

    @classmethod
    def of(cls, env: BuildEnv | dict[str, Any]) -> BuildHandle:
        parsed = env if isinstance(env, BuildEnv) else BuildEnv.model_validate(env)
        return cls.model_validate(parsed.handle)

    def as_env(self) -> BuildEnv:
        return BuildEnv(provider="azure", handle=self.model_dump(mode="json", exclude_none=True))


class CapturedImage(Message):
    """The generalized build: a managed image (Standard builds) or the VM itself (Trusted Launch)."""

    managed_image_id: str | None = None
    trusted_launch: bool = False
    vm_id: str
    resource_group: str
    os_disk: str
    location: str
    os_type: str = "Linux"
    hyper_v_generation: str = "V1"
    source: SourceInfo | None = None

    @classmethod
    def of(cls, captured: CaptureResult | dict[str, Any]) -> CapturedImage:
        parsed = captured if isinstance(captured, CaptureResult) else CaptureResult.model_validate(captured)
        return cls.model_validate(parsed.image)
