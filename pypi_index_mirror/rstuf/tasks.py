"""What RSTUF's task answers mean: `TaskResult`, its states, and whether a task failed.

The task results follow what repository-service-tuf-worker writes
(``repository_service_tuf_worker/repository.py``) and what a real RSTUF was
seen to answer. Pure: the client fetches a `TaskResult`, the outbox decides
with these when to publish (`is_waiting_for_publish`) and what failed
(`task_failure`, `not_found_artifacts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pypi_index_mirror.rstuf.errors import one_line

SUCCESS_STATE = "SUCCESS"
# Only SUCCESS means done. These end a task without its changes; IGNORED is in
# RSTUF's TaskState enum too, although the API documents it as unused. Every
# other state (PENDING, RECEIVED, STARTED, PRE_RUN, RUNNING, RETRY) may still
# lead to SUCCESS; an unknown task id answers PENDING, for ever.
TERMINAL_FAILURE_STATES: frozenset[str] = frozenset(
    {"FAILURE", "ERRORED", "REVOKED", "REJECTED", "IGNORED"}
)
# An add/delete in one of these has written its rows, so a publish posted now covers it.
ROWS_WRITTEN_STATES: frozenset[str] = frozenset({"RUNNING", SUCCESS_STATE})


@dataclass(frozen=True)
class TaskResult:
    """One answer of RSTUF's task endpoint."""

    task_id: str
    state: str
    result: dict[str, Any] | None  # RSTUF's `result` object (absent while PENDING)


def not_found_artifacts(task: TaskResult) -> list[str]:
    """The paths a finished delete reported in ``details.not_found_artifacts``.

    RSTUF's worker puts there every path it holds no row for (or whose removal
    it published already), instead of failing the task.
    """
    result = task.result if isinstance(task.result, dict) else {}
    details = result.get("details")
    paths = details.get("not_found_artifacts") if isinstance(details, dict) else None
    return [path for path in paths if isinstance(path, str)] if isinstance(paths, list) else []


def is_waiting_for_publish(state: str) -> bool:
    """True when an add/delete task has written its rows (RUNNING or SUCCESS).

    Only then does a publish posted now cover it; one posted earlier may run
    first, cover nothing, and leave the task RUNNING for ever.
    """
    return state in ROWS_WRITTEN_STATES


def task_failure(task: TaskResult) -> str | None:
    """Return why `task` failed, or None while it succeeded or may still succeed.

    Failed means a terminal failure state, or a SUCCESS that RSTUF itself
    would call ERRORED (``result.status`` not true), or one that skipped
    paths no delegated role covers (``result.details.invalid_paths``).
    """
    result = task.result if isinstance(task.result, dict) else {}
    if task.state in TERMINAL_FAILURE_STATES:
        return _task_message(result) or "no details from RSTUF"
    if task.state != SUCCESS_STATE:
        return None
    if result.get("status") is not True:
        return _task_message(result) or "result status is not true"
    details = result.get("details")
    invalid = details.get("invalid_paths") if isinstance(details, dict) else None
    if invalid:
        shown = ", ".join(map(str, invalid[:5])) + (" ..." if len(invalid) > 5 else "")
        return f"{len(invalid)} path(s) not covered by any delegated role: {shown}"
    return None


def _task_message(result: dict[str, Any]) -> str:
    parts = [str(result[key]) for key in ("message", "error") if result.get(key)]
    if result.get("exc_type") or result.get("exc_message"):
        parts.append(f"{result.get('exc_type', '')} {result.get('exc_message', '')}".strip())
    return one_line(": ".join(parts))
