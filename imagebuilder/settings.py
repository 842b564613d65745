"""The app's settings: the one place that reads the environment, and only when asked (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEV_STORAGE = "UseDevelopmentStorage=true"


@dataclass(frozen=True)
class Settings:
    """Frozen app settings, read from the environment (app settings on Azure, local.settings.json locally)."""

    provider: str
    storage_connection: str
    state_dir: Path
    task_hub: str

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        provider = env.get("IMAGEBUILDER_PROVIDER", "local").strip().lower()
        if provider not in ("local", "azure"):
            raise ValueError(
                f"IMAGEBUILDER_PROVIDER={provider!r} is not a provider; set it to 'local' or 'azure'"
            )
        return cls(
            provider=provider,
            storage_connection=env.get("AzureWebJobsStorage", DEV_STORAGE),
            state_dir=Path(env.get("IMAGEBUILDER_STATE_DIR", ".state")).resolve(),
            task_hub=env.get("IMAGEBUILDER_TASK_HUB", "ImageBuilderHub"),
        )
