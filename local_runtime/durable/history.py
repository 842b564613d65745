"""DTFx history events as the Durable extension serializes them for the Python SDK (PascalCase JSON).

Owns the EventType numbers, the event constructors, and the timestamp formats (history, status).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Event = dict[str, Any]

EXECUTION_STARTED = 0
EXECUTION_COMPLETED = 1
EXECUTION_FAILED = 2
EXECUTION_TERMINATED = 3
TASK_SCHEDULED = 4
TASK_COMPLETED = 5
TASK_FAILED = 6
SUB_ORCHESTRATION_CREATED = 7
SUB_ORCHESTRATION_COMPLETED = 8
SUB_ORCHESTRATION_FAILED = 9
TIMER_CREATED = 10
TIMER_FIRED = 11
ORCHESTRATOR_STARTED = 12
ORCHESTRATOR_COMPLETED = 13
EVENT_SENT = 14
EVENT_RAISED = 15
CONTINUE_AS_NEW = 16
GENERIC_EVENT = 17
HISTORY_STATE = 18
EXECUTION_SUSPENDED = 19
EXECUTION_RESUMED = 20

EVENT_NAMES = {
    0: "ExecutionStarted",
    1: "ExecutionCompleted",
    2: "ExecutionFailed",
    3: "ExecutionTerminated",
    4: "TaskScheduled",
    5: "TaskCompleted",
    6: "TaskFailed",
    7: "SubOrchestrationInstanceCreated",
    8: "SubOrchestrationInstanceCompleted",
    9: "SubOrchestrationInstanceFailed",
    10: "TimerCreated",
    11: "TimerFired",
    12: "OrchestratorStarted",
    13: "OrchestratorCompleted",
    14: "EventSent",
    15: "EventRaised",
    16: "ContinueAsNew",
    17: "GenericEvent",
    18: "HistoryState",
    19: "ExecutionSuspended",
    20: "ExecutionResumed",
}

# Control messages: they sit in an instance's inbox like events but are handled by the host itself.
CONTROL_TERMINATE = "terminate"
CONTROL_SUSPEND = "suspend"
CONTROL_RESUME = "resume"


def utcnow() -> datetime:
    return datetime.now(UTC)


def fmt_event_time(t: datetime) -> str:
    """History timestamps: what the SDK parses with dateutil ("%Y-%m-%dT%H:%M:%S.%fZ")."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fmt_status_time(t: datetime) -> str:
    """Status payload timestamps, as the real host writes them ("2024-01-01T12:00:00Z")."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse the ISO-8601 UTC forms the SDK and the host write (with or without fractions, 'Z')."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    if "." in t:
        head, _, rest = t.partition(".")
        frac = rest
        tz = ""
        for sep in ("+", "-"):
            if sep in rest:
                frac, _, tzpart = rest.partition(sep)
                tz = sep + tzpart
                break
        t = head + "." + (frac + "000000")[:6] + tz
    parsed = datetime.fromisoformat(t)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def event(event_type: int, when: datetime, event_id: int = -1, **fields: Any) -> Event:
    """One history event with the base fields every SDK event constructor requires."""
    e: Event = {
        "EventType": event_type,
        "EventId": event_id,
        "IsPlayed": False,
        "Timestamp": fmt_event_time(when),
    }
    e.update(fields)
    return e
