"""The only code that speaks to PyPI: XML-RPC mirroring methods and Simple API pages.

Pure parts first (XML-RPC pacing, conditional requests), then
`PypiClient`, which owns the HTTP sessions; when to retry and how much of an
answer to read is ``http.retry``'s, proxies, bundle and limits
``http.environment``'s (handed in). What a page must be is ``upstream.pages``'s,
the JSON root's streaming parse ``upstream.json_root``'s, the errors
``upstream.errors``'s. Nothing here writes to disk or decides what a page means
for the mirror; the sync does that.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import logging
import re
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pypi_index_mirror.http.environment import HttpEnvironment, read_environment
from pypi_index_mirror.http.retry import (
    Headers,
    RetryPolicy,
    call_with_retries,
    cap_retry_after,
    retry_after_of,
)
from pypi_index_mirror.upstream.changelog import ChangelogEntry, is_serial, parse_changelog_rows
from pypi_index_mirror.upstream.errors import (
    NotASimplePage,
    Transient,
    UpstreamError,
    XmlRpcFault,
    XmlRpcUnavailable,
)
from pypi_index_mirror.upstream.json_root import JsonRootParser
from pypi_index_mirror.upstream.pages import (
    FetchedPage,
    check_api_version,
    facts_of_checked_page,
    inspect_json_page,
    inspect_simple_page,
    json_page_serial,
    page_serial,
)
from pypi_index_mirror.upstream.transport import (
    PageAnswer,
    PageLoop,
    PageTransportError,
    ResponseHeaders,
    StreamedAnswer,
    StreamingCall,
    TransportSettings,
)
from pypi_index_mirror.upstream.xmlrpc import AnswerParser, MalformedAnswer

log = logging.getLogger(__name__)
T = TypeVar("T")

HTML_ACCEPT = "application/vnd.pypi.simple.v1+html, text/html;q=0.9"
SIMPLE_HTML_TYPES = ("application/vnd.pypi.simple.v1+html", "text/html")
JSON_TYPE = "application/vnd.pypi.simple.v1+json"  # PEP 691
# How an index says XML-RPC is gone: no endpoint (404), POST refused (405), retired (410).
XMLRPC_GONE_STATUSES = (404, 405, 410)


class ClientSettings(Protocol):
    """What `PypiClient` is told (pypi_mirror's Config has these fields); seconds and bytes."""

    connect_timeout: float
    timeout: float  # read timeout of one request
    retries: int  # attempts after the first
    backoff: float  # first retry delay, doubled each retry, with jitter
    max_page_bytes: int
    max_xmlrpc_bytes: int
    xmlrpc_interval: float  # average seconds between XML-RPC calls (see XmlRpcPacing)


# --- pure functions


_RESET_IN = re.compile(r"reset in (\d+(?:\.\d+)?) seconds?")
_DISABLED = re.compile(r"\b(disabled|deprecated|removed|no longer)\b", re.IGNORECASE)


def is_disabled_fault(code: int, text: str) -> bool:
    """A fault that means "this method is gone", not "try again".

    pyramid_rpc answers -32601 for a method it does not know; warehouse
    retires methods with a -32500 fault whose text says so ("... has been
    deprecated", "... has been removed").
    """
    return code == -32601 or bool(_DISABLED.search(text))


XMLRPC_BURST = 3  # a small run's XML-RPC calls (two or three) go out without a pause


@dataclass
class XmlRpcPacing:
    """A token bucket: `burst` calls at once, then one every `interval` seconds on average.

    PyPI asks mirrors for about one XML-RPC call a second and enforces its
    limit per IP per hour (warehouse's rate limiter), so what matters is the
    average: a run's first calls need not wait, a long changelog catch-up
    still keeps the pace. `interval` 0 disables the pacing.
    """

    interval: float
    burst: int = XMLRPC_BURST
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = field(default=0.0, init=False)
    _stamp: float | None = field(default=None, init=False)

    def take(self) -> None:
        """Spend one token, sleeping first if none is left."""
        if self.interval <= 0:
            return
        now = self.clock()
        if self._stamp is None:
            self._tokens = float(self.burst)
        else:
            refill = (now - self._stamp) / self.interval
            self._tokens = min(float(self.burst), self._tokens + refill)
        self._stamp = now
        if self._tokens < 1:
            wait = (1 - self._tokens) * self.interval
            self.sleep(wait)
            self._tokens, self._stamp = 1.0, now + wait
        self._tokens -= 1


# --- the client



def etag_of(body: bytes) -> str:
    """The ETag warehouse sends with these bytes as an uncompressed answer, quotes included.

    Warehouse's conditional-response tween calls WebOb's ``md5_etag()``: the
    base64 MD5 of the body with its ``=`` padding stripped. When warehouse
    gzips an answer it computes the tag again from the compressed bytes, so a
    conditional request asks for the identity encoding (`conditional_headers`).
    """
    digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest())
    return '"' + digest.decode("ascii").rstrip("=") + '"'


def conditional_headers(body: bytes) -> tuple[str, ...]:
    """The request headers of a GET that only wants the page if it is no longer `body`."""
    return (f"If-None-Match: {etag_of(body)}", "Accept-Encoding: identity")


def page_request(name: str, json_form: bool) -> tuple[str, str]:
    """The path and Accept header of a GET of project `name`'s page in one form."""
    return f"/simple/{name}/", JSON_TYPE if json_form else HTML_ACCEPT


class PypiClient:
    """PyPI's XML-RPC mirroring methods, its JSON root and Simple API pages, over libcurl.

    Pages, the hot path (700,000 of them in a first sync), go through a
    `transport.PageLoop`: a run's in the fetch engine's loop (`page_loop`,
    ``sync.fetch_loop``), a single page through a one-transfer loop kept alive
    between calls (`get_page`); requests' per-request machinery was two thirds
    of a first sync's CPU. The few large answers (XML-RPC, the JSON root) go
    through a `transport.StreamingCall` per thread, parsed as they stream.

    All go through `environment` (proxy, CA bundle, ``.netrc``, User-Agent,
    timeouts and caps): the run reads it once and hands it to every client;
    without one, the process environment is read here, with `config`'s limits.
    """

    def __init__(
        self,
        base_url: str,
        config: ClientSettings,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        environment: HttpEnvironment | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config
        self._local = threading.local()
        self._calls: list[StreamingCall] = []
        self._lock = threading.Lock()
        self._sleep = sleep
        self._pacing = XmlRpcPacing(config.xmlrpc_interval, clock=clock, sleep=sleep)
        self.environment = environment if environment is not None else read_environment(config)
        self._single: PageLoop | None = None  # `get_page`'s own loop, made on first use
        self.requests_made = 0
        self.not_modified = 0  # conditional page GETs answered 304 (revalidation)

    def _streaming_call(self) -> StreamingCall:
        """This thread's `StreamingCall` (a libcurl handle is not shared between threads),
        capped at the listing's size, the largest answer PyPI sends."""
        call = getattr(self._local, "call", None)
        if call is None:
            settings = transport_settings(self.base_url, self.environment)
            cap = self.environment.limits.max_listing_bytes
            call = self._local.call = StreamingCall(
                dataclasses.replace(settings, max_body_bytes=cap)
            )
            with self._lock:
                self._calls.append(call)
        return call

    def page_loop(self) -> PageLoop:
        """A new `upstream.transport.PageLoop` with the settings of this client's page GETs."""
        return PageLoop(transport_settings(self.base_url, self.environment))

    def close(self) -> None:
        with self._lock:
            for call in self._calls:
                call.close()
            self._calls.clear()
            self._local = threading.local()  # a call after this makes new ones
            if self._single is not None:
                self._single.close()
                self._single = None

    def count_request(self) -> None:
        """One more request to PyPI (the summary's ``requests``)."""
        with self._lock:
            self.requests_made += 1

    @functools.cached_property
    def retry_policy(self) -> RetryPolicy:
        """``--retries`` and ``--backoff``, sleeping through the injected `sleep`."""
        return RetryPolicy(self.config.retries, self.config.backoff, self._sleep)

    def with_retries(self, what: str, call: Callable[[], T], failed: Transient | None = None) -> T:
        """Return `call()`, retrying Transient failures; UpstreamError once retries are spent.

        `failed`: the first attempt was made elsewhere (`call_with_retries`)."""
        try:
            return call_with_retries(call, self.retry_policy, what, log, logging.INFO, failed)
        except Transient as exc:
            attempts = self.config.retries + 1
            raise UpstreamError(f"{what}: giving up after {attempts} attempts: {exc}") from exc

    # XML-RPC

    def _xmlrpc(self, method: str, *params: object) -> object:
        return self.with_retries(f"XML-RPC {method}", lambda: self._xmlrpc_once(method, params))

    def _xmlrpc_once(
        self, method: str, params: tuple, sink: Callable[[object, object], None] | None = None
    ) -> object:
        """One call, its answer parsed as it streams (no second copy of 60 MB).

        With `sink`, the members of a struct answer go to it instead of into a dict.
        """
        self._pacing.take()
        body = xmlrpc.client.dumps(params, method, allow_none=True).encode()
        self.count_request()
        parser = AnswerParser(sink)
        what = f"XML-RPC {method}"
        received = 0  # for -v

        def feed(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            parser.feed(chunk)

        try:
            answer = self._stream("/pypi", ["Content-Type: text/xml", "Accept: text/xml"],
                                  feed, body)  # fmt: skip
            if answer.status in XMLRPC_GONE_STATUSES:
                raise XmlRpcUnavailable(method, f"HTTP {answer.status}")
            check_status_of(answer.status, answer.headers, what, f"{self.base_url}/pypi")
            result = parser.close()
        except PageTransportError as exc:
            if exc.too_large:
                raise UpstreamError(f"{what}: answer {exc}; refused") from None
            raise Transient(f"{what}: {exc}") from exc
        except xmlrpc.client.Fault as fault:
            text = str(fault.faultString)
            if "TooManyRequests" in text or (fault.faultCode == -32500 and "reset in" in text):
                match = _RESET_IN.search(text)
                raise Transient(
                    f"rate limited by PyPI ({text[:120]})",
                    retry_after=cap_retry_after(float(match.group(1))) if match else None,
                ) from None
            if is_disabled_fault(fault.faultCode, text):
                raise XmlRpcUnavailable(method, f"fault {fault.faultCode}: {text[:120]}") from None
            raise XmlRpcFault(method, fault.faultCode, text) from None
        except MalformedAnswer as exc:
            raise Transient(f"{what}: malformed answer ({exc})") from None
        log.debug("%s: HTTP %d, %d bytes", what, answer.status, received)
        return result

    def _stream(
        self,
        path: str,
        headers: list[str],
        feed: Callable[[bytes], None],
        data: bytes | None,
        start: Callable[[ResponseHeaders], None] | None = None,
    ) -> StreamedAnswer:
        """`StreamingCall.request` on this thread's call."""
        return self._streaming_call().request(path, headers, feed, data, start)

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

    def fetch_page(self, name: str, known: bytes | None = None) -> FetchedPage:
        """GET /simple/<name>/ once as HTML; raises Transient, NotASimplePage or UpstreamError.

        A body equal to `known` (the page the mirror holds, checked when it was
        written) is not parsed again.
        """
        return self.read_page(name, self.get_page(name, json_form=False), known, json_form=False)

    def fetch_json_page(self, name: str, known: bytes | None = None) -> FetchedPage:
        """GET /simple/<name>/ once as PEP 691 JSON; raises and skips like `fetch_page`."""
        return self.read_page(name, self.get_page(name, json_form=True), known, json_form=True)

    def get_page(
        self, name: str, json_form: bool, unless: bytes | None = None
    ) -> PageAnswer | PageTransportError:
        """One GET of a project page (`page_request`) on this client's loop of one; for `read_page`.

        With `unless` (the bytes the mirror holds: a revalidation), the GET is
        conditional on warehouse's ETag of those bytes, so an unchanged page is
        a 304 without a body (`read_page` then hands the held bytes back).
        """
        self.count_request()
        extra = conditional_headers(unless) if unless is not None else ()
        if self._single is None:
            self._single = self.page_loop()
        loop = self._single
        path, accept = page_request(name, json_form)
        loop.start(path, accept, tag=None, extra=extra)
        while True:  # the one transfer in flight: the same loop a run's engine drives
            for _, outcome in loop.wait(1.0):
                return outcome

    def read_page(
        self,
        name: str,
        outcome: PageAnswer | PageTransportError,
        known: bytes | None,
        json_form: bool,
    ) -> FetchedPage:
        """What one GET of `page_request(name, json_form)` brought, checked: the page, or a
        404's None body; raises Transient, NotASimplePage or UpstreamError.

        Whoever made the request (`fetch_page` here, a `upstream.transport.PageLoop`
        elsewhere) hands its outcome here, so every page is judged alike.
        """
        media_types = (JSON_TYPE,) if json_form else SIMPLE_HTML_TYPES
        body: bytes | None
        if isinstance(outcome, PageAnswer) and outcome.status == 304 and known is not None:
            body, serial = known, self._unchanged_serial(name, outcome, known)
        else:
            body, serial = self._simple_body(name, outcome, media_types)
        if body is None:
            return FetchedPage(name, None, None, None)
        facts = facts_of_checked_page(body) if body == known else None
        if facts is None:
            facts = (
                inspect_json_page(name, body, serial)
                if json_form
                else inspect_simple_page(name, body)
            )
        return FetchedPage(name, body, serial, facts)

    def _unchanged_serial(self, name: str, outcome: PageAnswer, known: bytes) -> int:
        """The serial of a page a 304 says is still `known`: warehouse's 304 keeps
        ``X-PyPI-Last-Serial`` (WebOb drops only Content-Type and Content-Length);
        without it, the one the held page shows."""
        with self._lock:
            self.not_modified += 1
        header = outcome.headers.get("X-PyPI-Last-Serial") or ""
        if header.isdigit():
            return int(header)
        # the held page's own: the HTML trailer, or the JSON page's top-level meta (read as
        # the writer reads it, never a "_last-serial" inside a file's name)
        found = page_serial(known) if known.rstrip().endswith(b"-->") else json_page_serial(known)
        if found is None:
            raise NotASimplePage(name, "HTTP 304 without X-PyPI-Last-Serial")
        log.debug("page %s: HTTP 304 without X-PyPI-Last-Serial", name)
        return found

    def _simple_body(
        self, name: str, outcome: PageAnswer | PageTransportError, media_types: tuple[str, ...]
    ) -> tuple[bytes | None, int]:
        """A project page's (body, X-PyPI-Last-Serial), or (None, 0) for a 404."""
        if isinstance(outcome, PageTransportError):
            if outcome.too_large:
                raise NotASimplePage(name, str(outcome))
            raise Transient(f"{name}: {outcome}")
        headers, body = outcome.headers, outcome.body
        if outcome.status == 404:
            log.debug("page %s: HTTP 404", name)
            return None, 0
        check_status_of(outcome.status, headers, name, self.base_url + f"/simple/{name}/")
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in media_types:
            raise NotASimplePage(name, f"Content-Type {content_type or 'missing'}")
        serial_header = headers.get("X-PyPI-Last-Serial") or ""
        if not serial_header.isdigit():
            raise NotASimplePage(name, "no X-PyPI-Last-Serial header")
        log.debug("page %s: HTTP 200, serial %s, %d bytes", name, serial_header, len(body))
        return body, int(serial_header)

    def list_projects_json(self, sink: Callable[[object, object], None]) -> int:
        """Stream the JSON root ``/simple/`` (PEP 691) to `sink`; return its serial.

        Each project's (name, ``_last-serial``) goes to `sink` as it is parsed
        (retries start over: `sink` must tolerate a pair seen twice). The
        serial is the root's ``X-PyPI-Last-Serial``, PyPI's newest journal
        serial when the CDN cached the page. An index whose root carries no
        ``_last-serial`` (API 1.0 without warehouse's extension) is refused:
        without it no change could be noticed.
        """

        def checked(name: object, serial: object) -> None:
            if serial is None:
                raise UpstreamError(
                    f"JSON root {self.base_url}/simple/ lists {str(name)[:60]!r} without "
                    "_last-serial; this index cannot be followed without XML-RPC"
                )
            sink(name, serial)

        return self.with_retries("JSON root /simple/", lambda: self._list_once(checked))

    def _list_once(self, sink: Callable[[object, object], None]) -> int:
        self.count_request()
        url = f"{self.base_url}/simple/"
        what = "JSON root /simple/"
        parser = JsonRootParser(sink)

        def pep_691(headers: ResponseHeaders) -> None:
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != JSON_TYPE:
                raise UpstreamError(
                    f"JSON root {url}: Content-Type {content_type or 'missing'}, not "
                    f"{JSON_TYPE}: the index does not serve PEP 691 JSON"
                )

        try:
            answer = self._stream("/simple/", [f"Accept: {JSON_TYPE}"], parser.feed, None, pep_691)
            check_status_of(answer.status, answer.headers, what, url)
            parser.close()
        except PageTransportError as exc:
            if exc.too_large:
                raise UpstreamError(f"JSON root {url}: answer {exc}; refused") from None
            raise Transient(f"{what}: {exc}") from exc
        except ValueError as exc:  # UnicodeDecodeError included
            raise Transient(f"{what}: malformed answer ({exc})") from None
        header = answer.headers.get("X-PyPI-Last-Serial") or ""
        check_api_version(what, parser.meta)
        assert parser.meta is not None
        serial = int(header) if header.isdigit() else parser.meta.get("_last-serial")
        if not is_serial(serial):
            raise UpstreamError(f"JSON root {url}: no X-PyPI-Last-Serial and no meta._last-serial")
        assert isinstance(serial, int)
        return serial


def transport_settings(base_url: str, environment: HttpEnvironment) -> TransportSettings:
    """The page transport's settings: the environment's proxy, bundle, credentials and limits."""
    limits = environment.limits
    return TransportSettings(
        base_url=base_url,
        proxy=environment.proxy_for(base_url),
        ca_bundle=environment.ca_bundle if base_url.startswith("https:") else None,
        auth=environment.netrc_auth(base_url),
        connect_timeout=limits.connect_timeout,
        read_timeout=limits.read_timeout,
        max_body_bytes=limits.max_page_bytes,
        user_agent=environment.user_agent,
    )


def check_status_of(status: int, headers: Headers, what: str, url: str | None) -> None:
    """Turn a non-200 answer into Transient (429, 5xx) or UpstreamError (anything else)."""
    if status == 200:
        return
    if status == 429 or status >= 500:
        raise Transient(f"{what}: HTTP {status}", retry_after=retry_after_of(status, headers))
    raise UpstreamError(f"{what}: unexpected HTTP {status} from {url}")
