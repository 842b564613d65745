"""Indexing a Python v2 Functions app exactly the way the Python worker does.

Import the script module, find the single `azure.functions.FunctionRegister`, call `get_functions()`
once, and describe each function (trigger, bindings, durable name, the callable the worker invokes).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func

DURABLE_TRIGGERS = {
    "orchestrationTrigger": "orchestration",
    "activityTrigger": "activity",
    "entityTrigger": "entity_name",
}


class IndexingError(Exception):
    """The app cannot be indexed; the message says what to fix."""


@dataclass(frozen=True)
class FunctionInfo:
    """One indexed function, with everything a host needs to bind and invoke it."""

    name: str
    trigger_type: str
    trigger_name: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]
    user_function: Callable[..., Any]
    durable_name: str | None = None
    raw: Any = field(default=None, repr=False, compare=False)

    def bindings_of(self, type_: str) -> list[dict[str, Any]]:
        return [b for b in self.bindings if b.get("type") == type_]


def _plain(value: Any) -> Any:
    """Binding dicts keep enum members; hosts want their names, as function.json has them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value") and value.__class__.__module__.startswith("azure"):
        return value.name if not isinstance(value.value, str) else value.value
    return value


def load_app(app_dir: Path, script_file: str = "function_app.py") -> func.FunctionRegister:
    """Import the app's script module and return its one FunctionRegister."""
    app_dir = app_dir.resolve()
    script = app_dir / script_file
    if not script.is_file():
        raise IndexingError(f"{script} does not exist; pass the folder that holds your {script_file}")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module = importlib.import_module(script.stem)
    registers = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    if len(registers) != 1:
        raise IndexingError(
            f"{script} must define exactly one FunctionApp/DFApp (found {len(registers)}); "
            "blueprints are registered on it with app.register_functions(bp)"
        )
    return registers[0]


def index_functions(app: func.FunctionRegister) -> list[FunctionInfo]:
    """Call `get_functions()` once (a second call fails in the library) and describe every function."""
    out: list[FunctionInfo] = []
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        trigger_dict = _plain(trigger.get_dict_repr())
        attr = DURABLE_TRIGGERS.get(trigger.type)
        durable_name = None
        if attr is not None:
            durable_name = getattr(trigger, attr, None) or fn.get_function_name()
        out.append(
            FunctionInfo(
                name=fn.get_function_name(),
                trigger_type=trigger.type,
                trigger_name=trigger.name,
                trigger=trigger_dict,
                bindings=[_plain(b.get_dict_repr()) for b in fn.get_bindings()],
                user_function=fn.get_user_function(),
                durable_name=durable_name,
                raw=fn,
            )
        )
    return out
