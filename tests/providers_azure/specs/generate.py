"""Writes request-models.json: the request-body models of the REST operations the Azure provider calls,
taken from the Azure SDK packages' models, which are generated from azure-rest-api-specs for exactly the
api-versions those SDKs send (the specs of those versions are not in the reference index here, so their
generated form is the source). Run after upgrading an SDK:

    .venv/bin/python -m tests.providers_azure.specs.generate

Per model: each wire property with its type (string, integer, boolean, number, object, array, model
reference, any), whether it is read-only (the service ignores or refuses it in a request) and whether a
create must send it. Open enums (ARM's modelAsString) are strings; their known values are kept as a hint.
"""

from __future__ import annotations

import enum
import functools
import importlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "request-models.json"

# REST operation (as the fake routes it) -> (SDK package, model of its request body)
ROOTS: dict[str, tuple[str, str]] = {
    "Microsoft.Resources/resourceGroups PUT": ("azure.mgmt.resource.resources", "ResourceGroup"),
    "Microsoft.Network/networkSecurityGroups PUT": ("azure.mgmt.network", "NetworkSecurityGroup"),
    "Microsoft.Network/virtualNetworks PUT": ("azure.mgmt.network", "VirtualNetwork"),
    "Microsoft.Network/networkInterfaces PUT": ("azure.mgmt.network", "NetworkInterface"),
    "Microsoft.Compute/virtualMachines PUT": ("azure.mgmt.compute", "VirtualMachine"),
    "Microsoft.Compute/virtualMachines/runCommands PUT": ("azure.mgmt.compute", "VirtualMachineRunCommand"),
    "Microsoft.Compute/images PUT": ("azure.mgmt.compute", "Image"),
    "Microsoft.Compute/snapshots PUT": ("azure.mgmt.compute", "Snapshot"),
    "Microsoft.Compute/disks/beginGetAccess POST": ("azure.mgmt.compute", "GrantAccessData"),
    "Microsoft.Compute/galleries/images/versions PUT": ("azure.mgmt.compute", "GalleryImageVersion"),
}
PACKAGES = {
    "azure.mgmt.compute": "azure-mgmt-compute",
    "azure.mgmt.network": "azure-mgmt-network",
    "azure.mgmt.resource.resources": "azure-mgmt-resource",
}
PRIMITIVES = {str: "string", int: "integer", bool: "boolean", float: "number"}


def _type(t: Any, models: dict[str, Any], package: Any) -> dict[str, Any]:
    if not isinstance(t, functools.partial):
        return {"type": "any"}
    fn, args = t.func.__name__, t.args
    if fn == "_deserialize_with_optional":
        return _type(args[0], models, package)
    if fn == "_deserialize_default" and args:
        return {"type": PRIMITIVES.get(args[0], "any")} if isinstance(args[0], type) else {"type": "any"}
    if fn == "_deserialize_model":
        _model(args[0], models, package)
        return {"type": "model", "ref": args[0].__name__}
    if fn == "_deserialize_sequence":
        return {"type": "array", "items": _type(args[0], models, package)}
    if fn == "_deserialize_dict":
        return {"type": "object", "values": _type(args[0], models, package)}
    if fn == "_deserialize_with_union":
        values: list[str] = []
        for part in args[0] if args and isinstance(args[0], list) else []:
            inner = part.args[0] if isinstance(part, functools.partial) and part.args else None
            if isinstance(inner, type) and issubclass(inner, enum.Enum):
                values += [str(v.value) for v in inner]
        return {"type": "string", "known": sorted(values)} if values else {"type": "any"}
    if "datetime" in fn or "duration" in fn or "bytes" in fn:
        return {"type": "string"}
    return {"type": "any"}


def _model(cls: type, models: dict[str, Any], package: Any) -> None:
    name = cls.__name__
    if name in models:
        return
    models[name] = {}  # placeholder against cycles
    props: dict[str, Any] = {}
    for field in cls()._attr_to_rest_field.values():  # type: ignore[attr-defined]
        visibility = list(field._visibility or [])
        entry = _type(field._type, models, package)
        entry["readOnly"] = visibility == ["read"]
        entry["required"] = (not field._is_optional) and "create" in visibility
        props[field._rest_name_input] = entry
    models[name] = {"properties": props}


def generate() -> dict[str, Any]:
    models: dict[str, Any] = {}
    roots: dict[str, str] = {}
    for operation, (module, model) in ROOTS.items():
        package = importlib.import_module(f"{module}.models")
        _model(getattr(package, model), models, package)
        roots[operation] = model
    versions = {dist: metadata.version(dist) for dist in sorted(PACKAGES.values())}
    return {"generatedFrom": versions, "operations": roots, "models": models}


if __name__ == "__main__":
    OUT.write_text(json.dumps(generate(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
