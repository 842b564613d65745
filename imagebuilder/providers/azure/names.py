"""ARM ids and the deterministic names of one run's transient resources (a retry finds what the first
attempt made, because every name derives from the template and the run)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from imagebuilder.pipeline.messages import BuildInput
from imagebuilder.providers.azure import staging as staging_group
from imagebuilder.providers.azure.clients import ArmFailure

_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<ns>[^/]+)/(?P<rest>.+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ArmId:
    subscription: str
    resource_group: str
    namespace: str
    parts: tuple[str, ...]  # type, name, child type, child name, ...

    @classmethod
    def parse(cls, value: str, field: str) -> ArmId:
        match = _ID.match(value or "")
        if not match:
            raise ArmFailure(
                "InvalidResourceId",
                f"{field} is not an ARM resource id: {value!r} "
                "(expected /subscriptions/<id>/resourceGroups/<rg>/providers/<namespace>/<type>/<name>)",
            )
        rest = tuple(match.group("rest").split("/"))
        return cls(match.group("sub"), match.group("rg"), match.group("ns"), rest)

    def name(self, type_name: str) -> str:
        lowered = [p.lower() for p in self.parts]
        index = lowered.index(type_name.lower())
        return self.parts[index + 1]


@dataclass(frozen=True)
class Names:
    """Every transient name of one run (deterministic: a retry finds what the first attempt made)."""

    key: str
    resource_group: str
    resource_group_given: bool
    vm: str
    template_owned: bool  # the template's staging group (made at template create, kept across runs)
    computer: str
    nic: str
    nsg: str
    vnet: str
    os_disk: str
    image: str

    @classmethod
    def of(cls, build: BuildInput) -> Names:
        run = build.run
        key = hashlib.sha256(f"{run.template_id.lower()}|{run.run_id}".encode()).hexdigest()[:10]
        # Read from the JSON as stored, not the model: names must derive for cleanup even when the template
        # cannot be read (and exactStagingResourceGroup, beside it, is server state the model drops).
        staging = str((build.template.get("properties") or {}).get("stagingResourceGroup") or "")
        given = bool(staging)
        template_group = staging_group.of_build(build)
        if template_group is not None:
            rg = template_group.name
        elif given:
            parsed = re.fullmatch(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/?", staging, re.IGNORECASE)
            if not parsed:
                raise ArmFailure(
                    "InvalidStagingResourceGroup",
                    f"properties.stagingResourceGroup {staging!r} is not a resource group id "
                    "(/subscriptions/<id>/resourceGroups/<name>)",
                )
            if parsed.group(1).lower() != run.subscription_id.lower():
                raise ArmFailure(
                    "InvalidStagingResourceGroup",
                    "properties.stagingResourceGroup must be in the template's subscription",
                )
            rg = parsed.group(2)
        else:
            rg = re.sub(r"[^\w\-.()]", "_", f"IT_{run.resource_group}_{run.template_name}_{key}")[:90]
        base = f"ib-{key}"
        return cls(
            key=key,
            resource_group=rg,
            resource_group_given=given,
            vm=f"{base}-vm",
            template_owned=template_group is not None,
            computer=f"ib{key[:10]}",
            nic=f"{base}-nic",
            nsg=f"{base}-nsg",
            vnet=f"{base}-vnet",
            os_disk=f"{base}-osdisk",
            image=f"{base}-image",
        )

    def data_disk(self, lun: int) -> str:
        return f"ib-{self.key}-data{lun}"
