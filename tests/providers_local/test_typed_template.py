"""The local provider reads the template as the frozen model (`RunContext.template`, parsed once per call):
a stored template that cannot be read fails prepare and create with the field named, every later phase
refuses it as a ProviderError (never a crash), and cleanup does not need it. No builds here."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.pipeline.messages import BuildEnv, CaptureResult, TemplateInput, TemplateRef
from imagebuilder.providers.base import NullLog, ProviderError, TemplateUnreadable
from imagebuilder.providers.local.provider import LocalProvider
from imagebuilder.template import ImageTemplate
from tests.providers_local.test_provider_support import SUB, RecLog, build_input

UNREADABLE = {"customize": [{"type": "Ansible", "playbook": "site.yml"}]}
FIELD = "properties.customize[0].type"


def test_an_unreadable_stored_template_fails_prepare_naming_the_field(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    build = build_input(UNREADABLE)
    res = provider.prepare(build, RecLog())
    assert res.status == "failed" and res.error is not None
    assert res.error.code == "BadCustomizerType" and res.error.step == "prepare"
    assert FIELD in res.error.message and "as stored cannot be read" in res.error.message
    env = BuildEnv(provider="local", handle={"root": str(tmp_path / "none")})
    calls = [
        lambda: provider.customize(build, env, 0, RecLog()),
        lambda: provider.validate(build, env, RecLog()),
        lambda: provider.distribute(build, CaptureResult(status="succeeded"), 0, "westus", RecLog()),
    ]
    for call in calls:
        with pytest.raises(ProviderError, match=r"properties\.customize\[0\]\.type"):
            call()
    report = provider.cleanup(build, keep=False, log=RecLog())
    assert report.errors == []


def test_an_unreadable_template_fails_create(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    resource = build_input(UNREADABLE).template
    staging = provider.create_template(
        TemplateInput(ref=TemplateRef(subscription_id=SUB, resource_group="rg1", template_name="t"),
                      template=resource),
        NullLog(),
    )  # fmt: skip
    assert staging.status == "failed" and staging.error is not None
    assert staging.error.code == "BadCustomizerType" and FIELD in staging.error.message


def test_the_typed_view_is_built_once_per_call(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path / "state")
    ctx = provider.context(
        build_input(
            {"customize": [{"type": "Shell", "inline": ["true"]}], "buildTimeoutInMinutes": 30},
            tags={"imagebuilder.local.Network": "off"},
        )
    )
    assert isinstance(ctx.template, ImageTemplate) and ctx.template is ctx.template
    assert ctx.step_timeout == 30 * 60.0 and ctx.network is False  # tag names match case-insensitively
    with pytest.raises(TemplateUnreadable) as info:
        _ = provider.context(build_input(UNREADABLE)).template
    assert info.value.field == FIELD and info.value.code == "BadCustomizerType"


def test_aib_try_refuses_an_unreadable_template_naming_the_field(tmp_path: Path) -> None:
    from imagebuilder.providers.local import debug

    with pytest.raises(TemplateUnreadable, match=r"properties\.customize\[0\]\.type"):
        debug.try_step(build_input(UNREADABLE).template, 0, state_dir=tmp_path / "state", cache_dir=None)
    assert not (tmp_path / "state").exists()
