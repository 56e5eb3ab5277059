"""The only code that speaks to PyPI: XML-RPC mirroring methods and Simple API pages.

Pure parts first (changelog rows, page checks), then `PypiClient`, which owns
the HTTP sessions; when to retry and how much of an answer to read is
`http_retry`'s. Nothing here writes to disk or decides what a page means for
the mirror; `pypi_mirror.py` does that.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import lxml.etree
import requests

from cli_support import ToolError
from http_retry import (
    USER_AGENT,
    BodyTooLarge,
    Retryable,
    RetryPolicy,
    call_with_retries,
    cap_retry_after,
    iter_capped,
    read_capped,
    retry_after_of,
)
from xmlrpc_stream import AnswerParser, MalformedAnswer

log = logging.getLogger("pypi_mirror")
T = TypeVar("T")

HTML_ACCEPT = "application/vnd.pypi.simple.v1+html, text/html;q=0.9"
SIMPLE_HTML_TYPES = ("application/vnd.pypi.simple.v1+html", "text/html")


class ClientSettings(Protocol):
    """What `PypiClient` is told (pypi_mirror's Config has these fields); seconds and bytes."""

    connect_timeout: float
    timeout: float  # read timeout of one request
    retries: int  # attempts after the first
    backoff: float  # first retry delay, doubled each retry, with jitter
    max_page_bytes: int
    max_xmlrpc_bytes: int
    xmlrpc_interval: float  # between two XML-RPC calls


# --- errors


class UpstreamError(ToolError):
    """PyPI answered something this tool cannot use; the message says what."""


class Transient(UpstreamError, Retryable):
    """A failure worth retrying (connection, 5xx, 429, rate-limit fault)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        Retryable.__init__(self, message, retry_after)


class XmlRpcFault(UpstreamError):
    def __init__(self, method: str, code: int, text: str) -> None:
        super().__init__(f"PyPI XML-RPC {method} failed: fault {code}: {text[:200]}")
        self.method, self.code, self.text = method, code, text


class NotASimplePage(UpstreamError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: not a simple page ({reason}); not mirrored")
        self.name, self.reason = name, reason


class StalePage(UpstreamError, Retryable):
    """A CDN served a page older than the changelog said: asking again later may help."""

    def __init__(self, name: str, expected: int, got: int) -> None:
        Retryable.__init__(
            self, f"{name}: page serial {got} is older than changelog serial {expected}"
        )
        self.name, self.expected, self.got = name, expected, got


class MissingPage(UpstreamError, Retryable):
    """A 404 for a project the changelog says exists: a CDN not caught up, probably."""

    def __init__(self, name: str, serial: int) -> None:
        Retryable.__init__(
            self,
            f"{name}: page answers 404 although changelog serial {serial} says the project "
            "exists (a CDN not caught up?)",
        )
        self.name, self.serial = name, serial


class ChangelogError(UpstreamError):
    """The changelog contradicts itself; applying it could lose changes."""


# --- records and pure functions


@dataclass(frozen=True)
class ChangelogEntry:
    name: str
    version: str | None
    timestamp: int
    action: str
    serial: int

    @property
    def renamed_from(self) -> str | None:
        """The old name of a legacy ``rename from <old>`` entry."""
        if self.action.startswith("rename from "):
            return self.action[len("rename from ") :].strip()
        return None


def parse_changelog_rows(rows: object, since: int) -> list[ChangelogEntry]:
    """Check and convert a ``changelog_since_serial`` answer.

    Serials must be above `since` and ascending; otherwise the answer cannot be
    trusted to cover what it claims and ChangelogError is raised.
    """
    if not isinstance(rows, list):
        raise ChangelogError(f"changelog_since_serial returned {type(rows).__name__}, not a list")
    entries = []
    previous = since
    for row in rows:
        if not (isinstance(row, list | tuple) and len(row) == 5):
            raise ChangelogError(f"malformed changelog row {row!r:.120}")
        name, version, timestamp, action, serial = row
        if not (isinstance(name, str) and isinstance(action, str) and type(serial) is int):
            raise ChangelogError(f"malformed changelog row {row!r:.120}")
        if serial <= previous:
            raise ChangelogError(
                f"changelog serials go backwards ({serial} after {previous}); "
                "refusing to apply it — retry later"
            )
        previous = serial
        ts = timestamp if type(timestamp) is int else 0
        entries.append(
            ChangelogEntry(name, version if isinstance(version, str) else None, ts, action, serial)
        )
    return entries


def is_serial(value: object) -> bool:
    """A journal serial: an int, not a bool, not negative (state.json refuses anything else)."""
    return type(value) is int and value >= 0


@dataclass(frozen=True)
class PageFacts:
    project_status: str  # "active", "archived", "quarantined", ...

    @property
    def listed(self) -> bool:
        """Quarantined projects keep a page but leave the root listing (as on PyPI)."""
        return self.project_status != "quarantined"


_HTML_PARSER = lxml.etree.HTMLParser(recover=True, no_network=True, huge_tree=True)


def inspect_simple_page(name: str, body: bytes) -> PageFacts:
    """Refuse anything that is not a plausible PEP 503 project page.

    A CDN error page, JSON, an empty or non-UTF-8 body would otherwise be
    mirrored and signed. Raises NotASimplePage.
    """
    if not body.strip():
        raise NotASimplePage(name, "empty body")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotASimplePage(name, f"not UTF-8 at byte {exc.start}") from None
    head = body[:512].lstrip().lower()
    if not (head.startswith(b"<!doctype html") or head.startswith(b"<html")):
        raise NotASimplePage(name, "not an HTML document")
    try:
        root = lxml.etree.fromstring(body, _HTML_PARSER)
    except lxml.etree.LxmlError as exc:
        raise NotASimplePage(name, f"unparsable HTML: {exc}") from None
    if root is None:
        raise NotASimplePage(name, "unparsable HTML")
    versions = root.xpath('//meta[@name="pypi:repository-version"]/@content')
    if not versions or not str(versions[0]).startswith("1."):
        raise NotASimplePage(name, "no pypi:repository-version 1.x meta tag")
    if any(anchor.get("href") is None for anchor in root.iter("a")):
        raise NotASimplePage(name, "a link without href")
    status = root.xpath('//meta[@name="pypi:project-status"]/@content')
    return PageFacts(str(status[0]) if status else "active")


_RESET_IN = re.compile(r"reset in (\d+(?:\.\d+)?) seconds?")


# --- the client


@dataclass(frozen=True)
class FetchedPage:
    """A project page as PyPI served it; `body is None` means 404 (project gone)."""

    name: str
    body: bytes | None
    serial: int | None
    facts: PageFacts | None


class PypiClient:
    """PyPI's XML-RPC mirroring methods and Simple API pages over keep-alive sessions.

    Each worker thread gets its own `requests.Session` (a Session is not
    thread-safe), all made by `session_factory` so tests can inspect them.
    """

    def __init__(
        self,
        base_url: str,
        config: ClientSettings,
        session_factory: Callable[[], requests.Session] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config
        self._session_factory = session_factory or self._default_session
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._sleep = sleep
        self._last_xmlrpc = 0.0
        self.requests_made = 0

    def _default_session(self) -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        settle_environment(session, self.base_url)
        return session

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def _count_request(self) -> None:
        with self._lock:
            self.requests_made += 1

    @property
    def _timeout(self) -> tuple[float, float]:
        return (self.config.connect_timeout, self.config.timeout)

    @property
    def retry_policy(self) -> RetryPolicy:
        """``--retries`` and ``--backoff``, sleeping through the injected `sleep`."""
        return RetryPolicy(self.config.retries, self.config.backoff, self._sleep)

    def with_retries(self, what: str, call: Callable[[], T]) -> T:
        """Return `call()`, retrying Transient failures; UpstreamError once retries are spent."""
        try:
            return call_with_retries(call, self.retry_policy, what, log, logging.INFO)
        except Transient as exc:
            attempts = self.config.retries + 1
            raise UpstreamError(f"{what}: giving up after {attempts} attempts: {exc}") from exc

    # XML-RPC

    def _xmlrpc(self, method: str, *params: object) -> object:
        return self.with_retries(f"XML-RPC {method}", lambda: self._xmlrpc_once(method, params))

    def _xmlrpc_once(
        self, method: str, params: tuple, sink: Callable[[object, object], None] | None = None
    ) -> object:
        wait = self._last_xmlrpc + self.config.xmlrpc_interval - time.monotonic()
        if wait > 0:
            self._sleep(wait)
        self._last_xmlrpc = time.monotonic()
        body = xmlrpc.client.dumps(params, method, allow_none=True).encode()
        self._count_request()
        try:
            response = self.session.post(
                f"{self.base_url}/pypi",
                data=body,
                headers={"Content-Type": "text/xml", "Accept": "text/xml"},
                timeout=self._timeout,
                stream=True,
            )
        except requests.RequestException as exc:
            raise Transient(f"connection failed: {exc}") from exc
        with response:
            check_status(response, f"XML-RPC {method}")
            return self._parse_xmlrpc(method, response, sink)

    def _parse_xmlrpc(
        self,
        method: str,
        response: requests.Response,
        sink: Callable[[object, object], None] | None = None,
    ) -> object:
        """Parse the answer as it streams (no second copy of 60 MB).

        With `sink`, the members of a struct answer go to it instead of into a dict.
        """
        parser = AnswerParser(sink)
        received = 0  # for -v
        try:
            for chunk in iter_capped(response, self.config.max_xmlrpc_bytes, 1 << 20):
                received += len(chunk)
                parser.feed(chunk)
            result = parser.close()
            log.debug("XML-RPC %s: HTTP %d, %d bytes", method, response.status_code, received)
        except BodyTooLarge as exc:
            raise UpstreamError(f"XML-RPC {method}: answer {exc}; refused") from None
        except requests.RequestException as exc:
            raise Transient(f"XML-RPC {method}: answer cut off: {exc}") from exc
        except xmlrpc.client.Fault as fault:
            text = str(fault.faultString)
            if "TooManyRequests" in text or (fault.faultCode == -32500 and "reset in" in text):
                match = _RESET_IN.search(text)
                raise Transient(
                    f"rate limited by PyPI ({text[:120]})",
                    retry_after=cap_retry_after(float(match.group(1))) if match else None,
                ) from None
            raise XmlRpcFault(method, fault.faultCode, text) from None
        except MalformedAnswer as exc:
            raise Transient(f"XML-RPC {method}: malformed answer ({exc})") from None
        return result

    def changelog_last_serial(self) -> int:
        serial = self._xmlrpc("changelog_last_serial")
        if serial is None:  # warehouse's max(id) of an empty journal
            return 0
        if not is_serial(serial):
            raise UpstreamError(f"changelog_last_serial returned {serial!r:.80}, not a serial")
        return serial

    def changelog_since(self, since: int, until: int) -> Iterator[list[ChangelogEntry]]:
        """Page through ``changelog_since_serial`` until `until` is covered (or a page is empty)."""
        serial = since
        while serial < until:
            rows = self._xmlrpc("changelog_since_serial", serial)
            entries = parse_changelog_rows(rows, serial)
            if not entries:
                return
            yield entries
            serial = entries[-1].serial

    def list_packages_with_serial(self, sink: Callable[[object, object], None]) -> None:
        """Hand every listed (display name, serial) pair to `sink` as the answer streams in.

        The listing is 700,000 pairs: the caller validates and keeps each one, so
        the answer never exists as a dict of its own. A retried call starts over:
        `sink` must tolerate seeing a pair again.
        """

        def attempt() -> None:
            rest = self._xmlrpc_once("list_packages_with_serial", (), sink)
            if not isinstance(rest, dict):
                raise UpstreamError("list_packages_with_serial did not return a mapping")

        self.with_retries("XML-RPC list_packages_with_serial", attempt)

    # Simple API

    def fetch_page(self, name: str) -> FetchedPage:
        """GET /simple/<name>/ once; raises Transient, NotASimplePage or UpstreamError."""
        self._count_request()
        url = f"{self.base_url}/simple/{name}/"
        try:
            response = self.session.get(
                url,
                headers={"Accept": HTML_ACCEPT},
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise Transient(f"{name}: connection failed: {exc}") from exc
        with response:
            if response.status_code == 404:
                log.debug("page %s: HTTP 404", name)
                return FetchedPage(name, None, None, None)
            check_status(response, name)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type not in SIMPLE_HTML_TYPES:
                raise NotASimplePage(name, f"Content-Type {content_type or 'missing'}")
            serial_header = response.headers.get("X-PyPI-Last-Serial", "")
            if not serial_header.isdigit():
                raise NotASimplePage(name, "no X-PyPI-Last-Serial header")
            try:
                body = read_capped(response, self.config.max_page_bytes)
            except BodyTooLarge as exc:
                raise NotASimplePage(name, str(exc)) from None
            except requests.RequestException as exc:
                raise Transient(f"{name}: body cut off: {exc}") from exc
        log.debug("page %s: HTTP 200, serial %s, %d bytes", name, serial_header, len(body))
        return FetchedPage(name, body, int(serial_header), inspect_simple_page(name, body))


def settle_environment(session: requests.Session, base_url: str) -> None:
    """Resolve, once, what requests otherwise reads from the environment on every request.

    Every request of a PypiClient goes to `base_url`'s host, so its proxies
    (``*_PROXY``/``NO_PROXY``), CA bundle (``REQUESTS_CA_BUNDLE``,
    ``CURL_CA_BUNDLE``) and ``.netrc`` credentials are the same each time;
    re-deriving them per request was a tenth of a first sync's CPU (profile).
    """
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    if session.auth is None:
        session.auth = requests.utils.get_netrc_auth(base_url)
    session.trust_env = False


def check_status(response: requests.Response, what: str) -> None:
    """Turn a non-200 answer into Transient (429, 5xx) or UpstreamError (anything else)."""
    status = response.status_code
    if status == 200:
        return
    if status == 429 or status >= 500:
        hint = retry_after_of(status, response.headers)
        raise Transient(f"{what}: HTTP {status}", retry_after=hint)
    raise UpstreamError(f"{what}: unexpected HTTP {status} from {response.url}")
