"""Every durable name the build orchestrations call is registered by function_app.py under that name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from imagebuilder.pipeline import naming

ROOT = Path(__file__).resolve().parents[2]

INDEX = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from local_runtime.indexing import index_functions, load_app
print(json.dumps([[f.trigger_type, f.durable_name] for f in index_functions(load_app(Path(sys.argv[1])))]))
"""


def test_orchestrations_and_activities_are_registered_under_their_names() -> None:
    out = subprocess.run([sys.executable, "-c", INDEX, str(ROOT)], capture_output=True, text=True, check=True)
    registered = {(kind, name) for kind, name in json.loads(out.stdout)}
    activities = {
        *naming.PHASE_ACTIVITIES,
        naming.ACTIVITY_RUN_STATUS,
        naming.ACTIVITY_POLL,
        naming.ACTIVITY_ACQUIRE_SLOT,
        naming.ACTIVITY_RELEASE_SLOT,
    }
    for name in activities:
        assert ("activityTrigger", name) in registered, name
    for name in (naming.BUILD_ORCHESTRATION, naming.DISTRIBUTE_ORCHESTRATION):
        assert ("orchestrationTrigger", name) in registered, name
