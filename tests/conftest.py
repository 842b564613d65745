"""Shared fixtures: the project root on sys.path, so tests import the app the way the worker does.

The local Debian base is pinned for the whole suite (IMAGEBUILDER_LOCAL_BASE_REFRESH_HOURS=never, which
hosts started by tests inherit): `latest` stays on the newest cached base in the shared test cache, so a
move of Debian's mirror never starts a second cold Debian build (one per machine)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("IMAGEBUILDER_LOCAL_BASE_REFRESH_HOURS", "never")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
