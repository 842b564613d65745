"""The demo: what `make demo` runs. It does the most that exists and says plainly what does not yet."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from local_runtime.indexing import index_functions, load_app

    functions = index_functions(load_app(ROOT))
    print("The app indexes as the Azure Functions Python worker would see it:")
    for fn in functions:
        route = fn.trigger.get("route", "")
        print(f"  {fn.name:<28} {fn.trigger_type:<22} {route}")
    print(
        "\nNot yet: the local runtime, the template API and the build pipeline are still being written "
        "(issues 3, 4 and 5). No image was built."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
