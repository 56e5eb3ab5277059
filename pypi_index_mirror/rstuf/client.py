"""The one module that talks to a Repository Service for TUF (RSTUF) over its REST API v1.

The sync tells RSTUF about every page it adds, changes or removes so that
TUF signs exactly the bytes the mirror serves. `RstufClient` is the only I/O:
one ``requests.Session``, a ``(connect, read)`` timeout and a User-Agent on
every request, retries with backoff and jitter on transient failures,
response bodies read with a size cap, RSTUF's error texts read into one line.
What it sends is checked and built by ``rstuf.artifacts``, what a task's
answer means is ``rstuf.tasks``'s, and what it raises is ``rstuf.errors``'s.

The endpoints and bodies follow repository-service-tuf-api
(``repository_service_tuf_api/artifacts.py``, ``tasks.py``, ``bootstrap.py``), the
task results repository-service-tuf-worker writes (``repository_service_tuf_worker/
repository.py``), and what a real RSTUF (API 1.0.1, worker 1.0.2) was seen to answer.

The publish race: an add/delete task sent with ``publish_artifacts: false``
first writes its rows, then stays RUNNING, holding a worker process, until a
publish that *started after* those rows were written covers them. A publish
posted too early covers nothing. When to publish is the caller's business
(``rstuf.outbox``); ``rstuf.tasks`` only tells whether a task's rows are
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
from collections.abc import Callable, Sequence
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
from pypi_index_mirror.rstuf.artifacts import (
    Artifact,
    add_body,
    delete_body,
    validate_artifacts,
    validate_paths,
)
from pypi_index_mirror.rstuf.errors import (
    RstufBadResponse,
    RstufError,
    RstufMisconfigured,
    RstufNotBootstrapped,
    RstufRefused,
    RstufServerError,
    RstufUnreachable,
    one_line,
)
from pypi_index_mirror.rstuf.tasks import TaskResult

log = logging.getLogger(__name__)

# --- the API -------------------------------------------------------------------

# Exact paths, trailing slashes as RSTUF routes them: `/artifacts` without the
# slash costs a 307 round trip, `/artifacts/delete/` with one is a different route.
BOOTSTRAP_PATH = "/api/v1/bootstrap/"
ADD_PATH = "/api/v1/artifacts/"
DELETE_PATH = "/api/v1/artifacts/delete"
PUBLISH_PATH = "/api/v1/artifacts/publish/"
TASK_PATH = "/api/v1/task/"

MAX_RESPONSE_BYTES = 1 << 20  # 1 MiB, plus the request's own size (the answer echoes its paths)


# --- pure functions: reading answers -------------------------------------------


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
        return one_line(text)
    if isinstance(document, dict):
        for key in ("detail", "error", "message"):
            if document.get(key):
                return one_line(_describe(document[key]))
    return one_line(text)


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
                snippet = one_line(repr(content), 80)
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
    return one_line(f"{type(reason).__name__}: {reason}", 200)
