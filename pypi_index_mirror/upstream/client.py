"""The only code that speaks to PyPI: XML-RPC mirroring methods and Simple API pages.

Pure parts first (changelog rows, page checks), then `PypiClient`, which owns
the HTTP sessions; when to retry and how much of an answer to read is
``http.retry``'s, proxies, bundle and limits ``http.environment``'s (handed in).
Nothing here writes to disk or decides what a page means for
the mirror; `pypi_mirror.py` does that.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import json
import logging
import re
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import lxml.etree
import requests

from pypi_index_mirror.http.environment import HttpEnvironment, read_environment
from pypi_index_mirror.http.retry import (
    BodyTooLarge,
    Headers,
    Retryable,
    RetryPolicy,
    call_with_retries,
    cap_retry_after,
    iter_capped,
    retry_after_of,
)
from pypi_index_mirror.ops.cli import ToolError
from pypi_index_mirror.upstream.transport import (
    PageAnswer,
    PageLoop,
    PagePool,
    PageTransportError,
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


class XmlRpcUnavailable(UpstreamError):
    """The index no longer offers XML-RPC (or this method): follow it through /simple/ instead."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"PyPI XML-RPC {method} is unavailable ({reason})")
        self.method, self.reason = method, reason


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


class UntrustedListing(UpstreamError):
    """A project listing too empty or too small to be the index's (a stale cache): refused
    before anything is changed (see `sync_plan.listing_refusal`)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(
            f"PyPI's {source} {reason}: a stale cache, not the index; nothing was changed. "
            "Run again later (PyPI caches it up to an hour), or with --trust-listing if the "
            "index really holds so few"
        )
        self.source, self.reason = source, reason


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


@dataclass(slots=True)
class PageFacts:
    project_status: str  # "active", "archived", "quarantined", ...

    @property
    def listed(self) -> bool:
        """Quarantined projects keep a page but leave the root listing (as on PyPI)."""
        return self.project_status != "quarantined"


# The status as warehouse writes it (PEP 792), in either form of a page.
_STATUS_OF_CHECKED = re.compile(
    rb'<meta name="pypi:project-status" content="([^"]*)">'
    rb'|"project-status"\s*:\s*\{\s*"status"\s*:\s*"([^"]*)"'
)


def facts_of_checked_page(body: bytes) -> PageFacts | None:
    """The facts of a page whose bytes were checked before (the mirror's copy), cheaply.

    A full check fetches every page and most are byte for byte what the mirror
    holds: parsing them again would find what it found when they were written.
    None when the status is not where warehouse puts it (the caller then
    inspects the page in full).
    """
    match = _STATUS_OF_CHECKED.search(body)
    if match is None:
        return None
    return PageFacts((match.group(1) or match.group(2)).decode("ascii", "replace"))


class _PageTools(threading.local):
    """A parser and compiled XPaths per thread: lxml parsers must not be shared by threads,
    and a thread of its own lets the parse (which releases the GIL) run beside the others."""

    def __init__(self) -> None:
        self.parser = lxml.etree.HTMLParser(recover=True, no_network=True, huge_tree=True)
        self.version = lxml.etree.XPath('//meta[@name="pypi:repository-version"]/@content')
        self.status = lxml.etree.XPath('//meta[@name="pypi:project-status"]/@content')
        self.link_without_href = lxml.etree.XPath("boolean(//a[not(@href)])")


_PAGE_TOOLS = _PageTools()


# A project page in the shape warehouse's detail template renders (the whitespace between
# tags aside): metas, title, h1, then one <a href="..." ...>file</a><br /> per file. Every
# value is quoted, no value or text holds "<", ">" or a C0 control but tab, LF and CR
# (libxml2 may stop parsing at one, NUL), nothing is a comment but the trailing SERIAL one.
# A page of this shape parses into exactly the elements its tags spell, so
# `inspect_simple_page` reads its facts off the match instead of building lxml's tree (a
# third of the cost of a page before; the match is a third of the parse). Possessive
# quantifiers: no backtracking.
_BLANK = rb"[ \t\r\n]*+"  # what libxml2 skips between tags (not \v or \f)
_VALUE = rb'"[^"<>\x00-\x08\x0b\x0c\x0e-\x1f]*+"'
_TEXT = rb"[^<>\x00-\x08\x0b\x0c\x0e-\x1f]*+"
_WAREHOUSE_PAGE = re.compile(
    _BLANK + rb"<!DOCTYPE html>" + _BLANK + rb'<html(?: lang="[A-Za-z-]*+")?>' + _BLANK
    + rb"<head>" + _BLANK
    + rb'((?:<meta name="[a-z:-]++" content=' + _VALUE + rb">" + _BLANK + rb")*+)"
    + rb"<title>(" + _TEXT + rb")</title>" + _BLANK + rb"</head>" + _BLANK
    + rb"<body>" + _BLANK + rb"(?:<h1>(" + _TEXT + rb")</h1>" + _BLANK + rb")?"
    + rb"((?:<a href=" + _VALUE + rb"(?:[ \t\r\n]++[a-z-]++=" + _VALUE + rb")*+" + _BLANK
    + rb">" + _TEXT + rb"</a>(?:<br ?/?>)?" + _BLANK + rb")*+)"
    + rb"</body>" + _BLANK + rb"</html>" + _BLANK + rb"(?:<!--SERIAL [0-9]++-->" + _BLANK + rb")?"
)  # fmt: skip
_PAGE_META = re.compile(rb'<meta name="([a-z:-]+)" content="([^"]*)">')
_PLAIN_VALUE = re.compile(rb"[!#-%'-;=?-~]*")  # printable ASCII but for space " & < >
# What a page without the version meta (PEP 629: an index of API 1.0) may hold: PEP 503's
# list of links and nothing else, so a 200 error or login page (a <p>, a <form>, an <hr>) is
# never taken for a project with no files.
API_1_0_ELEMENTS = frozenset({"html", "head", "meta", "title", "body", "h1", "a", "br"})
_NAME_SEPARATORS = re.compile(r"[-_.]+")


def names_project(text: str, name: str) -> bool:
    """Whether a title or heading names project `name` (compared PEP 503-normalized)."""
    return bool(name) and name in _NAME_SEPARATORS.sub("-", text.lower())


def facts_of_warehouse_page(body: bytes, name: str | None = None) -> PageFacts | None:
    """A valid page's facts without parsing it, when it has warehouse's shape; else None.

    Never a verdict lxml would not give: whatever this accepts, the full check
    accepts with the same facts (tests/test_page_check.py holds it to that over
    mutated pages). A page of another shape, or a meta value with an entity or
    an odd byte in it, gets None and the full check. A page without the
    version meta is API 1.0 (PEP 629): accepted when it links a file or its
    title or heading names project `name` (unknown: None, the full check decides).
    """
    match = _WAREHOUSE_PAGE.fullmatch(body)
    if match is None:
        return None
    metas: dict[bytes, bytes] = {}
    for key, value in _PAGE_META.findall(match.group(1)):
        metas.setdefault(key, value)
    version = metas.get(b"pypi:repository-version")
    status = metas.get(b"pypi:project-status", b"active")
    # an entity in the status would read otherwise in lxml's tree (in the version it cannot
    # turn a leading "1." into anything else)
    if version is not None and not version.startswith(b"1."):
        return None
    if not _PLAIN_VALUE.fullmatch(status):
        return None
    if version is None and not match.group(4):  # API 1.0 and no link: is it this project's?
        headings = match.group(2) + b" " + (match.group(3) or b"")
        if name is None or b"&" in headings:  # an entity: lxml's text may differ
            return None
        if not names_project(headings.decode("utf-8", "replace"), name):
            return None
    return PageFacts(status.decode("ascii"))


def inspect_simple_page(name: str, body: bytes) -> PageFacts:
    """Refuse anything that is not a plausible PEP 503 project page.

    A CDN error page, JSON, an empty or non-UTF-8 body would otherwise be
    mirrored and signed. Raises NotASimplePage.
    """
    if not body or body.isspace():
        raise NotASimplePage(name, "empty body")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotASimplePage(name, f"not UTF-8 at byte {exc.start}") from None
    return facts_of_warehouse_page(body, name) or parse_simple_page(name, body)


def parse_simple_page(name: str, body: bytes) -> PageFacts:
    """`inspect_simple_page`'s full check of a UTF-8 body: lxml's tree of it, searched."""
    head = body[:512].lstrip().lower()
    if not (head.startswith(b"<!doctype html") or head.startswith(b"<html")):
        raise NotASimplePage(name, "not an HTML document")
    tools = _PAGE_TOOLS
    try:
        root = lxml.etree.fromstring(body, tools.parser)
    except lxml.etree.LxmlError as exc:
        raise NotASimplePage(name, f"unparsable HTML: {exc}") from None
    if root is None:
        raise NotASimplePage(name, "unparsable HTML")
    versions = tools.version(root)
    if versions and not str(versions[0]).startswith("1."):
        raise NotASimplePage(name, f"pypi:repository-version {str(versions[0])[:20]!r} is not 1.x")
    if tools.link_without_href(root):
        raise NotASimplePage(name, "a link without href")
    if not versions:
        check_api_1_0_page(name, root)
    status = tools.status(root)
    return PageFacts(str(status[0]) if status else "active")


def check_api_1_0_page(name: str, root: lxml.etree._Element) -> None:
    """A page without ``pypi:repository-version`` is API 1.0 (PEP 629: clients assume 1.0),
    if it is PEP 503's list of links: only `API_1_0_ELEMENTS`, and a link or a title or
    heading that names the project. Anything else (an error or login page served 200) is
    refused, never mirrored as a project without files. Raises NotASimplePage."""
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag not in API_1_0_ELEMENTS:
            raise NotASimplePage(
                name, f"no pypi:repository-version meta and a <{element.tag[:20]}> element"
            )
    if next(root.iter("a"), None) is not None:
        return
    title, heading = root.find(".//title"), root.find(".//h1")
    headings = " ".join(
        "".join(element.itertext()) for element in (title, heading) if element is not None
    )
    if not names_project(headings, name):
        raise NotASimplePage(name, "no pypi:repository-version meta, no link, no title naming it")


def inspect_json_page(name: str, body: bytes, serial: int | None = None) -> PageFacts:
    """Refuse anything that is not a plausible PEP 691 project page for `name`.

    A JSON object with ``meta.api-version`` 1.x, ``name`` equal to the
    normalized name asked for, a ``files`` list, and (when present) a
    ``meta._last-serial`` equal to the `serial` header. Raises NotASimplePage.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise NotASimplePage(name, f"not UTF-8 at byte {exc.start}") from None
    except ValueError as exc:
        raise NotASimplePage(name, f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise NotASimplePage(name, "not a JSON object")
    check_api_version(name, document.get("meta"))
    if document.get("name") != name:
        raise NotASimplePage(name, f"the page is for {str(document.get('name'))[:60]!r}")
    if not isinstance(document.get("files"), list):
        raise NotASimplePage(name, "no 'files' list")
    page_serial = document["meta"].get("_last-serial")
    if serial is not None and page_serial is not None and page_serial != serial:
        raise NotASimplePage(
            name, f"meta._last-serial {page_serial!r} disagrees with X-PyPI-Last-Serial {serial}"
        )
    status = document.get("project-status")  # PEP 792: {"status": ..., "reason": ...}
    if isinstance(status, dict) and isinstance(status.get("status"), str):
        return PageFacts(status["status"])
    return PageFacts("active")


def check_api_version(what: str, meta: object) -> None:
    """PEP 629/691: a client must accept any 1.x and refuse another major version."""
    version = meta.get("api-version") if isinstance(meta, dict) else None
    if not (isinstance(version, str) and version.startswith("1.")):
        raise NotASimplePage(what, f"meta.api-version is {version!r}, not 1.x")


class JsonRootParser:
    """Stream-parses a PEP 691 root, handing each project's name and serial to `sink`.

    PyPI's root lists about 700,000 projects (tens of MB): ``json.loads`` would
    build a dict per project, several times the listing itself. This reads
    the top-level object key by key and decodes each ``projects`` entry alone,
    so memory stays flat whatever the size. ``meta`` may come before or after
    ``projects``; other keys are skipped. Raises ValueError on malformed input.
    """

    MAX_VALUE = 1 << 20  # one JSON value other than the projects list, characters

    def __init__(self, sink: Callable[[object, object], None]) -> None:
        self._sink = sink
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._buffer = ""
        self._pos = 0
        self._step = self._open_object
        self._key: str | None = None
        self.meta: dict | None = None
        self.projects = 0
        self._after_project = False  # in 'projects': an entry was read, ',' or ']' is next

    def feed(self, chunk: bytes) -> None:
        self._buffer = self._buffer[self._pos :] + self._text.decode(chunk)
        self._pos = 0
        self._run(final=False)

    def close(self) -> None:
        self._buffer = self._buffer[self._pos :] + self._text.decode(b"", final=True)
        self._pos = 0
        self._run(final=True)
        if self._step != self._done:  # bound methods: equal, never identical
            raise ValueError("the document ends early")
        if self._skip_space() < len(self._buffer):
            raise ValueError("data after the document")

    def _run(self, final: bool) -> None:
        while self._step(final):
            pass

    # Each step consumes one token and returns True, or False when it needs more input.

    def _skip_space(self) -> int:
        buffer, pos = self._buffer, self._pos
        while pos < len(buffer) and buffer[pos] in " \t\r\n":
            pos += 1
        self._pos = pos
        return pos

    def _punctuation(self, final: bool, expected: str) -> str | None:
        pos = self._skip_space()
        if pos >= len(self._buffer):
            if final:
                raise ValueError(f"expected one of {expected!r}, got the end")
            return None
        char = self._buffer[pos]
        if char not in expected:
            raise ValueError(f"expected one of {expected!r} at character {pos}, got {char!r}")
        self._pos = pos + 1
        return char

    def _value(self, final: bool) -> tuple[bool, object]:
        pos = self._skip_space()
        try:
            value, end = self._json.raw_decode(self._buffer, pos)
        except json.JSONDecodeError:
            if final or len(self._buffer) - pos > self.MAX_VALUE:
                raise
            return False, None
        # a number at the end of the buffer may go on in the next chunk
        if end == len(self._buffer) and not final and not isinstance(value, dict | list | str):
            return False, None
        self._pos = end
        return True, value

    def _open_object(self, final: bool) -> bool:
        if self._punctuation(final, "{") is None:
            return False
        self._step = self._key_or_end
        return True

    def _key_or_end(self, final: bool) -> bool:
        pos = self._skip_space()
        if pos < len(self._buffer) and self._buffer[pos] == "}":
            self._pos = pos + 1
            self._step = self._done
            return True
        ready, key = self._value(final)
        if not ready:
            return False
        if not isinstance(key, str):
            raise ValueError("an object key that is not a string")
        self._key = key
        self._step = self._colon
        return True

    def _colon(self, final: bool) -> bool:
        if self._punctuation(final, ":") is None:
            return False
        self._step = self._projects_open if self._key == "projects" else self._member_value
        return True

    def _member_value(self, final: bool) -> bool:
        ready, value = self._value(final)
        if not ready:
            return False
        if self._key == "meta":
            if not isinstance(value, dict):
                raise ValueError("'meta' is not an object")
            self.meta = value
        self._step = self._comma_or_end
        return True

    def _comma_or_end(self, final: bool) -> bool:
        char = self._punctuation(final, ",}")
        if char is None:
            return False
        self._step = self._key_or_end if char == "," else self._done
        return True

    def _projects_open(self, final: bool) -> bool:
        if self._punctuation(final, "[") is None:
            return False
        self._step = self._project_or_end
        self._after_project = False
        return True

    def _project_or_end(self, final: bool) -> bool:
        """Decode a run of entries in one tight loop: 700,000 of them are the whole cost.

        Entries shaped as warehouse writes them (``{"name": "...", "_last-serial": n}``,
        a plain name) take one regular-expression match each; anything else goes
        through the JSON decoder, which gives the same answer, three times slower.
        """
        buffer, pos, sink = self._buffer, self._pos, self._sink
        fast, scan, size = _PLAIN_PROJECT.match, self._json.scan_once, len(buffer)
        count = self.projects
        while True:
            if self._after_project:
                pos = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
                if pos >= size:
                    break
                if buffer[pos] == "]":
                    self._pos, self.projects = pos + 1, count
                    self._step = self._comma_or_end
                    return True
                if buffer[pos] != ",":
                    raise ValueError(f"expected ',' or ']' after 'projects' entry {count}")
                pos += 1
                self._after_project = False
            match = fast(buffer, pos)
            if match is not None:
                sink(match.group(1), int(match.group(2)))
                count += 1
                pos = match.end()
                self._after_project = not match.group(3)
                continue
            pos = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
            if pos >= size:
                break
            if buffer[pos] == "]" and not count:
                self._pos = pos + 1
                self._step = self._comma_or_end
                return True
            try:
                project, end = scan(buffer, pos)
            except (StopIteration, json.JSONDecodeError) as exc:
                if final or size - pos > self.MAX_VALUE:
                    raise ValueError(f"malformed 'projects' entry {count + 1}") from exc
                break
            if not isinstance(project, dict):
                raise ValueError(f"'projects' entry {count + 1} is not an object")
            sink(project.get("name"), project.get("_last-serial"))
            count += 1
            pos, self._after_project = end, True
        self._pos, self.projects = pos, count
        if final:
            raise ValueError("the 'projects' list ends early")
        return False

    def _done(self, final: bool) -> bool:
        return False


_SPACE = re.compile(r"[ \t\r\n]*")
# One root entry as warehouse writes it, with what follows it: ',' (group 3) or ']' (left).
_PLAIN_PROJECT = re.compile(
    r'[ \t\r\n]*\{[ \t\r\n]*"name"[ \t\r\n]*:[ \t\r\n]*"([A-Za-z0-9._-]*)"[ \t\r\n]*,'
    r'[ \t\r\n]*"_last-serial"[ \t\r\n]*:[ \t\r\n]*(0|[1-9][0-9]*)[ \t\r\n]*\}'
    r"[ \t\r\n]*(?:(,)|(?=\]))"
)
# A held page's serial, either form: the HTML trailer or the JSON meta's
_SERIAL_IN_PAGE = re.compile(rb"<!--SERIAL (\d+)-->\s*$|\"_last-serial\"\s*:\s*(\d+)")
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


@dataclass(slots=True)
class FetchedPage:
    """A project page as PyPI served it; `body is None` means 404 (project gone)."""

    name: str
    body: bytes | None
    serial: int | None
    facts: PageFacts | None


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
    """PyPI's XML-RPC mirroring methods and Simple API pages over keep-alive connections.

    Pages, the hot path (700,000 of them in a first sync), go through libcurl:
    a run's in the fetch engine's loop (`page_loop`, ``sync.fetch_loop``), a
    single page through handles kept alive between calls (`fetch_page`,
    `transport.PagePool`); requests' per-request machinery was two thirds of a
    first sync's CPU. The few
    XML-RPC calls go through a `requests.Session` per thread (a Session is not
    thread-safe), made by `session_factory` so tests can inspect them.

    Both go through `environment` (proxy, CA bundle, ``.netrc``, User-Agent,
    timeouts and caps): the run reads it once and hands it to every client;
    without one, the process environment is read here, with `config`'s limits.
    """

    def __init__(
        self,
        base_url: str,
        config: ClientSettings,
        session_factory: Callable[[], requests.Session] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        environment: HttpEnvironment | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config
        self._session_factory = session_factory or self._default_session
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._sleep = sleep
        self._pacing = XmlRpcPacing(config.xmlrpc_interval, clock=clock, sleep=sleep)
        self.environment = environment if environment is not None else read_environment(config)
        self._pages: PagePool | None = None
        self.requests_made = 0
        self.not_modified = 0  # conditional page GETs answered 304 (revalidation)

    def _default_session(self) -> requests.Session:
        session = self.environment.session(self.base_url)
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
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

    @property
    def pages(self) -> PagePool:
        """The page connections, set up on the first page fetched."""
        pages = self._pages
        if pages is None:
            environment = self.environment
            with self._lock:
                if self._pages is None:
                    self._pages = PagePool(transport_settings(self.base_url, environment))
                pages = self._pages
        return pages

    def page_loop(self) -> PageLoop:
        """A new `page_transport.PageLoop` with the settings of this client's page GETs."""
        return PageLoop(transport_settings(self.base_url, self.environment))

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
            if self._pages is not None:
                self._pages.close()
                self._pages = None

    def count_request(self) -> None:
        """One more request to PyPI (the summary's ``requests``)."""
        with self._lock:
            self.requests_made += 1

    @property
    def _timeout(self) -> tuple[float, float]:
        return self.environment.limits.timeout

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
        self._pacing.take()
        body = xmlrpc.client.dumps(params, method, allow_none=True).encode()
        self.count_request()
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
            if response.status_code in XMLRPC_GONE_STATUSES:
                raise XmlRpcUnavailable(method, f"HTTP {response.status_code}")
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
            for chunk in iter_capped(response, self.environment.limits.max_listing_bytes, 1 << 20):
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
            if is_disabled_fault(fault.faultCode, text):
                raise XmlRpcUnavailable(method, f"fault {fault.faultCode}: {text[:120]}") from None
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
        """One GET of a project page (`page_request`) over the shared handles; for `read_page`.

        With `unless` (the bytes the mirror holds: a revalidation), the GET is
        conditional on warehouse's ETag of those bytes, so an unchanged page is
        a 304 without a body (`read_page` then hands the held bytes back).
        """
        self.count_request()
        extra = conditional_headers(unless) if unless is not None else ()
        try:
            return self.pages.get(*page_request(name, json_form), extra)
        except PageTransportError as exc:
            return exc

    def read_page(
        self,
        name: str,
        outcome: PageAnswer | PageTransportError,
        known: bytes | None,
        json_form: bool,
    ) -> FetchedPage:
        """What one GET of `page_request(name, json_form)` brought, checked: the page, or a
        404's None body; raises Transient, NotASimplePage or UpstreamError.

        Whoever made the request (`fetch_page` here, a `page_transport.PageLoop`
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
        found = _SERIAL_IN_PAGE.search(known)
        if found is None:
            raise NotASimplePage(name, "HTTP 304 without X-PyPI-Last-Serial")
        log.debug("page %s: HTTP 304 without X-PyPI-Last-Serial", name)
        return int(found.group(1) or found.group(2))

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
        try:
            response = self.session.get(
                url, headers={"Accept": JSON_TYPE}, timeout=self._timeout, stream=True
            )
        except requests.RequestException as exc:
            raise Transient(f"JSON root /simple/: connection failed: {exc}") from exc
        with response:
            check_status(response, "JSON root /simple/")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type != JSON_TYPE:
                raise UpstreamError(
                    f"JSON root {url}: Content-Type {content_type or 'missing'}, not "
                    f"{JSON_TYPE}: the index does not serve PEP 691 JSON"
                )
            parser = JsonRootParser(sink)
            try:
                # the listing's cap, whichever endpoint serves it
                cap = self.environment.limits.max_listing_bytes
                for chunk in iter_capped(response, cap, 1 << 20):
                    parser.feed(chunk)
                parser.close()
            except BodyTooLarge as exc:
                raise UpstreamError(f"JSON root {url}: answer {exc}; refused") from None
            except requests.RequestException as exc:
                raise Transient(f"JSON root /simple/: answer cut off: {exc}") from exc
            except ValueError as exc:  # UnicodeDecodeError included
                raise Transient(f"JSON root /simple/: malformed answer ({exc})") from None
            header = response.headers.get("X-PyPI-Last-Serial", "")
        check_api_version("JSON root /simple/", parser.meta)
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


def check_status(response: requests.Response, what: str) -> None:
    """`check_status_of` a requests answer (the XML-RPC calls)."""
    check_status_of(response.status_code, response.headers, what, response.url)


def check_status_of(status: int, headers: Headers, what: str, url: str | None) -> None:
    """Turn a non-200 answer into Transient (429, 5xx) or UpstreamError (anything else)."""
    if status == 200:
        return
    if status == 429 or status >= 500:
        raise Transient(f"{what}: HTTP {status}", retry_after=retry_after_of(status, headers))
    raise UpstreamError(f"{what}: unexpected HTTP {status} from {url}")
