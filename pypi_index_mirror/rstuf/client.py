"""The one module that talks to a Repository Service for TUF (RSTUF) over its REST API v1.

``pypi_mirror.py`` tells RSTUF about every page it adds, changes or removes so
that TUF signs exactly the bytes the mirror serves. Everything RSTUF-specific
lives here, in three parts:

1. pure functions: validate an `Artifact` before it leaves the process (RSTUF
   validates neither hash names, nor values, nor lengths, and one bad row can
   break publishing for a whole hash bin), build the exact request bodies,
   read RSTUF's error texts, judge a task's outcome;
2. `RstufClient`, the only I/O: one ``requests.Session``, a ``(connect, read)``
   timeout and a User-Agent on every request, retries with backoff and jitter
   on transient failures, response bodies read with a size cap;
3. errors: `RstufError` and narrow subclasses that carry the facts and read as
   one line telling the operator what to do.

The endpoints and bodies follow repository-service-tuf-api
(``repository_service_tuf_api/artifacts.py``, ``tasks.py``, ``bootstrap.py``), the
task results repository-service-tuf-worker writes (``repository_service_tuf_worker/
repository.py``), and what a real RSTUF (API 1.0.1, worker 1.0.2) was seen to answer.

The publish race: an add/delete task sent with ``publish_artifacts: false``
first writes its rows, then stays RUNNING, holding a worker process, until a
publish that *started after* those rows were written covers them. A publish
posted too early covers nothing. When to publish is the caller's business
(``rstuf_outbox.py``); this module only tells whether a task's rows are
written (`is_waiting_for_publish`) and whether it failed (`task_failure`).

Retries: a POST whose request may have reached RSTUF without its answer
reaching us (a read timeout, a connection cut after sending, a 5xx from a
proxy) may have started a task nobody learns the id of; its retry starts
another. `add` and `remove` report each such attempt to their ``on_uncertain``
callback before retrying, so the caller can keep track of that possible task.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from pypi_index_mirror.http.environment import HttpEnvironment, read_environment
from pypi_index_mirror.http.retry import (
    BodyTooLarge,
    Retryable,
    RetryPolicy,
    call_with_retries,
    read_capped,
    retry_after_of,
)

log = logging.getLogger(__name__)

# --- the API -------------------------------------------------------------------

# Exact paths, trailing slashes as RSTUF routes them: `/artifacts` without the
# slash costs a 307 round trip, `/artifacts/delete/` with one is a different route.
BOOTSTRAP_PATH = "/api/v1/bootstrap/"
ADD_PATH = "/api/v1/artifacts/"
DELETE_PATH = "/api/v1/artifacts/delete"
PUBLISH_PATH = "/api/v1/artifacts/publish/"
TASK_PATH = "/api/v1/task/"

# Hash names TUF clients (python-tuf, securesystemslib) accept, and the number
# of lowercase hex digits each digest has.
HASH_HEX_LENGTHS: Mapping[str, int] = {"blake2b-256": 64, "sha256": 64, "sha512": 128}

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

MAX_RESPONSE_BYTES = 1 << 20  # 1 MiB, plus the request's own size (the answer echoes its paths)
_DETAIL_CHARS = 400  # RSTUF's text is shown on one line, at most this long


# --- records -------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One TUF target: a path relative to the served directory and its exact bytes' facts."""

    path: str  # e.g. "simple/numpy/index.html" or "index.html"
    length: int  # bytes
    hashes: dict[str, str]  # {"blake2b-256": "<64 lowercase hex>"}
    custom: dict | None = None


@dataclass(frozen=True)
class TaskResult:
    """One answer of RSTUF's task endpoint."""

    task_id: str
    state: str
    result: dict | None  # RSTUF's `result` object (absent while PENDING)


# --- errors --------------------------------------------------------------------


class RstufError(Exception):
    """Anything that went wrong talking to RSTUF; `str()` is one actionable line."""


class InvalidArtifact(RstufError, ValueError):
    """An artifact RSTUF would accept but TUF clients could not use; nothing was sent."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"refusing to send artifact {self.path!r} to RSTUF: {self.reason}"


class RstufUnreachable(RstufError):
    """No HTTP answer at all (connection refused or dropped, DNS, timeout), after retries."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"RSTUF at {self.url} did not answer ({self.reason}); "
            "check the RSTUF URL and that the RSTUF API is running"
        )


class RstufNotBootstrapped(RstufError):
    """RSTUF refuses artifacts until its repository has been bootstrapped."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return (
            f"RSTUF is not bootstrapped ({self.detail}); run the RSTUF bootstrap "
            "(rstuf admin ceremony / import-artifacts) first"
        )


class RstufHttpError(RstufError):
    """An HTTP error answer: its status, RSTUF's detail text and the call it answered."""

    def __init__(self, status: int, detail: str, url: str | None = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.url = url

    @property
    def where(self) -> str:
        return f" {self.url}" if self.url else ""


class RstufRefused(RstufHttpError):
    """A 4xx answer: RSTUF (or a proxy in front of it) refused this request as sent."""

    def __str__(self) -> str:
        advice = {
            401: "check the RSTUF token (RSTUF_API_TOKEN) or the proxy's credentials",
            403: "check the RSTUF token's scopes or the proxy's access rules",
            404: "check the RSTUF URL (it should be the API's base, without /api/v1)",
            422: "the request did not match RSTUF's API; report this with RSTUF's version",
            429: "RSTUF is rate limiting; run again later",
        }.get(self.status, "see RSTUF's detail above")
        return f"RSTUF refused{self.where} (HTTP {self.status}): {self.detail}; {advice}"


class RstufMisconfigured(RstufRefused):
    """A 401, a 403, or a 404 that is not RSTUF's "not bootstrapped" answer.

    None of these goes away by waiting: the token, the proxy's rules or the URL
    must change. A 404 without RSTUF's JSON detail is a route RSTUF does not
    have (FastAPI's ``{"detail": "Not Found"}``, a web server's page): the URL
    does not point at an RSTUF API, or carries ``/api/v1`` twice.
    """

    def __str__(self) -> str:
        if self.status == 404:
            return (
                f"the RSTUF URL is not an RSTUF API:{self.where} answered HTTP 404 "
                f"({self.detail}); check the RSTUF URL (--rstuf-url, RSTUF_API_URL): "
                "the API's base, without /api/v1"
            )
        return super().__str__()


class RstufServerError(RstufHttpError):
    """A 5xx answer that did not go away after the retries."""

    def __str__(self) -> str:
        return (
            f"RSTUF failed{self.where} (HTTP {self.status}): {self.detail}; "
            "check the RSTUF API and worker logs, then run again"
        )


class RstufBadResponse(RstufError):
    """An answer this client cannot use: not JSON, too large, no task id..."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"unexpected answer from RSTUF: {self.reason}; "
            "check that the URL points at an RSTUF API v1"
        )


class TaskFailed(RstufError):
    """An RSTUF task ended without applying its changes (or applied only part of them)."""

    def __init__(self, task_id: str, state: str, message: str) -> None:
        super().__init__(task_id, state, message)
        self.task_id = task_id
        self.state = state
        self.message = message

    def __str__(self) -> str:
        return (
            f"RSTUF task {self.task_id} ended {self.state}: {self.message}; "
            "check the RSTUF worker logs (the changes are sent again next run)"
        )


# --- pure functions: validation and bodies -------------------------------------

_HEX = {n: re.compile(rf"[0-9a-f]{{{n}}}") for n in set(HASH_HEX_LENGTHS.values())}


def path_problem(path: object) -> str | None:
    """Return why `path` cannot be a TUF target path, or None when it can.

    TUF clients look targets up byte for byte and mirrors turn them into file
    names, so only one spelling of each relative POSIX path is allowed.
    """
    if not isinstance(path, str):
        return f"path must be a string, not {type(path).__name__}"
    if not path:
        return "path is empty"
    if path.startswith("/"):
        return "path must be relative (no leading '/')"
    if "\\" in path:
        return "path contains a backslash"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in path):
        return "path contains a control character or a lone surrogate"
    segments = path.split("/")
    if "" in segments:
        return "path has an empty segment ('//' or a trailing '/')"
    if ".." in segments or "." in segments:
        return "path has a '.' or '..' segment"
    return None


def artifact_problem(artifact: Artifact) -> str | None:
    """Return why RSTUF must not be sent `artifact`, or None when it is fine."""
    problem = path_problem(artifact.path)
    if problem:
        return problem
    length = artifact.length
    if type(length) is not int or length < 0:  # bool is an int subclass: refuse it too
        return f"length must be an integer >= 0, not {length!r}"
    if not isinstance(artifact.hashes, Mapping) or not artifact.hashes:
        return "at least one hash is required"
    for name, value in artifact.hashes.items():
        digits = HASH_HEX_LENGTHS.get(name)
        if digits is None:
            allowed = ", ".join(HASH_HEX_LENGTHS)
            return f"hash name {name!r} is not one TUF clients accept ({allowed})"
        if not isinstance(value, str) or not _HEX[digits].fullmatch(value):
            return f"{name} must be {digits} lowercase hex digits, not {value!r}"
    if artifact.custom is not None and not isinstance(artifact.custom, dict):
        return f"custom must be a dict or None, not {type(artifact.custom).__name__}"
    return None


def _refuse_duplicates(paths: Sequence[str]) -> None:
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise InvalidArtifact(path, "listed twice in one request")
        seen.add(path)


def validate_artifacts(artifacts: Sequence[Artifact]) -> None:
    """Raise ValueError for an empty list, InvalidArtifact for the first bad artifact."""
    if not artifacts:
        raise ValueError("no artifacts to add")
    for artifact in artifacts:
        if not isinstance(artifact, Artifact):
            raise InvalidArtifact(artifact, f"not an Artifact but {type(artifact).__name__}")
        problem = artifact_problem(artifact)
        if problem:
            raise InvalidArtifact(artifact.path, problem)
    _refuse_duplicates([artifact.path for artifact in artifacts])


def validate_paths(paths: Sequence[str]) -> None:
    """Raise ValueError for an empty list, InvalidArtifact for the first bad path."""
    if isinstance(paths, str):  # a lone string is a sequence of one-letter paths
        raise TypeError("paths must be a sequence of strings, not one string")
    if not paths:
        raise ValueError("no artifacts to remove")
    for path in paths:
        problem = path_problem(path)
        if problem:
            raise InvalidArtifact(path, problem)
    _refuse_duplicates(paths)


def artifact_entry(artifact: Artifact) -> dict[str, Any]:
    """The JSON object RSTUF's ``Artifact`` model reads: path plus info."""
    info: dict[str, Any] = {"length": artifact.length, "hashes": dict(artifact.hashes)}
    if artifact.custom is not None:
        info["custom"] = artifact.custom
    return {"path": artifact.path, "info": info}


def add_body(artifacts: Sequence[Artifact], publish: bool) -> dict[str, Any]:
    """Body of ``POST /api/v1/artifacts/`` (RSTUF's ``AddPayload``)."""
    return {
        "artifacts": [artifact_entry(artifact) for artifact in artifacts],
        "add_task_id_to_custom": False,
        "publish_artifacts": bool(publish),
    }


def delete_body(paths: Sequence[str], publish: bool) -> dict[str, Any]:
    """Body of ``POST /api/v1/artifacts/delete`` (RSTUF's ``DeletePayload``)."""
    return {"artifacts": list(paths), "publish_artifacts": bool(publish)}


# --- pure functions: reading answers -------------------------------------------


def _one_line(text: str, limit: int = _DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: object) -> str:
    """Flatten RSTUF/FastAPI's detail (a string, a {message, error} dict, or a
    list of pydantic errors) into readable text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "; ".join(_describe(item) for item in value)
    if isinstance(value, dict):
        if "msg" in value:  # one pydantic validation error
            loc = value.get("loc")
            where = ".".join(str(part) for part in loc) if isinstance(loc, list) else ""
            return f"{where}: {value['msg']}" if where else str(value["msg"])
        parts = [_describe(value[key]) for key in ("message", "error") if value.get(key)]
        return ": ".join(parts) if parts else json.dumps(value, sort_keys=True)
    return json.dumps(value)


def error_detail(body: bytes) -> str:
    """RSTUF's own words from an answer body, as one line ('' when there are none).

    FastAPI puts them in ``detail``; RSTUF's own answers also carry ``message``
    and ``error``; a proxy or an uncaught exception answers plain text or HTML.
    """
    text = body.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return _one_line(text)
    if isinstance(document, dict):
        for key in ("detail", "error", "message"):
            if document.get(key):
                return _one_line(_describe(document[key]))
    return _one_line(text)


def is_not_bootstrapped(body: bytes) -> bool:
    """Whether a 404's body is RSTUF's refusal before its bootstrap.

    RSTUF answers ``{"detail": {"message": "Task not accepted.", "error": "It
    requires bootstrap finished. State: None"}}``; FastAPI's 404 for a route it
    does not have says ``{"detail": "Not Found"}``, and a web server that is no
    RSTUF answers a page of its own: those are a wrong URL.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return False
    detail = document.get("detail") if isinstance(document, dict) else None
    return isinstance(detail, dict) and "bootstrap" in _describe(detail).lower()


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


def _task_message(result: dict) -> str:
    parts = [str(result[key]) for key in ("message", "error") if result.get(key)]
    if result.get("exc_type") or result.get("exc_message"):
        parts.append(f"{result.get('exc_type', '')} {result.get('exc_message', '')}".strip())
    return _one_line(": ".join(parts))


def _redact_url(url: str) -> str:
    """`url` without user:password@, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


# --- the I/O class ---------------------------------------------------------------


# No answer, or an answer cut short: worth another attempt.
_RETRYABLE = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _Transient(Retryable):
    """An attempt worth repeating; carries what to raise once the retries are spent.

    `uncertain`: the request may have reached RSTUF and been acted on.
    """

    def __init__(
        self, final: RstufError, why: str, wait: float | None = None, uncertain: bool = True
    ) -> None:
        super().__init__(why, retry_after=wait)
        self.final = final
        self.uncertain = uncertain


def may_have_arrived(exc: BaseException) -> bool:
    """Whether a request that failed with `exc` may still have reached the server.

    Only a connection that was never made (refused, unresolvable, connect
    timeout) proves the server saw nothing; a read timeout or a connection
    dropped after sending leaves it open.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return False
    reason: BaseException | None = exc
    for _ in range(6):
        if reason is None:
            break
        if isinstance(reason, urllib3.exceptions.NewConnectionError):
            return False  # refused or unresolvable (NameResolutionError is a subclass)
        inner = getattr(reason, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in reason.args if isinstance(a, BaseException)), None)
        reason = inner
    return True


class RstufClient:
    """A client for RSTUF's REST API v1: one session, timeouts, retries, exact bodies.

    `session` is injected by tests (and closed and set up by its owner); without
    one the client makes its own from `environment` (proxy, CA bundle, User-Agent;
    ``.netrc`` credentials only without a token, which they would replace) and
    `close()` closes it. The run hands every client the environment it read
    once; without one, the process environment is read here.

    Every request may be retried: an add or delete carries final states, so a
    duplicate task writes the same rows (and `on_uncertain` tells the caller
    one may exist); a duplicate publish publishes what is there.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),  # seconds: (connect, read)
        retries: int = 4,  # extra attempts after the first
        backoff: float = 1.0,  # seconds before the first retry, doubling after
        poll_interval: float = 2.0,  # seconds between two task polls
        user_agent: str | None = None,  # the environment's by default
        environment: HttpEnvironment | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"RSTUF URL must be http(s)://host[:port], not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.environment = environment if environment is not None else read_environment()
        self.user_agent = user_agent or self.environment.user_agent
        self._token = token or None
        self._owns_session = session is None
        self._session = (
            session
            if session is not None
            else self.environment.session(self.base_url, netrc=self._token is None)
        )
        self._headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if self._token:
            self._headers["Authorization"] = f"Bearer {self._token}"

    def __repr__(self) -> str:
        token = "<set>" if self._token else None
        return f"RstufClient(base_url={_redact_url(self.base_url)!r}, token={token})"

    def close(self) -> None:
        """Close the session if this client made it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> RstufClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- endpoints ---

    def bootstrapped(self) -> bool:
        """Whether RSTUF's bootstrap has finished (artifacts are refused until it has)."""
        document = self._request("GET", BOOTSTRAP_PATH)
        data = document.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("bootstrap"), bool):
            raise RstufBadResponse(f"GET {BOOTSTRAP_PATH} answered without data.bootstrap")
        return data["bootstrap"]

    def add(
        self,
        artifacts: Sequence[Artifact],
        publish: bool = True,
        on_uncertain: Callable[[], None] | None = None,
    ) -> str:
        """Ask RSTUF to add (or update) `artifacts`; return the task id.

        Raises ValueError/InvalidArtifact before sending anything when the
        list is empty or an artifact is unfit. `on_uncertain` is called for
        each attempt that may have started a task whose id never arrived.
        """
        validate_artifacts(artifacts)
        return self._submit(ADD_PATH, add_body(artifacts, publish), on_uncertain)

    def remove(
        self,
        paths: Sequence[str],
        publish: bool = True,
        on_uncertain: Callable[[], None] | None = None,
    ) -> str:
        """Ask RSTUF to remove the targets at `paths`; return the task id.

        A path RSTUF does not know ends in ``not_found_artifacts``, not in an
        error. `on_uncertain` as for `add`.
        """
        validate_paths(paths)
        return self._submit(DELETE_PATH, delete_body(paths, publish), on_uncertain)

    def publish(self) -> str:
        """Ask RSTUF to publish every change written so far; return the task id.

        It covers the add/delete tasks that are `is_waiting_for_publish` when
        it starts (see the module docstring). A duplicate started by a retry
        is harmless: it publishes what is there, or nothing.
        """
        return self._task_id(PUBLISH_PATH, self._request("POST", PUBLISH_PATH))

    def task(self, task_id: str) -> TaskResult:
        """One poll of the task's state, no waiting."""
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task id must be a non-empty string, not {task_id!r}")
        document = self._request("GET", TASK_PATH, params={"task_id": task_id})
        data = document.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("state"), str):
            raise RstufBadResponse(f"GET {TASK_PATH} answered without data.state")
        result = data.get("result")
        return TaskResult(
            task_id=str(data.get("task_id") or task_id),
            state=data["state"],
            result=result if isinstance(result, dict) else None,
        )

    # --- plumbing ---

    def _submit(
        self, path: str, body: dict[str, Any], on_uncertain: Callable[[], None] | None
    ) -> str:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return self._task_id(path, self._request("POST", path, data, None, on_uncertain))

    def _task_id(self, path: str, document: dict[str, Any]) -> str:
        data = document.get("data")
        task_id = data.get("task_id") if isinstance(data, dict) else None
        if isinstance(task_id, str) and task_id:
            return task_id
        detail = self._scrub(error_detail(json.dumps(document).encode()))
        # RSTUF releases before the 404 answered "not bootstrapped" with a 200.
        if "bootstrap" in detail.lower():
            raise RstufNotBootstrapped(detail)
        raise RstufBadResponse(f"POST {path} answered without data.task_id: {detail}")

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
        on_uncertain: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Send one request with retries; return the JSON object of a 200/202 answer.

        `on_uncertain` is called after each attempt that failed in a way that
        leaves open whether RSTUF acted on the request (`may_have_arrived`).
        """
        policy = RetryPolicy(self.retries, self.backoff)

        def attempt() -> dict[str, Any]:
            try:
                return self._attempt(method, path, body, params)
            except _Transient as transient:
                if on_uncertain is not None and transient.uncertain:
                    on_uncertain()
                raise

        try:
            return call_with_retries(
                attempt,
                policy,
                f"RSTUF {method} {path}",
                log,
            )
        except _Transient as transient:
            raise transient.final from transient.final.__cause__

    def _attempt(
        self,
        method: str,
        path: str,
        body: bytes | None,
        params: dict[str, str] | None,
    ) -> dict[str, Any]:
        url = self.base_url + path
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        cap = MAX_RESPONSE_BYTES + len(body or b"")
        try:
            response = self._session.request(
                method,
                url,
                data=body,
                params=params,
                headers=headers,
                timeout=self.timeout,
                stream=True,
            )
            with response:
                status = response.status_code
                retry_after = retry_after_of(status, response.headers)
                try:
                    content = read_capped(response, cap)
                except BodyTooLarge:
                    raise RstufBadResponse(
                        f"{method} {path} answered more than {cap} bytes"
                    ) from None
        except _RETRYABLE as exc:
            reason = self._scrub(_exception_reason(exc))
            final = RstufUnreachable(_redact_url(url), reason)
            final.__cause__ = exc
            raise _Transient(final, reason, uncertain=may_have_arrived(exc)) from exc
        except requests.RequestException as exc:  # e.g. an invalid URL: retrying cannot help
            raise RstufUnreachable(_redact_url(url), self._scrub(_exception_reason(exc))) from exc
        return self._judge(method, path, status, retry_after, content)

    def _judge(
        self, method: str, path: str, status: int, retry_after: float | None, content: bytes
    ) -> dict[str, Any]:
        where = f"{method} {path}"
        if status in (200, 202):
            try:
                document = json.loads(content)
            except ValueError:
                snippet = _one_line(repr(content), 80)
                raise RstufBadResponse(
                    f"{where} answered HTTP {status} that is not JSON: {snippet}"
                ) from None
            if not isinstance(document, dict):
                raise RstufBadResponse(f"{where} answered JSON that is not an object")
            return document
        detail = self._scrub(error_detail(content)) or f"HTTP {status} without details"
        if status == 429 or status >= 500:
            final: RstufError = (
                RstufRefused(status, detail, where)
                if status == 429
                else RstufServerError(status, detail, where)
            )
            # 429 and 503 say the request was not taken on; any other 5xx (a proxy's
            # 502/504, an API that failed after queueing the task) leaves it open.
            uncertain = status not in (429, 503)
            raise _Transient(final, f"HTTP {status}: {detail}", retry_after, uncertain)
        if status == 404 and path in (ADD_PATH, DELETE_PATH) and is_not_bootstrapped(content):
            raise RstufNotBootstrapped(detail)
        if status in (401, 403, 404):
            raise RstufMisconfigured(status, detail, where)
        if 400 <= status < 500:
            raise RstufRefused(status, detail, where)
        raise RstufBadResponse(f"{where} answered HTTP {status}: {detail}")

    def _scrub(self, text: str) -> str:
        """`text` with the token blanked out, in case anything echoed it."""
        return text.replace(self._token, "***") if self._token else text


def _exception_reason(exc: BaseException) -> str:
    """The innermost useful words of a requests exception, on one line.

    requests wraps urllib3 errors that wrap socket errors; the innermost one
    says what happened ("Connection refused", "Read timed out").
    """
    reason = exc
    for _ in range(5):
        inner = getattr(reason, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in reversed(reason.args) if isinstance(a, BaseException)), None)
        if inner is None:
            break
        reason = inner
    return _one_line(f"{type(reason).__name__}: {reason}", 200)
