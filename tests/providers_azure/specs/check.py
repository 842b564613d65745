"""Checks a request body against request-models.json (see generate.py): unknown properties, read-only
properties sent, required properties missing, wrong JSON types, values outside a small known enum."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

MODELS = Path(__file__).resolve().parent / "request-models.json"
# ARM's enums are open (modelAsString): a service may take values newer than the spec. Small ones (states,
# options, security types) are checked; catalogues longer than this (VM sizes) are not.
ENUM_CATALOG = 24


@cache
def spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(MODELS.read_text())
    return data


def body_problems(operation: str, body: Any) -> tuple[list[str], list[str]]:
    """(refusals, warnings): what ARM answers 400 for (a required property missing, a wrong type), and
    what it silently drops or ignores (unknown and read-only properties), both worth failing a test."""
    root = spec()["operations"][operation]
    refusals: list[str] = []
    warnings: list[str] = []
    _walk(body, {"type": "model", "ref": root}, "body", refusals, warnings)
    return refusals, warnings


def _walk(value: Any, schema: dict[str, Any], where: str, refusals: list[str], warnings: list[str]) -> None:
    kind = schema["type"]
    if kind == "any" or value is None:
        return
    if kind == "model":
        if not isinstance(value, dict):
            refusals.append(f"{where}: expected an object ({schema['ref']})")
            return
        props = spec()["models"][schema["ref"]]["properties"]
        for key, item in value.items():
            if key not in props:
                warnings.append(f"{where}.{key}: not a property of {schema['ref']}")
                continue
            if props[key]["readOnly"]:
                warnings.append(f"{where}.{key}: read-only in {schema['ref']}")
            _walk(item, props[key], f"{where}.{key}", refusals, warnings)
        for key, prop in props.items():
            if prop["required"] and key not in value:
                refusals.append(f"{where}.{key}: required by {schema['ref']}")
    elif kind == "array":
        if not isinstance(value, list):
            refusals.append(f"{where}: expected an array")
            return
        for i, item in enumerate(value):
            _walk(item, schema["items"], f"{where}[{i}]", refusals, warnings)
    elif kind == "object":
        if not isinstance(value, dict):
            refusals.append(f"{where}: expected an object")
            return
        for key, item in value.items():
            _walk(item, schema["values"], f"{where}.{key}", refusals, warnings)
    elif kind == "string":
        if not isinstance(value, str):
            refusals.append(f"{where}: expected a string, got {type(value).__name__}")
        elif 0 < len(schema.get("known") or []) <= ENUM_CATALOG and value.lower() not in {
            k.lower() for k in schema["known"]
        }:
            refusals.append(f"{where}: {value!r} is none of {schema['known']}")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            refusals.append(f"{where}: expected an integer, got {type(value).__name__}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            refusals.append(f"{where}: expected a boolean, got {type(value).__name__}")
    elif kind == "number" and (not isinstance(value, int | float) or isinstance(value, bool)):
        refusals.append(f"{where}: expected a number, got {type(value).__name__}")
