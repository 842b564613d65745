"""The app's settings: the one place that reads the environment, and only when asked (never at import)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEV_STORAGE = "UseDevelopmentStorage=true"


@dataclass(frozen=True)
class Settings:
    """Frozen app settings, read from the environment (app settings on Azure, local.settings.json locally)."""

    provider: str
    storage_connection: str
    state_dir: Path
    task_hub: str

    list_page_size: int = 100
    timeout_scale: float = 1.0
    # Ed25519 private key (PEM) that signs provenance; on Azure a Key Vault reference. Locally, when
    # empty, a key is created in the state directory (see imagebuilder.provenance.keys).
    provenance_key: str = field(default="", repr=False)
    builder_id: str = ""
    # The host's own name (`WEBSITE_HOSTNAME`: set by Azure, and by Core Tools and local_runtime locally).
    website_hostname: str | None = None
    #: IMAGEBUILDER_STRICT_TEMPLATE_MEMBERS: refuse unknown template members instead of dropping them
    #: with a warning (AIB drops them).
    strict_template_members: bool = False
    #: IMAGEBUILDER_MAX_CONCURRENT_BUILDS: how many runs of the whole app may be past Queued at once
    #: (see `default_max_concurrent_builds`); the others wait in runSubState Queued, first come first
    #: served.
    max_concurrent_builds: int = 1

    @property
    def build_slot_pool(self) -> str:
        """The name of the app's build slot pool in storage. Azure builds share a pool per app (task
        hub); local builds share the machine they run on, so the pool is also per provider state folder
        (one host per state folder): two local hosts on one storage account do not share slots."""
        if self.provider == "local":
            folder = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
            return f"{self.task_hub}|local|{folder}"
        return f"{self.task_hub}|{self.provider}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        provider = env.get("IMAGEBUILDER_PROVIDER", "local").strip().lower()
        if provider not in ("local", "azure"):
            raise ValueError(
                f"IMAGEBUILDER_PROVIDER={provider!r} is not a provider; set it to 'local' or 'azure'"
            )
        return cls(
            provider=provider,
            storage_connection=_storage_connection(env),
            state_dir=Path(env.get("IMAGEBUILDER_STATE_DIR", ".state")).resolve(),
            task_hub=env.get("IMAGEBUILDER_TASK_HUB", "ImageBuilderHub"),
            list_page_size=_positive_int(env, "IMAGEBUILDER_LIST_PAGE_SIZE", 100),
            timeout_scale=_positive_float(env, "IMAGEBUILDER_TIMEOUT_SCALE", 1.0),
            provenance_key=env.get("IMAGEBUILDER_PROVENANCE_SIGNING_KEY", ""),
            builder_id=env.get("IMAGEBUILDER_BUILDER_ID", "").strip(),
            website_hostname=(env.get("WEBSITE_HOSTNAME") or "").strip() or None,
            strict_template_members=_flag(env, "IMAGEBUILDER_STRICT_TEMPLATE_MEMBERS"),
            max_concurrent_builds=_positive_int(
                env, "IMAGEBUILDER_MAX_CONCURRENT_BUILDS", default_max_concurrent_builds(provider)
            ),
        )


# Azure: the build VMs run in the user's subscription, so the bound is their regional vCPU quota, not
# this app: 5 default build VMs (Standard_D2ds_v4, 2 vCPUs) are 10 vCPUs, within a new subscription's
# usual regional quota of a VM family. Raise it with the quota.
AZURE_MAX_CONCURRENT_BUILDS = 5
# Locally a build holds about one core (customizer steps, the TCG boot check) and up to a few GiB of
# memory (QEMU guest 1 GiB, image and cache writes in the page cache): one build per core, at most one
# per 3 GiB of memory.
LOCAL_GIB_PER_BUILD = 3


def default_max_concurrent_builds(provider: str) -> int:
    """IMAGEBUILDER_MAX_CONCURRENT_BUILDS when unset: for `azure` AZURE_MAX_CONCURRENT_BUILDS; for
    `local` one per usable core, at most one per LOCAL_GIB_PER_BUILD GiB of memory, at least 1 (2 on a
    2-core, 24 GiB machine)."""
    if provider != "local":
        return AZURE_MAX_CONCURRENT_BUILDS
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = float(LOCAL_GIB_PER_BUILD * cores)
    return max(1, min(cores, int(memory_gib // LOCAL_GIB_PER_BUILD)))


@dataclass(frozen=True)
class AzureSettings:
    """The Azure provider's app settings (IMAGEBUILDER_AZURE_*, IMAGEBUILDER_ARM_ENDPOINT,
    IMAGEBUILDER_ARTIFACTS_CONTAINER, IMAGEBUILDER_{DEBIAN,UBUNTU}_SECURITY_MIRROR), each checked: a bad
    value is a ValueError naming the setting and what it must be."""

    credential_mode: str = "default"
    client_id: str | None = None
    arm_endpoint: str = "https://management.azure.com"
    poll_seconds: int = 15
    cleanup_seconds: float = 300.0
    write_interval: float = 1.0
    generalize_seconds: int = 3600
    artifacts_container: str = "image-artifacts"
    inventory: bool = True
    security_mirror: str = "http://deb.debian.org/debian-security"
    ubuntu_security_mirror: str = "http://security.ubuntu.com/ubuntu"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AzureSettings:
        env = os.environ if environ is None else environ
        mode = (env.get("IMAGEBUILDER_AZURE_CREDENTIAL") or "default").strip().lower()
        if mode not in ("default", "template"):
            raise ValueError(
                f"IMAGEBUILDER_AZURE_CREDENTIAL={mode!r} is not a credential mode; set it to 'default' "
                "(the app's identity) or 'template' (the template's user-assigned identity)"
            )
        endpoint = (env.get("IMAGEBUILDER_ARM_ENDPOINT") or "").strip() or cls.arm_endpoint
        if not endpoint.startswith("https://"):
            raise ValueError(
                f"IMAGEBUILDER_ARM_ENDPOINT={endpoint!r} is not an https URL; leave it unset "
                "(https://management.azure.com) or set your cloud's Resource Manager endpoint"
            )
        container = (env.get("IMAGEBUILDER_ARTIFACTS_CONTAINER") or "").strip() or cls.artifacts_container
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", container):
            raise ValueError(
                f"IMAGEBUILDER_ARTIFACTS_CONTAINER={container!r} is not a blob container name; use 3-63 "
                "lower-case letters, digits and single hyphens (e.g. image-artifacts)"
            )
        mirror = _mirror(env, "IMAGEBUILDER_DEBIAN_SECURITY_MIRROR", cls.security_mirror)
        ubuntu = _mirror(env, "IMAGEBUILDER_UBUNTU_SECURITY_MIRROR", cls.ubuntu_security_mirror)
        return cls(
            credential_mode=mode,
            client_id=(env.get("IMAGEBUILDER_AZURE_CLIENT_ID") or env.get("AZURE_CLIENT_ID") or None),
            arm_endpoint=endpoint,
            poll_seconds=_positive_int(env, "IMAGEBUILDER_AZURE_POLL_SECONDS", 15, unit="seconds"),
            cleanup_seconds=_positive_float(
                env, "IMAGEBUILDER_AZURE_CLEANUP_SECONDS", 300.0, example="300 (seconds)"
            ),
            write_interval=_non_negative_float(env, "IMAGEBUILDER_AZURE_WRITE_INTERVAL", 1.0),
            generalize_seconds=_positive_int(
                env, "IMAGEBUILDER_AZURE_GENERALIZE_SECONDS", 3600, unit="seconds"
            ),
            artifacts_container=container,
            inventory=not _flag(env, "IMAGEBUILDER_AZURE_SKIP_INVENTORY"),
            security_mirror=mirror,
            ubuntu_security_mirror=ubuntu,
        )


def _mirror(env: Mapping[str, str], name: str, default: str) -> str:
    """A security mirror URL, '' for 'off' (no freshness check)."""
    mirror = (env.get(name) or "").strip() or default
    if mirror.lower() == "off":
        return ""
    if not mirror.startswith(("http://", "https://")):
        raise ValueError(
            f"{name}={mirror!r} is not an http(s) URL; leave it unset ({default}), set a mirror of it, or "
            "'off' (no freshness check)"
        )
    return mirror


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={raw!r} is not a switch; set it to true or false")


def _positive_float(env: Mapping[str, str], name: str, default: float, example: str = "0.05") -> float:
    """A test knob such as IMAGEBUILDER_TIMEOUT_SCALE (it multiplies buildTimeoutInMinutes, whose AIB
    minimum is 6, so end-to-end tests can time out in seconds)."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(
            f"{name}={raw!r} is not a positive number; leave it unset ({default:g}) or set e.g. {example}"
        )
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int, unit: str = "") -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        what = f" of {unit}" if unit else ""
        raise ValueError(
            f"{name}={raw!r} is not a positive whole number{what}; leave it unset ({default}) or set it "
            f"to e.g. {default}"
        )
    return value


def _non_negative_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(
            f"{name}={raw!r} is not a number of seconds (0 or more); leave it unset ({default:g}) or set "
            "e.g. 0.5"
        )
    return value


def _storage_connection(env: Mapping[str, str]) -> str:
    """AzureWebJobsStorage as a connection string, or the identity-based form the Functions host uses on
    Azure (`AzureWebJobsStorage__accountName`, `__credential`, `__clientId`, `__<service>ServiceUri`),
    turned into the secret-free string the store understands."""
    conn = env.get("AzureWebJobsStorage")
    if conn:
        return conn
    prefix = "AzureWebJobsStorage__"
    account = env.get(prefix + "accountName")
    if not account:
        return DEV_STORAGE
    parts = [f"AccountName={account}", "Credential=managedidentity"]
    client_id = env.get(prefix + "clientId")
    if client_id:
        parts.append(f"ClientId={client_id}")
    for service, key in (("blob", "BlobEndpoint"), ("queue", "QueueEndpoint"), ("table", "TableEndpoint")):
        uri = env.get(f"{prefix}{service}ServiceUri")
        if uri:
            parts.append(f"{key}={uri}")
    return ";".join(parts)
