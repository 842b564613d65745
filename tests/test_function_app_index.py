"""The app indexes the way the Python worker indexes it, and every durable name it uses exists."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DURABLE_CALLS = {
    "call_activity": "activityTrigger",
    "call_activity_with_retry": "activityTrigger",
    "call_sub_orchestrator": "orchestrationTrigger",
    "call_sub_orchestrator_with_retry": "orchestrationTrigger",
    "start_new": "orchestrationTrigger",
}

INDEX_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from local_runtime.indexing import index_functions, load_app
fns = index_functions(load_app(Path(sys.argv[1])))
print(json.dumps([{"name": f.name, "trigger": f.trigger_type, "durable": f.durable_name,
                   "n_triggers": sum(1 for b in f.bindings if b.get("type", "").endswith("Trigger"))}
                  for f in fns]))
"""


def _index() -> list[dict[str, object]]:
    import json

    # A fresh interpreter: get_functions() may be called only once per app object.
    out = subprocess.run(
        [sys.executable, "-c", INDEX_SCRIPT, str(ROOT)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _literal_names(call: ast.Call, constants: dict[str, str]) -> str | None:
    if not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    if isinstance(first, ast.Name) and first.id in constants:
        return constants[first.id]
    if isinstance(first, ast.Attribute) and first.attr in constants:
        return constants[first.attr]
    return None


def _durable_uses() -> list[tuple[str, str, str]]:
    """(file, called kind, name) for every durable call with a name we can resolve statically."""
    uses = []
    for pkg in ("orchestrators", "api", "triggers", "activities"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text())
            constants = {
                t.id: node.value.value
                for node in ast.walk(tree)
                if isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                for t in node.targets
                if isinstance(t, ast.Name)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in DURABLE_CALLS
                ):
                    name = _literal_names(node, constants)
                    if name is not None:
                        uses.append((str(path.relative_to(ROOT)), DURABLE_CALLS[node.func.attr], name))
    return uses


def test_every_function_has_a_unique_name_and_one_trigger() -> None:
    fns = _index()
    assert fns, "the app registers no functions"
    names = [f["name"] for f in fns]
    assert len(names) == len(set(names))
    assert all(f["n_triggers"] == 1 for f in fns), fns


def test_every_durable_name_used_exists() -> None:
    fns = _index()
    by_kind: dict[str, set[str]] = {}
    for f in fns:
        if f["durable"]:
            by_kind.setdefault(str(f["trigger"]), set()).add(str(f["durable"]))
    missing = [
        (path, kind, name) for path, kind, name in _durable_uses() if name not in by_kind.get(kind, set())
    ]
    assert not missing, f"durable names used but not registered: {missing}"


def test_function_app_only_registers_blueprints() -> None:
    tree = ast.parse((ROOT / "function_app.py").read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    assert not defs, "function_app.py is a composition root: put functions in a blueprint module"
