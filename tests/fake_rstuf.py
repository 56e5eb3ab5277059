"""A stand-in for RSTUF's REST API v1 (repository-service-tuf-api + worker), for tests.

It answers like the real service on the endpoints the mirror uses, with the
same paths, status codes, bodies and task lifecycle, so that ``rstuf_client``
and ``pypi_mirror`` are tested against behaviour rather than against mocks:

- ``POST /api/v1/artifacts/``, ``POST /api/v1/artifacts/delete``,
  ``POST /api/v1/artifacts/publish/`` answer 202 with ``data.task_id``;
  ``POST /api/v1/artifacts`` answers 307 to the slash form (FastAPI's
  redirect_slashes); bodies RSTUF's pydantic models would refuse answer 422
  with FastAPI's ``{"detail": [{"type", "loc", "msg", "input"}]}``. An empty
  artifacts list is accepted.
- Before the bootstrap, add/delete answer 404 ``{"detail": {"message": "Task
  not accepted.", "error": "It requires bootstrap finished. State: None"}}``
  (200 with ``not_bootstrapped_status=200``, as releases before the 404 did);
  a publish is accepted anyway and does nothing. ``GET /api/v1/bootstrap/``
  answers ``{"data": {"bootstrap": true, "state": "finished", "id": ...}}``
  (``id``, not ``task_id``).
- ``GET /api/v1/task/?task_id=`` answers ``{"data": {"task_id", "state",
  "result"?}}``; an unknown id answers 200 PENDING for ever; ``result`` is
  left out while it is null, as RSTUF's ``response_model_exclude_none`` does.

The worker, as repository-service-tuf-worker 1.0 runs it (``app.py``,
``repository.py``, ``supervisor.conf``):

- Add/delete tasks go to the ``metadata_repository`` queue, served by
  `processes` worker processes (one per core on a real RSTUF: 2 here), in the
  order they were accepted. A task waits PENDING until a process is free, then
  shows RECEIVED, STARTED and PRE_RUN, writes its rows to the artifact table,
  and then *holds its process*: ``_update_task`` re-checks its rows every
  `Pacing.recheck` seconds (3 s) and reports RUNNING, with a result whose
  ``details.roles_to_publish`` is a string that looks like a Python list,
  until every row it wrote is published. Only then is it SUCCESS and the
  process free for the next task. So more unpublished tasks than processes
  stall every later task until someone publishes.
- One re-check drops at most every other published row of each role (the
  worker removes rows from the list it is iterating over), so a task of many
  rows per hash bin needs several re-checks after the publish that covered it:
  with the real pacing 5,000 artifacts report SUCCESS 28 s after their publish.
- With ``publish_artifacts: true`` a task, once its rows are written, queues
  its own publish (``publish_artifacts-<task id>``); if that publish fails the
  task fails too (FAILURE, "ChordError"). With ``false`` it waits for a publish
  someone else posts.
- Publishes go to their own queue (``rstuf_internals``, another worker) and
  run one at a time (the worker takes a lock): a publish covers the rows
  written *before it started*; one that started earlier covers nothing, and
  its add stays RUNNING (the publish race).
- Results like the worker's: ``{"message", "error", "status", "task",
  "last_update", "details"}`` with ``added_artifacts``/``invalid_paths``/
  ``artifact_roles`` or ``deleted_artifacts``/``not_found_artifacts``; a
  publish has ``details.artifact_roles``. Re-adding a path updates it; deleting
  an absent one lands in ``not_found_artifacts``.

Time: `Pacing` sets every duration (fast by default; `Pacing.real()` is fitted
to a real RSTUF on a 2-core machine: one add of 1 artifact reaches SUCCESS in
3.1 s, of 100 in 12.5 s, of 1,000 in 25.5 s, of 5,000 in 63.7 s; the publish
of 5,000 takes 1.3 s). The clock is injectable: with a `ManualClock` nothing
happens until a test moves it (`ManualClock.advance`), so a test can count
seconds of RSTUF time instead of bounding wall-clock time.

Fault injection (each for the next `times` matching requests or tasks):
`fail_requests`, `drop_connections`, `slow_requests`, `fail_tasks` (add,
delete or publish), `hollow_publishes`, `hang_tasks`; and `set_step`,
`set_pacing`, `set_bootstrapped`, `set_delegations`.

Records: `request_log` (method, path, headers, body, status, time of every
request), `accepted` (every accepted add/delete/publish with its parsed body
and task id, in order), `view` (what is published: ``{path: {"length",
"hashes"}}``), `published_views` (the view after each publish that changed
it), `rows`, `published_at()`, `task_states()`, `busy_processes()` and `stats`.

Measured ceiling (``python -m tests.fake_rstuf --bench 10 5000``, this 2-CPU
machine, Python 3.11, one keep-alive client sending pre-encoded bodies):
10 requests of 5,000 artifacts (760 kB each) in 0.14 s, 360,000 artifacts/s
end to end and 375,000 artifacts/s of handling (read, parse, validate,
record, answer); 100 requests of 500: 270,000 artifacts/s; 20 requests of
50,000 (7.7 MB each): 150,000 artifacts/s. Through ``rstuf_client`` (which
validates and encodes every artifact) 10 adds of 5,000 take 0.6 s (80,000
artifacts/s). So the stand-in is not what limits a test.

Run alone: ``python -m tests.fake_rstuf --port 8081 [--processes 2] [--real-pacing]
[--not-bootstrapped]`` (``POST /api/v1/bootstrap/`` with any JSON object then
bootstraps it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import heapq
import http.client
import http.server
import itertools
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

ADD = "add_artifacts"
REMOVE = "remove_artifacts"
PUBLISH = "publish_artifacts"

ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/artifacts/"): ADD,
    ("POST", "/api/v1/artifacts/delete"): REMOVE,
    ("POST", "/api/v1/artifacts/publish/"): PUBLISH,
    ("GET", "/api/v1/task/"): "task",
    ("GET", "/api/v1/bootstrap/"): "bootstrap",
    ("POST", "/api/v1/bootstrap/"): "do_bootstrap",
}
_ROUTE_PATHS = {path for _, path in ROUTES}

NOT_BOOTSTRAPPED_DETAIL = {
    "message": "Task not accepted.",
    "error": "It requires bootstrap finished. State: None",
}
SUBMITTED = {
    ADD: "New Artifact(s) successfully submitted.",
    REMOVE: "Remove Artifact(s) successfully submitted.",
    PUBLISH: "Publish artifacts successfully submitted.",
}
# States an add/delete shows between leaving the queue and writing its rows.
STARTING_STATES = ("RECEIVED", "STARTED", "PRE_RUN")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --- pacing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pacing:
    """How long the stand-in's worker takes for each phase of a task, in seconds.

    Writing an add/delete's rows takes ``write_fixed + write_per_artifact * n +
    write_growth * n * (n - 1) / 2`` (each row costs a little more than the one
    before: the worker's database session grows with the task); a publish takes
    ``publish_fixed + publish_per_artifact * rows covered``; a waiting task
    re-checks its rows every `recheck` seconds plus `check_per_artifact` per row
    it looks at. `step` separates RECEIVED, STARTED and PRE_RUN.
    """

    step: float = 0.005
    write_fixed: float = 0.01
    write_per_artifact: float = 0.0
    write_growth: float = 0.0
    publish_fixed: float = 0.01
    publish_per_artifact: float = 0.0
    recheck: float = 0.01
    check_per_artifact: float = 0.0

    @classmethod
    def uniform(cls, step: float) -> Pacing:
        """Every phase `step` seconds long, whatever the size of the task."""
        return cls(step=step / 2, write_fixed=step, publish_fixed=step / 2, recheck=step / 2)

    @classmethod
    def real(cls) -> Pacing:
        """Fitted to RSTUF API 1.0.1 / worker 1.0.2 on an idle 2-core machine, 16 hash bins.

        Seen there: one add with publish on reaches SUCCESS after 3.1 s (1
        artifact), 12.5 s (100), 25.5 s (1,000; RUNNING at 4.4 s) and 63.7 s
        (5,000; RUNNING at 35 s); the publish of 5,000 took 1.3 s and an add of
        5,000 sent with publish off reported SUCCESS 28 s after that publish.
        This pacing gives 3.2 s, 12.7 s, 26.1 s and 65.1 s for the same adds, 1.35 s
        for that publish and SUCCESS 28.7 s after it.
        """
        return cls(
            step=0.03,
            write_fixed=0.1,
            write_per_artifact=0.00363,
            write_growth=1.34e-6,
            publish_fixed=0.3,
            publish_per_artifact=0.0002,
            recheck=3.0,
            check_per_artifact=0.0003,
        )

    def scaled(self, factor: float) -> Pacing:
        """Every duration times `factor` (a benchmark that runs 10x faster: 0.1)."""
        return Pacing(**{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)})

    def write_time(self, artifacts: int) -> float:
        n = artifacts
        return self.write_fixed + self.write_per_artifact * n + self.write_growth * n * (n - 1) / 2

    def publish_time(self, rows: int) -> float:
        return self.publish_fixed + self.publish_per_artifact * rows


# --- records -------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int | None  # None: the connection was dropped without an answer
    at: float = 0.0  # the stand-in's clock when it was handled


@dataclass(frozen=True)
class AcceptedRequest:
    """One add/delete/publish the stand-in accepted (answered 202)."""

    action: str  # ADD, REMOVE or PUBLISH
    task_id: str
    body: Any  # the parsed JSON body (None for a publish)
    at: float  # the stand-in's clock


@dataclass
class Row:
    """One row of RSTUF's artifact table."""

    info: dict[str, Any]
    action: str  # "ADD" or "REMOVE"
    published: bool
    role: str


@dataclass
class _Task:
    task_id: str
    action: str
    payload: dict[str, Any] | None
    state: str = "PENDING"
    result: dict[str, Any] | None = None
    fault: _Fault | None = None  # how it will fail (fail_tasks)
    hang: str | None = None  # the state it will stop in for ever (hang_tasks)
    # the rows this task waits to see published, by role, in the order it wrote them
    waiting: dict[str, list[str]] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)  # every role it wrote to
    final: dict[str, Any] | None = None  # its SUCCESS result, once published
    subtask: _Task | None = None  # its own publish (publish_artifacts: true)
    holds_process: bool = False


@dataclass
class _Fault:
    times: int
    path: str | None = None  # only requests whose path starts with this
    options: dict[str, Any] = field(default_factory=dict)

    def matches(self, path: str) -> bool:
        return self.times > 0 and (self.path is None or path.startswith(self.path))


@dataclass(frozen=True)
class Stats:
    """What the stand-in has handled; `artifacts_per_second` counts handling time only."""

    requests: int
    accepted_requests: int
    artifacts: int
    max_artifacts_per_request: int
    busy_seconds: float  # time spent handling accepted add/delete requests
    artifacts_per_second: float
    most_busy_processes: int  # the most worker processes ever held at once


# --- FastAPI/pydantic-like validation of RSTUF's payloads ------------------------

_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}
_Loc = tuple[Any, ...]


def _error(kind: str, loc: _Loc, msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def _model(value: Any, loc: _Loc, errors: list) -> bool:
    if isinstance(value, dict):
        return True
    msg = "Input should be a valid dictionary or object to extract fields from"
    errors.append(_error("model_attributes_type", loc, msg, value))
    return False


def _field(doc: dict, name: str, loc: _Loc, errors: list) -> tuple[bool, Any]:
    if name in doc:
        return True, doc[name]
    errors.append(_error("missing", (*loc, name), "Field required", doc))
    return False, None


def _check_str(value: Any, loc: _Loc, errors: list) -> None:
    if not isinstance(value, str):
        errors.append(_error("string_type", loc, "Input should be a valid string", value))


def _check_int(value: Any, loc: _Loc, errors: list) -> None:
    """pydantic's lax int: ints, bools, integral floats and numeric strings pass."""
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            errors.append(_error("finite_number", loc, "Input should be a finite number", value))
        elif not value.is_integer():
            msg = "Input should be a valid integer, got a number with a fractional part"
            errors.append(_error("int_from_float", loc, msg, value))
        return
    if isinstance(value, str):
        try:
            int(value.strip())
        except ValueError:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            errors.append(_error("int_parsing", loc, msg, value))
        return
    errors.append(_error("int_type", loc, "Input should be a valid integer", value))


def _check_bool(value: Any, loc: _Loc, errors: list) -> None:
    """pydantic's lax bool: true/false, 0/1 and the usual words pass."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)) and value in (0, 1):
        return
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return
    if isinstance(value, (int, float, str)):
        msg = "Input should be a valid boolean, unable to interpret input"
        errors.append(_error("bool_parsing", loc, msg, value))
    else:
        errors.append(_error("bool_type", loc, "Input should be a valid boolean", value))


def _as_bool(value: Any) -> bool:
    return value.lower() in _TRUE if isinstance(value, str) else bool(value)


def _check_dict(value: Any, loc: _Loc, errors: list) -> bool:
    if isinstance(value, dict):
        return True
    errors.append(_error("dict_type", loc, "Input should be a valid dictionary", value))
    return False


def _check_list(value: Any, loc: _Loc, errors: list) -> bool:
    if isinstance(value, list):
        return True
    errors.append(_error("list_type", loc, "Input should be a valid list", value))
    return False


def _check_artifact(item: Any, loc: _Loc, errors: list) -> None:
    if not _model(item, loc, errors):
        return
    found, info = _field(item, "info", loc, errors)
    if found and _model(info, (*loc, "info"), errors):
        info_loc = (*loc, "info")
        found, length = _field(info, "length", info_loc, errors)
        if found:
            _check_int(length, (*info_loc, "length"), errors)
        found, hashes = _field(info, "hashes", info_loc, errors)
        if found and _check_dict(hashes, (*info_loc, "hashes"), errors):
            for name, digest in hashes.items():
                _check_str(digest, (*info_loc, "hashes", name), errors)
        custom = info.get("custom")
        if custom is not None:
            _check_dict(custom, (*info_loc, "custom"), errors)
    found, path = _field(item, "path", loc, errors)
    if found:
        _check_str(path, (*loc, "path"), errors)


def validate_add_payload(doc: Any) -> list[dict[str, Any]]:
    """Errors RSTUF's ``AddPayload`` model would report (unknown fields are ignored)."""
    errors: list[dict[str, Any]] = []
    if not _model(doc, (), errors):
        return errors
    found, artifacts = _field(doc, "artifacts", (), errors)
    if found and _check_list(artifacts, ("artifacts",), errors):
        for index, item in enumerate(artifacts):
            _check_artifact(item, ("artifacts", index), errors)
    for flag in ("add_task_id_to_custom", "publish_artifacts"):
        if flag in doc:
            _check_bool(doc[flag], (flag,), errors)
    return errors


def validate_delete_payload(doc: Any) -> list[dict[str, Any]]:
    """Errors RSTUF's ``DeletePayload`` model would report."""
    errors: list[dict[str, Any]] = []
    if not _model(doc, (), errors):
        return errors
    found, artifacts = _field(doc, "artifacts", (), errors)
    if found and _check_list(artifacts, ("artifacts",), errors):
        for index, path in enumerate(artifacts):
            _check_str(path, ("artifacts", index), errors)
    if "publish_artifacts" in doc:
        _check_bool(doc["publish_artifacts"], ("publish_artifacts",), errors)
    return errors


# --- delegations -----------------------------------------------------------------


def hash_bin_role(path: str, number_of_bins: int) -> str:
    """The succinct hash bin python-tuf (and so RSTUF) assigns `path` to."""
    bit_length = max(1, (number_of_bins - 1).bit_length())
    bits = int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:4], "big")
    width = len(f"{number_of_bins - 1:x}")
    return f"bins-{bits >> (32 - bit_length):0{width}x}"


def _tuf_path_match(pattern: str, path: str) -> bool:
    """TUF's delegated path matching: same number of segments, fnmatch on each."""
    pattern_parts, path_parts = pattern.split("/"), path.split("/")
    return len(pattern_parts) == len(path_parts) and all(
        fnmatchcase(part, glob) for glob, part in zip(pattern_parts, path_parts, strict=True)
    )


# --- clocks: when the worker does what ----------------------------------------------


class Clock(Protocol):
    """What the stand-in needs of time: a reading and callbacks at given readings."""

    def now(self) -> float: ...

    def at(self, when: float, callback: Callable[[], None]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class _Timeline:
    """Callbacks ordered by due time (ties: in the order they were scheduled)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def push(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), callback))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop(self) -> tuple[float, Callable[[], None]]:
        when, _, callback = heapq.heappop(self._heap)
        return when, callback


class ThreadClock(threading.Thread):
    """Real time (``time.monotonic``): one thread runs callbacks when they are due."""

    def __init__(self) -> None:
        super().__init__(name="fake-rstuf-clock", daemon=True)
        self._timeline = _Timeline()
        self._cond = threading.Condition()
        self._stopped = False

    def now(self) -> float:
        return time.monotonic()

    def at(self, when: float, callback: Callable[[], None]) -> None:
        with self._cond:
            self._timeline.push(when, callback)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    due = self._timeline.next_due()
                    if due is not None and due <= time.monotonic():
                        break
                    self._cond.wait(None if due is None else due - time.monotonic())
                if self._stopped:
                    return
                _, callback = self._timeline.pop()
            callback()


class ManualClock:
    """Virtual time for tests: nothing happens until `advance` moves the clock.

    Pass one to `FakeRstuf` and use `now` and `sleep` as the client's clock:
    the stand-in's tasks then progress exactly as far as the client waited,
    however loaded the machine is.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timeline = _Timeline()
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def at(self, when: float, callback: Callable[[], None]) -> None:
        with self._lock:
            self._timeline.push(when, callback)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, running every callback that falls due, in order."""
        target = self._now + max(0.0, seconds)
        while True:
            with self._lock:
                due = self._timeline.next_due()
                if due is None or due > target:
                    break
                when, callback = self._timeline.pop()
                self._now = max(self._now, when)
            callback()
        self._now = target

    sleep = advance

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


# --- the HTTP server --------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close(), after their sockets are shut down
    block_on_close = True

    def __init__(self, address: tuple[str, int], fake: FakeRstuf) -> None:
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that hung up mid-answer is part of the tests (timeouts), not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
    server_version = "uvicorn"
    sys_version = ""
    timeout = 60  # seconds an idle keep-alive connection is kept
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without it each answer waits ~40 ms: Nagle's algorithm meets the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read request_log instead

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_answer(status: int, document: Any, headers: dict[str, str] | None = None) -> _Answer:
    body = json.dumps(document, separators=(",", ":")).encode()
    return _Answer(status, body, headers=headers or {})


def _default_failure(status: int) -> _Answer:
    """What RSTUF (or uvicorn, or a proxy) answers with a given status by itself."""
    if status == 404:
        return _json_answer(404, {"detail": NOT_BOOTSTRAPPED_DETAIL})
    if status == 422:
        missing = {"type": "missing", "loc": ["body", "artifacts"], "msg": "Field required"}
        return _json_answer(422, {"detail": [{**missing, "input": {}}]})
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    if status >= 500:  # uvicorn's answer to an uncaught exception; proxies answer text too
        return _Answer(status, phrase.encode(), "text/plain; charset=utf-8")
    return _json_answer(status, {"detail": phrase})


class FakeRstuf:
    """The stand-in server: start with ``with FakeRstuf() as rstuf:``, reach it at `url`."""

    def __init__(
        self,
        bootstrapped: bool = True,
        step: float | None = None,  # shorthand for pacing=Pacing.uniform(step)
        host: str = "127.0.0.1",
        port: int = 0,
        number_of_bins: int = 16,
        not_bootstrapped_status: int = 404,
        *,
        processes: int = 2,  # metadata worker processes (a real RSTUF: one per core)
        pacing: Pacing | None = None,
        clock: Clock | None = None,  # default: real time (ThreadClock)
    ) -> None:
        if processes < 1:
            raise ValueError("the worker needs at least one process")
        self.pacing = pacing or (Pacing.uniform(step) if step is not None else Pacing())
        self.processes = processes
        self.number_of_bins = number_of_bins
        self.not_bootstrapped_status = not_bootstrapped_status
        self.clock: Clock = clock if clock is not None else ThreadClock()
        self._bootstrap_id: str | None = uuid.uuid4().hex if bootstrapped else None
        self._delegations: list[str] | None = None
        self._lock = threading.RLock()
        self._tasks: dict[str, _Task] = {}
        self._rows: dict[str, Row] = {}
        self._view: dict[str, dict[str, Any]] = {}
        self._published_at: dict[str, float] = {}  # path -> when its state was published
        self.published_views: list[dict[str, dict[str, Any]]] = []
        self.request_log: list[RecordedRequest] = []
        self.accepted: list[AcceptedRequest] = []
        self._request_faults: list[_Fault] = []
        self._drop_faults: list[_Fault] = []
        self._slow_faults: list[_Fault] = []
        self._task_faults: list[_Fault] = []
        self._hang_faults: list[_Fault] = []
        self._hollow_publishes = 0
        self._metadata_queue: collections.deque[_Task] = collections.deque()
        self._publish_queue: collections.deque[_Task] = collections.deque()
        self._publishing = False
        self._busy_processes = 0
        self._most_busy = 0
        self._busy = 0.0
        self._artifacts = 0
        self._max_artifacts = 0
        self._stopping = threading.Event()
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._started = False

    # --- lifecycle ---

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeRstuf:
        self.clock.start()
        self._thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving, end every open connection and join every thread."""
        if not self._started:
            self._server.server_close()
            return
        self._started = False
        self._stopping.set()
        self._server.shutdown()
        with self._server.sockets_lock:
            for sock in list(self._server.open_sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()
        self.clock.stop()
        if isinstance(self.clock, threading.Thread):
            self.clock.join()

    def __enter__(self) -> FakeRstuf:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- configuration and faults ---

    def set_step(self, seconds: float) -> None:
        """Uniform pacing of `seconds` per phase, for what is scheduled from now on."""
        self.set_pacing(Pacing.uniform(seconds))

    def set_pacing(self, pacing: Pacing) -> None:
        with self._lock:
            self.pacing = pacing

    def set_bootstrapped(self, bootstrapped: bool) -> None:
        with self._lock:
            self._bootstrap_id = (self._bootstrap_id or uuid.uuid4().hex) if bootstrapped else None

    def set_delegations(self, patterns: list[str] | None) -> None:
        """Use custom delegated roles with these path patterns (None: hash bins cover all).

        A path no pattern matches is reported in ``invalid_paths`` by an add and
        in ``not_found_artifacts`` by a delete, like RSTUF does.
        """
        with self._lock:
            self._delegations = list(patterns) if patterns is not None else None

    def fail_requests(
        self,
        status: int,
        times: int = 1,
        detail: Any = None,
        *,
        body: bytes | str | None = None,
        content_type: str = "text/plain; charset=utf-8",
        retry_after: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next `times` requests (whose path starts with `path`) with `status`.

        The body is ``{"detail": detail}`` when `detail` is given, the raw `body`
        when that is, else what RSTUF/uvicorn answer by themselves with that status.
        """
        options = {
            "status": status,
            "detail": detail,
            "body": body.encode() if isinstance(body, str) else body,
            "content_type": content_type,
            "retry_after": retry_after,
        }
        with self._lock:
            self._request_faults.append(_Fault(times, path, options))

    def clear_request_faults(self) -> None:
        """Forget every `fail_requests` fault not used up yet (the operator fixed the cause)."""
        with self._lock:
            self._request_faults.clear()

    def drop_connections(self, times: int = 1, path: str | None = None) -> None:
        """Read the next `times` requests, then close the socket without answering."""
        with self._lock:
            self._drop_faults.append(_Fault(times, path))

    def slow_requests(self, seconds: float, times: int = 1, path: str | None = None) -> None:
        """Wait `seconds` (real time) before handling the next `times` requests.

        The request is handled after the wait: a POST that the client gave up
        on (read timeout) is still accepted, and starts a task nobody was told of.
        """
        with self._lock:
            self._slow_faults.append(_Fault(times, path, {"seconds": seconds}))

    def fail_tasks(
        self,
        state: str = "ERRORED",
        times: int = 1,
        error: str = "injected failure",
        actions: tuple[str, ...] = (ADD, REMOVE, PUBLISH),
    ) -> None:
        """End the next `times` tasks of `actions` in `state`, changing nothing.

        An add/delete fails when it would write its rows, a publish when it
        would finish (also the publish an add queued for itself, whose add then
        fails with it). ``ERRORED``: a result with ``status: false`` and `error`;
        ``FAILURE``: an uncaught exception (``result = {"message": error}``);
        ``SUCCESS``: a SUCCESS with ``status: false``, as RSTUF API releases
        before the ERRORED mapping answered; ``REVOKED``/``REJECTED`` likewise.
        """
        with self._lock:
            self._task_faults.append(
                _Fault(times, None, {"state": state, "error": error, "actions": actions})
            )

    def hollow_publishes(self, times: int = 1) -> None:
        """The next `times` publishes report SUCCESS but publish nothing.

        As a publish that ran before the rows it was meant for were written:
        the adds it should have covered stay RUNNING.
        """
        with self._lock:
            self._hollow_publishes += times

    def hang_tasks(
        self,
        times: int = 1,
        state: str = "PENDING",
        actions: tuple[str, ...] = (ADD, REMOVE, PUBLISH),
    ) -> None:
        """The next `times` accepted tasks of `actions` stop in `state` for ever.

        PENDING: the task never reaches a worker (a lost message); STARTED: an
        add/delete takes a worker process and never lets it go (a stuck worker).
        """
        if state not in ("PENDING", "STARTED"):
            raise ValueError("a task can hang PENDING or STARTED")
        with self._lock:
            self._hang_faults.append(_Fault(times, None, {"state": state, "actions": actions}))

    def import_artifacts(self, view: dict[str, dict[str, Any]]) -> None:
        """Register and publish `view` ({path: {"length", "hashes"}}) at once.

        What ``rstuf admin import-artifacts`` does with the bootstrap CSV: it
        writes the rows straight to the database and publishes them, without
        the API or a task.
        """
        with self._lock:
            for path, info in view.items():
                role = self._role_for(path)
                if role is None:
                    raise ValueError(f"no delegated role covers {path!r}")
                info = {"length": info["length"], "hashes": dict(info["hashes"])}
                self._rows[path] = Row(info, "ADD", True, role)
                self._view[path] = json.loads(json.dumps(info))
            self.published_views.append(json.loads(json.dumps(self._view)))

    def restore_backup(self, view: dict[str, dict[str, Any]]) -> None:
        """Replace every artifact row with `view` and publish it at once.

        What an operator restoring RSTUF's database from an older backup gets:
        rows the mirror registered since are gone, rows since deleted are back.
        """
        with self._lock:
            self._rows.clear()
            self._view.clear()
        self.import_artifacts(view)

    # --- records ---

    @property
    def view(self) -> dict[str, dict[str, Any]]:
        """What is published now: ``{path: {"length", "hashes"}}``."""
        with self._lock:
            return json.loads(json.dumps(self._view))

    @property
    def rows(self) -> dict[str, Row]:
        with self._lock:
            return dict(self._rows)

    def published_at(self) -> dict[str, float]:
        """For each path, the stand-in's clock when the publish of its current state ended."""
        with self._lock:
            return dict(self._published_at)

    def task_states(self) -> dict[str, str]:
        with self._lock:
            return {task_id: task.state for task_id, task in self._tasks.items()}

    def busy_processes(self) -> int:
        """Worker processes held right now (by tasks writing or waiting for a publish)."""
        with self._lock:
            return self._busy_processes

    @property
    def stats(self) -> Stats:
        with self._lock:
            accepted = sum(1 for a in self.accepted if a.action in (ADD, REMOVE))
            rate = self._artifacts / self._busy if self._busy else 0.0
            return Stats(
                requests=len(self.request_log),
                accepted_requests=accepted,
                artifacts=self._artifacts,
                max_artifacts_per_request=self._max_artifacts,
                busy_seconds=self._busy,
                artifacts_per_second=rate,
                most_busy_processes=self._most_busy,
            )

    # --- request handling ---

    def _handle(self, handler: _Handler) -> None:
        started = time.perf_counter()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        split = urlsplit(handler.path)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            if self._take(self._drop_faults, split.path):
                self.request_log.append(
                    RecordedRequest(
                        handler.command, handler.path, headers, body, None, self.clock.now()
                    )
                )
                handler.close_connection = True
                return
            slow = self._take(self._slow_faults, split.path)
        if slow is not None:
            self._stopping.wait(slow.options["seconds"])
        with self._lock:
            answer, artifacts = self._answer(handler, split, body)
            self.request_log.append(
                RecordedRequest(
                    handler.command, handler.path, headers, body, answer.status, self.clock.now()
                )
            )
            if artifacts is not None:  # counted before answering, so a client never sees less
                self._busy += time.perf_counter() - started
                self._artifacts += artifacts
                self._max_artifacts = max(self._max_artifacts, artifacts)
        self._send(handler, answer)

    @staticmethod
    def _take(faults: list[_Fault], path: str) -> _Fault | None:
        for fault in faults:
            if fault.matches(path):
                fault.times -= 1
                return fault
        return None

    def _send(self, handler: _Handler, answer: _Answer) -> None:
        try:
            handler.send_response(answer.status)
            handler.send_header("Content-Type", answer.content_type)
            handler.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up (a timeout test)

    def _answer(self, handler: _Handler, split, body: bytes) -> tuple[_Answer, int | None]:
        fault = self._take(self._request_faults, split.path)
        if fault is not None:
            return self._fault_answer(fault.options), None
        route = ROUTES.get((handler.command, split.path))
        if route is None:
            return self._no_route(handler, split), None
        if route == "task":
            return self._get_task(split.query), None
        if route == "bootstrap":
            return self._get_bootstrap(), None
        if route == "do_bootstrap":
            return self._post_bootstrap(body), None
        if route == PUBLISH:
            return self._accept(PUBLISH, None, []), None
        return self._post_artifacts(route, body)

    @staticmethod
    def _fault_answer(options: dict[str, Any]) -> _Answer:
        status = options["status"]
        if options["body"] is not None:
            answer = _Answer(status, options["body"], options["content_type"])
        elif options["detail"] is not None:
            answer = _json_answer(status, {"detail": options["detail"]})
        else:
            answer = _default_failure(status)
        if options["retry_after"] is not None:
            answer.headers["Retry-After"] = options["retry_after"]
        return answer

    def _no_route(self, handler: _Handler, split) -> _Answer:
        if split.path in _ROUTE_PATHS:
            allowed = ", ".join(sorted(m for m, p in ROUTES if p == split.path))
            return _json_answer(405, {"detail": "Method Not Allowed"}, {"Allow": allowed})
        other = split.path[:-1] if split.path.endswith("/") else split.path + "/"
        if other in _ROUTE_PATHS:  # Starlette's redirect_slashes
            host = handler.headers.get("Host") or "{}:{}".format(*self._server.server_address)
            location = f"http://{host}{other}" + (f"?{split.query}" if split.query else "")
            return _Answer(307, b"", headers={"Location": location})
        return _json_answer(404, {"detail": "Not Found"})

    def _get_bootstrap(self) -> _Answer:
        if self._bootstrap_id is None:
            data: dict[str, Any] = {"bootstrap": False}
            message = "System available for bootstrap."
        else:
            data = {"bootstrap": True, "state": "finished", "id": self._bootstrap_id}
            message = "System LOCKED for bootstrap."
        return _json_answer(200, {"data": data, "message": message})

    def _post_bootstrap(self, body: bytes) -> _Answer:
        """A bootstrap that takes any JSON object (the real one wants signed root metadata)."""
        if self._bootstrap_id is not None:
            return _json_answer(200, {"detail": {"error": "System already has a Metadata."}})
        try:
            json.loads(body)
        except ValueError:
            return self._json_invalid()
        self._bootstrap_id = uuid.uuid4().hex
        data = {"task_id": self._bootstrap_id}
        return _json_answer(202, {"data": data, "message": "Bootstrap accepted."})

    def _get_task(self, query: str) -> _Answer:
        task_ids = parse_qs(query).get("task_id")
        if not task_ids:
            error = {"type": "missing", "loc": ["query", "task_id"], "msg": "Field required"}
            return _json_answer(422, {"detail": [{**error, "input": None}]})
        task = self._tasks.get(task_ids[0])
        data: dict[str, Any] = {"task_id": task_ids[0], "state": "PENDING"}
        if task is not None:
            data["state"] = task.state
            if task.result is not None:
                data["result"] = task.result
        return _json_answer(200, {"data": data, "message": "Task state."})

    @staticmethod
    def _json_invalid() -> _Answer:
        error = {"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error"}
        return _json_answer(422, {"detail": [{**error, "input": {}, "ctx": {"error": "?"}}]})

    def _post_artifacts(self, action: str, body: bytes) -> tuple[_Answer, int | None]:
        if not body:
            error = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
            return _json_answer(422, {"detail": [error]}), None
        try:
            doc = json.loads(body)
        except ValueError:
            return self._json_invalid(), None
        validate = validate_add_payload if action == ADD else validate_delete_payload
        errors = validate(doc)
        if errors:
            return _json_answer(422, {"detail": errors}), None
        if self._bootstrap_id is None:
            detail = {"detail": NOT_BOOTSTRAPPED_DETAIL}
            return _json_answer(self.not_bootstrapped_status, detail), None
        if action == ADD:
            paths = [item["path"] for item in doc["artifacts"]]
        else:
            paths = list(doc["artifacts"])
        return self._accept(action, doc, paths), len(paths)

    def _accept(self, action: str, doc: dict[str, Any] | None, paths: list[str]) -> _Answer:
        task_id = uuid.uuid4().hex
        task = _Task(task_id, action, doc)
        self._tasks[task_id] = task
        self.accepted.append(AcceptedRequest(action, task_id, doc, self.clock.now()))
        message = SUBMITTED[action]
        if doc is not None and not _as_bool(doc.get("publish_artifacts", True)):
            message += " Publishing will be skipped."
        self._schedule(task)
        data = {"artifacts": paths, "task_id": task_id, "last_update": _now_iso()}
        return _json_answer(202, {"data": {**data, "message": message}, "message": message})

    # --- the task lifecycle: queues and worker processes ---

    def _schedule(self, task: _Task) -> None:
        """An accepted task joins its queue (unless a fault loses it)."""
        hang = self._action_fault(self._hang_faults, task.action)
        task.hang = hang.options["state"] if hang is not None else None
        task.fault = self._action_fault(self._task_faults, task.action)
        if task.hang == "PENDING":
            return  # never reaches a worker
        if task.action == PUBLISH:
            self._publish_queue.append(task)
            self._next_publish()
        else:
            self._metadata_queue.append(task)
            self._dispatch()

    @staticmethod
    def _action_fault(faults: list[_Fault], action: str) -> _Fault | None:
        for candidate in faults:
            if candidate.times > 0 and action in candidate.options["actions"]:
                candidate.times -= 1
                return candidate
        return None

    def _dispatch(self) -> None:
        """Free worker processes take the oldest waiting add/delete tasks."""
        while self._busy_processes < self.processes and self._metadata_queue:
            task = self._metadata_queue.popleft()
            self._busy_processes += 1
            self._most_busy = max(self._most_busy, self._busy_processes)
            task.holds_process = True
            self._begin(task)

    def _release(self, task: _Task) -> None:
        if task.holds_process:
            task.holds_process = False
            self._busy_processes -= 1
            self._dispatch()

    def _begin(self, task: _Task) -> None:
        """A process took the task: RECEIVED, STARTED, PRE_RUN, then it writes its rows."""
        now, pacing = self.clock.now(), self.pacing
        states = STARTING_STATES[:2] if task.hang == "STARTED" else STARTING_STATES
        for number, state in enumerate(states, start=1):
            self.clock.at(now + number * pacing.step, lambda s=state: self._set_state(task, s))
        if task.hang == "STARTED":
            return  # a stuck worker: it holds its process for ever
        assert task.payload is not None
        written_at = now + len(states) * pacing.step
        written_at += pacing.write_time(len(task.payload["artifacts"]))
        self.clock.at(written_at, lambda: self._write_rows(task))

    def _set_state(self, task: _Task, state: str) -> None:
        with self._lock:
            if task.state in ("PENDING", *STARTING_STATES):
                task.state, task.result = state, {}

    @staticmethod
    def _result(action: str, message: str, details: Any, error: str | None = None) -> dict:
        result = {"message": message, "error": error, "status": error is None, "task": action}
        result["last_update"] = _now_iso()
        if details is not None:
            result["details"] = details
        return result

    def _fail(self, task: _Task, fault: _Fault) -> None:
        state, error = fault.options["state"], fault.options["error"]
        if state in ("ERRORED", "SUCCESS"):
            message = {
                ADD: "Adding artifact(s) Failed",
                REMOVE: "Removing artifact(s) Failed",
                PUBLISH: "Publish Artifacts Failed",
            }
            result = self._result(task.action, message[task.action], None, error)
        else:
            result = {"message": error}
        task.state, task.result = state, result

    def _role_for(self, path: str) -> str | None:
        if self._delegations is None:
            return hash_bin_role(path, self.number_of_bins)
        for index, pattern in enumerate(self._delegations):
            if _tuf_path_match(pattern, path):
                return f"delegated-{index}"
        return None

    def _write_rows(self, task: _Task) -> None:
        """The worker's add/remove: write the rows, then hold the process until published."""
        with self._lock:
            if task.fault is not None:
                self._fail(task, task.fault)
                self._release(task)
                return
            assert task.payload is not None
            details = self._add_rows(task) if task.action == ADD else self._remove_rows(task)
            if details is None:
                self._release(task)
                return
            message = "Artifact(s) Added" if task.action == ADD else "Artifact(s) removed"
            task.final = self._result(task.action, message, details)
            if task.waiting and _as_bool(task.payload.get("publish_artifacts", True)):
                subtask = _Task(f"publish_artifacts-{task.task_id}", PUBLISH, None)
                subtask.fault = self._action_fault(self._task_faults, PUBLISH)
                self._tasks[subtask.task_id] = subtask
                task.subtask = subtask
                self._publish_queue.append(subtask)
                self._next_publish()
            self._check(task)

    def _add_rows(self, task: _Task) -> dict[str, Any]:
        added, invalid = [], []
        for item in task.payload["artifacts"]:
            path, info = item["path"], item["info"]
            role = self._role_for(path)
            if role is None:
                invalid.append(path)
                continue
            info = {**info, "length": int(info["length"])}
            self._rows[path] = Row(info, "ADD", False, role)
            self._wait_for(task, role, path)
            added.append(path)
        return {"added_artifacts": added, "invalid_paths": invalid, "artifact_roles": task.roles}

    def _remove_rows(self, task: _Task) -> dict[str, Any] | None:
        paths = task.payload["artifacts"]
        if not paths:
            error = "At list one artifact is required"  # sic, RSTUF's text
            task.state = "ERRORED"
            task.result = self._result(REMOVE, "Removing artifact(s) Failed", None, error)
            return None
        deleted, not_found = [], []
        for path in paths:
            row = self._rows.get(path)
            role = self._role_for(path)
            if role is None or row is None or (row.action == "REMOVE" and row.published):
                not_found.append(path)
                continue
            self._rows[path] = Row(row.info, "REMOVE", False, row.role)
            self._wait_for(task, row.role, path)
            deleted.append(path)
        return {"deleted_artifacts": deleted, "not_found_artifacts": not_found}

    @staticmethod
    def _wait_for(task: _Task, role: str, path: str) -> None:
        if role not in task.waiting:
            task.waiting[role] = []
            task.roles.append(role)
        task.waiting[role].append(path)

    def _check(self, task: _Task) -> None:
        """One pass of the worker's ``_update_task`` loop over the task's unpublished rows.

        The worker iterates over each role's list of rows and removes the
        published ones from that same list, so the row after each removed one
        is skipped: one pass drops at most every other published row.
        """
        with self._lock:
            looked = 0
            completed = []
            for role, paths in task.waiting.items():
                kept, skip = [], False
                for path in paths:
                    if skip:
                        kept.append(path)
                        skip = False
                        continue
                    looked += 1
                    if self._rows[path].published:
                        skip = True
                    else:
                        kept.append(path)
                paths[:] = kept
                if not kept:
                    completed.append(role)
            if task.subtask is not None and task.subtask.state in ("FAILURE", "ERRORED"):
                error = f"Failed to execute {task.subtask.task_id}"
                task.state, task.result = "FAILURE", {"message": f"ChordError('{error}')"}
                self._release(task)
                return
            if len(completed) == len(task.waiting):
                task.state, task.result = "SUCCESS", task.final
                self._release(task)
                return
            task.state = "RUNNING"
            details = {"published_roles": completed, "roles_to_publish": str(task.roles)}
            task.result = {"message": "Publishing", "last_update": _now_iso(), "details": details}
            delay = self.pacing.recheck + self.pacing.check_per_artifact * looked
        self.clock.at(self.clock.now() + delay, lambda: self._check(task))

    # --- the task lifecycle: publishes ---

    def _next_publish(self) -> None:
        """Publishes run one at a time, in order, as soon as the previous one ended."""
        if self._publishing or not self._publish_queue:
            return
        task = self._publish_queue.popleft()
        self._publishing = True
        task.state, task.result = "STARTED", {}
        if task.hang == "STARTED":  # stuck for ever; the stand-in lets the next one run
            self._publishing = False
            self._next_publish()
            return
        hollow = self._hollow_publishes > 0
        self._hollow_publishes -= hollow
        covered = [] if hollow else [(p, r) for p, r in self._rows.items() if not r.published]
        if self._bootstrap_id is None:
            covered = []
        finish = self.clock.now() + self.pacing.publish_time(len(covered))
        self.clock.at(finish, lambda: self._finish_publish(task, covered))

    def _finish_publish(self, task: _Task, covered: list[tuple[str, Row]]) -> None:
        with self._lock:
            if task.fault is not None:
                self._fail(task, task.fault)
            else:
                roles = self._publish_rows(covered)
                details = {"artifact_roles": roles or None}
                task.state = "SUCCESS"
                task.result = self._result(PUBLISH, "Publish Artifacts Processed", details)
            self._publishing = False
            self._next_publish()

    def _publish_rows(self, covered: list[tuple[str, Row]]) -> list[str]:
        """Publish the rows seen when the publish started (a row rewritten since is not)."""
        roles: list[str] = []
        for path, row in covered:
            if self._rows.get(path) is not row or row.published:
                continue
            row.published = True
            self._published_at[path] = self.clock.now()
            if row.action == "ADD":
                self._view[path] = {"length": row.info["length"], "hashes": row.info["hashes"]}
            else:
                self._view.pop(path, None)
            if row.role not in roles:
                roles.append(row.role)
        if roles:
            self.published_views.append(json.loads(json.dumps(self._view)))
        return roles


# --- running alone ----------------------------------------------------------------


def _bench(requests_count: int, size: int) -> None:
    """Send `requests_count` adds of `size` artifacts over one keep-alive connection."""
    with FakeRstuf(step=60.0) as fake:
        host, port = fake._server.server_address[:2]
        digest = "0" * 64
        bodies = []
        for number in range(requests_count):
            artifacts = [
                {
                    "path": f"simple/p{number}-{i}/index.html",
                    "info": {"length": i, "hashes": {"blake2b-256": digest}},
                }
                for i in range(size)
            ]
            body = {
                "artifacts": artifacts,
                "add_task_id_to_custom": False,
                "publish_artifacts": False,
            }
            bodies.append(json.dumps(body, separators=(",", ":")).encode())
        connection = http.client.HTTPConnection(host, port, timeout=120)
        try:
            started = time.perf_counter()
            for body in bodies:
                connection.request(
                    "POST", "/api/v1/artifacts/", body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                if response.status != 202:
                    raise SystemExit(f"unexpected HTTP {response.status}")
            elapsed = time.perf_counter() - started
        finally:
            connection.close()
        stats = fake.stats
        total = requests_count * size
        megabytes = sum(map(len, bodies)) / 1e6
        print(
            f"{requests_count} requests x {size} artifacts ({megabytes:.1f} MB) in "
            f"{elapsed:.2f}s: {total / elapsed:,.0f} artifacts/s end to end, "
            f"{stats.artifacts_per_second:,.0f} artifacts/s handling, "
            f"max {stats.max_artifacts_per_request} per request"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A stand-in RSTUF API v1 for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--step", type=float, default=0.5, help="seconds per phase of a task (uniform pacing)"
    )
    parser.add_argument(
        "--real-pacing",
        action="store_true",
        help="pace tasks like a real RSTUF on a 2-core machine (overrides --step)",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="metadata worker processes (default: 2)"
    )
    parser.add_argument("--not-bootstrapped", action="store_true")
    parser.add_argument(
        "--bench",
        nargs=2,
        type=int,
        metavar=("REQUESTS", "ARTIFACTS"),
        help="measure the stand-in's own ceiling and exit",
    )
    args = parser.parse_args(argv)
    if args.bench:
        _bench(*args.bench)
        return 0
    pacing = Pacing.real() if args.real_pacing else Pacing.uniform(args.step)
    fake = FakeRstuf(
        bootstrapped=not args.not_bootstrapped,
        host=args.host,
        port=args.port,
        processes=args.processes,
        pacing=pacing,
    )
    # The line is printed inside the suppress: a caller may interrupt as soon as it reads it.
    with fake, contextlib.suppress(KeyboardInterrupt):
        print(f"fake RSTUF listening on {fake.url}", flush=True)
        while True:
            time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
