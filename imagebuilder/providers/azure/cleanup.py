"""The cleanup phase of the Azure provider: every transient resource of one run deleted in dependency order
(VM, NIC, public IPs, disks, snapshots, capture image, VNet, NSG, then a per-run staging group), each found
by its name or the run's tag, not by a handle. Waits within a budget; past it raises a transient error so
the activity is retried. A delete ARM refuses is reported and the rest still goes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from imagebuilder.pipeline.messages import BuildInput, CleanupReport
from imagebuilder.providers.azure.clients import (
    ArmFailure,
    AzureClients,
    OperationStatus,
    Started,
    Throttled,
)
from imagebuilder.providers.azure.context import TAG_RUN, Settings, polled, state_of, template_or_none
from imagebuilder.providers.azure.names import Names
from imagebuilder.providers.base import LogSink, TransientProviderError


def cleanup(settings: Settings, build: BuildInput, *, keep: bool, log: LogSink) -> CleanupReport:
    """Delete the run's transient resources (or, with `keep`, say which are kept)."""
    return RunCleanup(settings, build, log).run(keep=keep)


class RunCleanup:
    """One cleanup pass: what was removed, what ARM refused, and the budget's deadline."""

    def __init__(self, settings: Settings, build: BuildInput, log: LogSink) -> None:
        self.settings = settings
        self.build = build
        self.log = log
        self.names = Names.of(build)
        self.arm: AzureClients = settings.clients(build.run.subscription_id, build)
        self.removed: list[str] = []
        self.errors: list[str] = []
        self.deadline = 0.0

    @property
    def _group_id(self) -> str:
        return f"/subscriptions/{self.build.run.subscription_id}/resourceGroups/{self.names.resource_group}"

    def run(self, *, keep: bool) -> CleanupReport:
        arm, names, rg = self.arm, self.names, self.names.resource_group
        group = arm.get("read staging resource group", lambda: arm.resources.resource_groups.get(rg))
        if group is None:
            self.log.write(f"cleanup: staging resource group {rg} does not exist, nothing to do\n")
            return CleanupReport()
        base = f"{self._group_id}/providers"
        if keep:
            self.log.write(f"cleanup: keeping the build VM {names.vm} in {rg} (errorHandling abort)\n")
            return CleanupReport(
                kept=[f"{base}/Microsoft.Compute/virtualMachines/{names.vm}", self._group_id]
            )
        self.deadline = self.settings.clock() + self.settings.cleanup_budget
        compute, network = arm.compute, arm.network
        self.remove("VM", compute.virtual_machines, names.vm, f"{base}/Microsoft.Compute/virtualMachines")
        self.remove(
            "network interface",
            network.network_interfaces,
            names.nic,
            f"{base}/Microsoft.Network/networkInterfaces",
        )
        for ip in self.tagged(
            "list public IPs", lambda: [dict(i) for i in network.public_ip_addresses.list(rg)]
        ):
            self.remove("public IP", network.public_ip_addresses, str(ip["name"]), rid=str(ip["id"]))
        template = template_or_none(self.build)  # cleanup never needs a readable template
        data_disks = len((template.properties.additional_data_disks or []) if template is not None else [])
        for disk in [names.os_disk] + [names.data_disk(lun) for lun in range(data_disks)]:
            self.revoke_access(disk)
            self.remove("disk", compute.disks, disk, f"{base}/Microsoft.Compute/disks")
        snapshots = self.tagged(
            "list snapshots", lambda: [dict(x) for x in compute.snapshots.list_by_resource_group(rg)]
        )
        for snap in snapshots:
            self.remove("snapshot", compute.snapshots, str(snap["name"]), rid=str(snap["id"]))
        self.remove("image", compute.images, names.image, f"{base}/Microsoft.Compute/images")
        self.remove(
            "virtual network",
            network.virtual_networks,
            names.vnet,
            f"{base}/Microsoft.Network/virtualNetworks",
        )
        self.remove(
            "network security group",
            network.network_security_groups,
            names.nsg,
            f"{base}/Microsoft.Network/networkSecurityGroups",
        )
        # a group this run created (no template-owned group, no user's group) goes last, if all else went
        if (group.get("tags") or {}).get(TAG_RUN) == self.build.run.run_id and not self.errors:
            groups = arm.resources.resource_groups
            self.delete(
                f"staging resource group {rg}",
                self._group_id,
                partial(groups.get, rg),
                partial(polled, groups.begin_delete, rg),
            )
        return CleanupReport(removed=self.removed, errors=self.errors)

    def remove(self, kind: str, ops: Any, name: str, collection: str = "", *, rid: str = "") -> None:
        """Delete the resource `name` of the staging group through the SDK operations group `ops` (its
        `get` and `begin_delete`); its id is `rid`, or `collection/name`."""
        rg = self.names.resource_group
        self.delete(
            f"{kind} {name}",
            rid or f"{collection}/{name}",
            partial(ops.get, rg, name),
            partial(polled, ops.begin_delete, rg, name),
        )

    def tagged(self, what: str, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The listed resources tagged with this run (a failed listing is reported, not fatal)."""
        try:
            items = self.arm.call(what, fn)
        except ArmFailure as exc:
            self.errors.append(f"{what}: {exc.code}: {exc.arm_message}")
            return []
        return [i for i in items if (i.get("tags") or {}).get(TAG_RUN) == self.build.run.run_id]

    def revoke_access(self, disk: str) -> None:
        """A disk with an active SAS (a VHD export) cannot be deleted: revoke it first."""
        compute, rg = self.arm.compute, self.names.resource_group
        try:
            existing = self.arm.get(f"read disk {disk}", partial(compute.disks.get, rg, disk))
            if existing and (existing.get("properties") or {}).get("diskState") == "ActiveSAS":
                what = f"revoke access to {disk}"
                self.wait(
                    what, self.arm.start(what, partial(polled, compute.disks.begin_revoke_access, rg, disk))
                )
        except ArmFailure as exc:
            self.errors.append(f"revoke access to {disk}: {exc.code}: {exc.arm_message}")

    def delete(self, what: str, rid: str, get: Callable[[], Any], begin: Callable[[Any], Any]) -> None:
        """Delete one resource and wait for it; a refusal is recorded in `errors`."""
        try:
            existing = self.arm.get(f"read {what}", get)
        except ArmFailure as exc:
            self.errors.append(f"{rid}: {exc.code}: {exc.arm_message}")
            return
        if existing is None:
            return
        if state_of(existing) == "Deleting":  # an earlier attempt started it: wait, do not restart
            self.gone(what, get)
        else:
            started = self.start_delete(what, rid, begin)
            if started is None:
                return
            status = self.wait(f"delete {what}", started)
            if status is not None and status.state != "Succeeded":
                self.errors.append(f"{rid}: {status.error_code}: {status.error_message}")
                return
        self.log.write(f"cleanup: deleted {what}\n")
        self.removed.append(rid)

    def start_delete(self, what: str, rid: str, begin: Callable[[Any], Any]) -> Started | None:
        while True:
            try:
                return self.arm.start(f"delete {what}", begin)
            except ArmFailure as exc:
                if exc.status != 404:
                    self.errors.append(f"{rid}: {exc}")
                return None
            except Throttled as exc:
                if self.settings.clock() + exc.retry_after > self.deadline:
                    raise
                self.settings.sleep(exc.retry_after)

    def wait(self, what: str, started: Started) -> OperationStatus | None:
        """Poll an operation to its end within the budget (None when it finished at once)."""
        op = started.operation(what)
        while op is not None:
            try:
                status = self.arm.operation_status(op)
            except Throttled as exc:
                pause = exc.retry_after
            else:
                if status.done:
                    return status
                pause = status.retry_after
            if self.settings.clock() + pause > self.deadline:
                raise TransientProviderError(
                    f"cleanup: {what} is still running", hint="the cleanup activity is retried"
                )
            self.settings.sleep(pause)
        return None

    def gone(self, what: str, get: Callable[[], Any]) -> None:
        while self.arm.get(f"read {what}", get) is not None:
            if self.settings.clock() + self.settings.poll_interval > self.deadline:
                raise TransientProviderError(f"cleanup: {what} is still being deleted", hint="retried")
            self.settings.sleep(self.settings.poll_interval)
