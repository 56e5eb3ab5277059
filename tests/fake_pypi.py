"""A warehouse-like stand-in for PyPI on 127.0.0.1, for the tests, the README demo and benchmarks.

Why a stand-in: the mirror must never be tested against pypi.org, and a stand-in can do on
demand, a set number of times, what the real index does only on bad days (rate limits, stale
CDN pages, truncated bodies, garbage answers).

What it models (warehouse's ``warehouse/legacy/api/xmlrpc/views.py``, ``warehouse/api/simple.py``):

* A journal of rows ``(name, version, timestamp, action, serial)``. Every row takes the next
  global serial and becomes its project's ``last_serial``; each mutator writes exactly the rows
  current warehouse writes (``create``, ``new release``, ``add py3 file …``, ``remove file …``,
  ``remove release``, ``remove project``, ``yank release``, ``unyank release``,
  ``project quarantined``, ``project quarantine cleared``, ``add Owner …``; legacy
  ``rename from …``). Archiving writes none, as in warehouse.
* XML-RPC at ``/pypi``, ``/pypi/`` and ``/RPC2``: ``changelog_last_serial()`` (``None`` while the
  journal is empty, as warehouse's ``max(id)``), ``changelog_since_serial(since)`` (at most
  ``page_cap`` rows a call) and ``list_packages_with_serial()`` (every project, quarantined
  ones too; `serve_cached_listing` models warehouse's stale cache). The removed ``changelog()``
  answers warehouse's fault -32500 ``ValueError: The changelog method has been deprecated, use
  changelog_since_serial instead.``; any other method pyramid_rpc's -32601 ``server error;
  requested method not found``; wrong arguments -32602; an unparsable body -32700.
  `switch_off_xmlrpc` models the day PyPI retires it (bandersnatch 8 already lives without it):
  the endpoint answers 404, 405 or 410, or every mirroring method a -32500 fault saying it
  has been disabled.
* The Simple API (PEP 503/691/700/792): ``/simple/`` and ``/simple/<normalized>/`` with content
  negotiation (WebOb's rule as warehouse uses it: highest q wins, ties go to ``text/html``, then
  ``application/vnd.pypi.simple.v1+html``, then ``+json``; nothing acceptable gives HTML),
  ``Vary: Accept, Accept-Encoding``, gzip when the client accepts it (warehouse's compression
  tween, on every answer), ``X-PyPI-Last-Serial`` and warehouse's CORS headers; 301 to the
  normalized URL and 404 carry no serial. The JSON root (``Accept:
  application/vnd.pypi.simple.v1+json``) is warehouse's ``{"meta": {"_last-serial",
  "api-version"}, "projects": [{"_last-serial", "name"}]}`` and, like the HTML root, leaves
  quarantined projects out.
* Enough of the JSON API (``/pypi/<name>/json``) for bandersnatch 8.2 with
  ``release-files = false``.

Page bytes. The HTML is what warehouse's templates render with its Jinja settings
(``lstrip_blocks`` and ``trim_blocks``), as pinned byte for byte by warehouse's PEP 833 snapshot
test ``tests/functional/api/test_simple.py::test_pep833_simple_api_detail_html_frozen``, so it
differs in whitespace from the tidy template one might write from memory::

    <!DOCTYPE html>
    <html lang="en">
      <head>
        <meta name="pypi:repository-version" content="1.4">
    <meta name="pypi:project-status" content="active">    <title>Links for ex</title>
      </head>
      <body>
        <h1>Links for ex</h1>
    <a href="https://files.pythonhosted.org/…/ex-1.0.tar.gz#sha256=…" >ex-1.0.tar.gz</a><br />
    </body>
    </html>
    <!--SERIAL 7-->

(the status ``<meta>`` starts its line and runs into ``<title>``; each ``<a>`` starts its line;
an ``<a>`` with no optional attribute keeps a space before ``>``; no newline after the
``SERIAL`` comment). Attribute values are escaped as Jinja's autoescape does (``&gt;``,
``&#34;``). The root page lists ``<a href="/simple/<normalized>/">DisplayName</a>`` one a line,
sorted by normalized name, quarantined projects left out. Files are sorted by (parsed version,
filename), versions PEP 440 cannot parse first (``packaging_legacy``); a file with a provenance
gets `` data-provenance="…"`` (two spaces after the href when it has no core metadata). JSON is
warehouse's ``json-with-newline`` (sorted keys, compact, UTF-8 as is, a newline), so a page
begins ``{"files":[`` with ``meta`` after the files; ``upload-time`` has microseconds (none
when 0, as ``isoformat``), ``provenance`` a URL or null, ``versions`` only those with files.
``tests/test_fake_pypi.py`` holds all this to bytes warehouse's own code rendered
(``tests/warehouse_fixture.py``).

Speed. Each project's HTML is rendered once when it changes and kept as bytes (its previous
rendering too, for the ``stale`` fault); the PEP 691 JSON and the JSON API body are rendered on
their first request and kept until the next change; the root page is rendered on the first
request after a change. Sockets get ``TCP_NODELAY`` (without it keep-alive answers stall about
40 ms each). Measured on the 2-CPU development machine, server in its own process, keep-alive
clients fetching distinct project pages: a threaded ``requests.Session`` loop gets about
1,400 pages a second (1 or 4 threads alike: the client's CPU is the limit, not the server);
a lighter ``http.client`` loop gets about 5,700 (1 thread) to 10,000 (4 threads).
``python -m tests.fake_pypi bench`` prints this machine's figures. ``populate(100_000)`` takes
about 5 s and 1.3 GB (about a million files, 440 MB of HTML).

Run on its own: ``python -m tests.fake_pypi --projects 1000 --port 8080`` serves a synthetic
index until Ctrl-C (the URL is the one line on stdout); ``python -m tests.fake_pypi churn --url
http://127.0.0.1:8080 --events 20`` changes it through ``POST /_fake/churn?events=N``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import functools
import gc
import gzip
import hashlib
import io
import itertools
import json
import logging
import math
import random
import re
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

API_VERSION = "1.4"
FILES_URL = "https://files.pythonhosted.org/packages"
MIME_HTML = "text/html"
MIME_V1_HTML = "application/vnd.pypi.simple.v1+html"
MIME_V1_JSON = "application/vnd.pypi.simple.v1+json"
# Warehouse's offers, in its order: the order breaks ties between equal q-values.
SIMPLE_OFFERS = (MIME_HTML, MIME_V1_HTML, MIME_V1_JSON)
# Pyramid adds a charset to text/* types only.
CONTENT_TYPES = {
    MIME_HTML: "text/html; charset=UTF-8",
    MIME_V1_HTML: MIME_V1_HTML,
    MIME_V1_JSON: MIME_V1_JSON,
}
XMLRPC_CONTENT_TYPE = "text/xml; charset=UTF-8"
XMLRPC_PATHS = frozenset({"/pypi", "/pypi/", "/RPC2"})
DEFAULT_PAGE_CAP = 50_000
MAX_REQUEST_BODY = 1 << 20

ACTIVE = "active"
ARCHIVED = "archived"
QUARANTINED = "quarantined"

RATE_LIMIT_MESSAGE = (
    "HTTPTooManyRequests: The action could not be performed because there were too many "
    "requests by the client. Limit may reset in {seconds} seconds."
)
CHANGELOG_REMOVED = (
    "ValueError: The changelog method has been deprecated, use changelog_since_serial instead."
)
XMLRPC_DISABLED = (
    "RuntimeError: This API has been disabled. Use the JSON Simple API (PEP 691) at /simple/ "
    "instead."
)
# How XML-RPC can be switched off: an HTTP status for the endpoint, or a fault for each call.
XMLRPC_OFF_MODES = ("404", "405", "410", "disabled")
# warehouse.utils.cors._CORS_HEADERS, sent with every Simple API answer
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    (
        "Access-Control-Allow-Headers",
        "Content-Type, If-Match, If-Modified-Since, If-None-Match, If-Unmodified-Since",
    ),
    ("Access-Control-Allow-Methods", "GET"),
    ("Access-Control-Max-Age", "86400"),
    ("Access-Control-Expose-Headers", "X-PyPI-Last-Serial"),
)

# --- names, escaping, versions -------------------------------------------------------------

_SEPARATOR_RUNS = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """PEP 503 normalization: the key every page is stored and served under."""
    return _SEPARATOR_RUNS.sub("-", name).lower()


_HTML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"})


_NEEDS_ESCAPE = re.compile(r"[&<>\"']")


def escape(text: str) -> str:
    """Escape as Jinja's autoescape (markupsafe) does, so attribute bytes match warehouse's."""
    if _NEEDS_ESCAPE.search(text) is None:
        return text  # the common case, and translate() is slow
    return text.translate(_HTML_ESCAPES)


_LEGACY_PART = re.compile(r"(\d+|[a-z]+|\.|-)")
_LEGACY_REPLACEMENTS = {"pre": "c", "preview": "c", "-": "final-", "rc": "c", "dev": "@"}


def _legacy_parts(version: str) -> tuple[str, ...]:
    """The order of a version PEP 440 cannot parse, as ``packaging_legacy``'s LegacyVersion
    (setuptools' old rule): numbers zero-padded, words starred, trailing zeros dropped."""
    tokens = [_LEGACY_REPLACEMENTS.get(t, t) for t in _LEGACY_PART.split(version.lower())]
    parts: list[str] = []
    for token in [*tokens, None]:
        if token is None:
            part = "*final"
        elif not token or token == ".":
            continue
        else:
            part = token.zfill(8) if token[:1].isdigit() else "*" + token
        if part.startswith("*"):
            if part < "*final":
                while parts and parts[-1] == "*final-":
                    parts.pop()
            while parts and parts[-1] == "00000000":
                parts.pop()
        parts.append(part)
    return tuple(parts)


@functools.lru_cache(maxsize=1 << 16)
def version_key(version: str) -> tuple[int, Any]:
    """Warehouse's order of versions (``packaging_legacy.version.parse``): every version PEP
    440 cannot parse first, in the legacy order, then PEP 440's order (``1.0 == 1.0.0``)."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, _legacy_parts(version))


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One row of warehouse's journal, as ``changelog_since_serial`` returns it."""

    name: str
    version: str | None
    timestamp: int
    action: str
    serial: int

    def as_tuple(self) -> tuple[str, str | None, int, str, int]:
        """The wire form (xmlrpc.client cannot marshal dataclasses)."""
        return (self.name, self.version, self.timestamp, self.action, self.serial)


@dataclass(slots=True)
class DistFile:
    """One uploaded file. Never mutated, so an old page rendering can keep referring to it
    (not ``frozen``: a frozen dataclass costs a microsecond more to build, times a million)."""

    filename: str
    url: str
    sha256: str
    size: int
    python_version: str
    core_metadata_sha256: str | None
    upload_time: int
    upload_micros: int = 0  # the upload time's microseconds: warehouse's are the database's
    has_provenance: bool = False  # a PEP 740 provenance (attestations uploaded with it)

    @property
    def packagetype(self) -> str:
        if self.filename.endswith(".whl"):
            return "bdist_wheel"
        if self.filename.endswith(".egg"):
            return "bdist_egg"
        return "sdist"

    @property
    def blake2b_256(self) -> str:
        """Warehouse stores files under their blake2b digest split 2/2/60: read it off the URL."""
        return "".join(self.url.rsplit("/", 4)[1:4])


@dataclass(slots=True)
class Release:
    version: str
    requires_python: str | None = None
    yanked: bool = False
    yanked_reason: str = ""
    files: list[DistFile] = field(default_factory=list)
    # Only grows: a file name once used is never generated again (warehouse refuses reuse).
    next_file_index: int = 0


@dataclass(frozen=True, slots=True)
class ReleaseView:
    """A release as one rendering saw it (yank state captured, files frozen)."""

    version: str
    requires_python: str | None
    yanked: bool
    yanked_reason: str
    files: tuple[DistFile, ...]


@dataclass(frozen=True, slots=True)
class PageView:
    """Everything a project page is rendered from, frozen at one serial.

    ``releases`` in version order; ``files`` every file with its release, in warehouse's
    page order: by (parsed version, filename), so two releases that compare equal
    (``1.0``, ``1.0.0``) interleave their files.
    """

    name: str
    normalized: str
    status: str
    serial: int
    releases: tuple[ReleaseView, ...]
    files: tuple[tuple[ReleaseView, DistFile], ...] = ()


@dataclass(slots=True)
class Rendering:
    """A project's page at one serial: HTML rendered eagerly, the JSON forms on first request."""

    view: PageView
    html: bytes
    simple_json: bytes | None = None
    api_json: bytes | None = None


@dataclass(slots=True)
class Project:
    name: str
    normalized: str
    last_serial: int = 0
    status: str = ACTIVE
    releases: dict[str, Release] = field(default_factory=dict)
    version_counter: int = 0
    current: Rendering | None = None
    previous: Rendering | None = None


@dataclass(frozen=True, slots=True)
class ListingEntry:
    name: str
    normalized: str
    serial: int


@dataclass(slots=True)
class RootRendering:
    generation: int
    serial: int
    entries: tuple[ListingEntry, ...]
    html: bytes
    json: bytes | None = None
    xmlrpc_listing: bytes | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it; ``status`` is 0 when the connection was reset.

    ``kind`` is ``xmlrpc``, ``root``, ``page``, ``redirect``, ``json_api``, ``control``,
    ``purge``, ``file`` (an `add_wheel` file) or ``other``; ``fault`` names the injected
    fault that fired, if any; ``gzipped`` whether the body went out gzip-encoded.
    """

    method: str
    path: str
    xmlrpc_method: str | None
    status: int
    kind: str
    fault: str | None = None
    gzipped: bool = False


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    """One mutation ``churn`` applied; ``serial`` is the last it wrote (None: wrote no row)."""

    action: str
    name: str
    version: str | None
    serial: int | None


@dataclass(frozen=True, slots=True)
class ChurnResult:
    """What ``churn`` did: its events, and which normalized names now serve a page or a 404."""

    from_serial: int
    to_serial: int
    events: tuple[ChurnEvent, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_serial": self.from_serial,
            "to_serial": self.to_serial,
            "events": [asdict(event) for event in self.events],
            "changed": list(self.changed),
            "removed": list(self.removed),
        }


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request reduced to what routing needs, so `FakePyPI.respond` needs no socket."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    accept: str | None = None
    body: bytes = b""
    accept_encoding: str | None = None
    if_none_match: str | None = None


@dataclass(slots=True)
class Reply:
    """What to send. ``reset``, ``truncate``, ``delay`` and ``pad_to`` are fault effects."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0
    reset: bool = False
    truncate: bool = False
    pad_to: int = 0


# --- faults --------------------------------------------------------------------------------

# kind -> the keyword parameters it takes
FAULT_PARAMS: dict[str, frozenset[str]] = {
    "status": frozenset({"code", "retry_after"}),
    "rate_limit": frozenset({"seconds"}),
    "xmlrpc_rate_limit": frozenset({"seconds"}),
    "xmlrpc_fault": frozenset({"code", "string"}),
    "xmlrpc_malformed": frozenset(),
    "reset": frozenset(),
    "slow": frozenset({"seconds"}),
    "truncate": frozenset(),
    "stale": frozenset(),
    "not_simple": frozenset(),
    "json_instead": frozenset(),
    "empty": frozenset(),
    "oversized": frozenset({"size"}),
    "not_utf8": frozenset(),
    "backwards": frozenset(),
}
FAULT_KINDS = frozenset(FAULT_PARAMS)
_XMLRPC_ONLY_FAULTS = frozenset({"xmlrpc_rate_limit", "xmlrpc_fault", "xmlrpc_malformed"})
_PAGE_ONLY_FAULTS = frozenset({"stale", "not_simple", "json_instead"})
XMLRPC_METHODS = frozenset(
    {"changelog_last_serial", "changelog_since_serial", "list_packages_with_serial", "changelog"}
)


@dataclass(slots=True)
class ArmedFault:
    kind: str
    remaining: int
    params: dict[str, Any]


def _check_fault(target: str, kind: str, times: int, params: dict[str, Any]) -> None:
    """Refuse a fault that could never fire, so a typo fails the test that made it."""
    if kind not in FAULT_PARAMS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
    unknown = set(params) - FAULT_PARAMS[kind]
    if unknown:
        raise TypeError(f"fault {kind!r} takes no parameter(s) {sorted(unknown)}")
    if times < 1:
        raise ValueError("times must be at least 1")
    is_method = target in XMLRPC_METHODS
    if kind in _XMLRPC_ONLY_FAULTS and not is_method:
        raise ValueError(f"fault {kind!r} needs an XML-RPC method as target, not {target!r}")
    if kind == "backwards" and target != "changelog_since_serial":
        raise ValueError("fault 'backwards' only applies to changelog_since_serial")
    if kind in _PAGE_ONLY_FAULTS and is_method:
        raise ValueError(f"fault {kind!r} applies to pages, not to XML-RPC method {target!r}")


# --- rendering (pure) ----------------------------------------------------------------------

_PROJECT_HEAD = (
    "<!DOCTYPE html>\n"
    '<html lang="en">\n'
    "  <head>\n"
    f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
    '<meta name="pypi:project-status" content="{status}">'
    "    <title>Links for {name}</title>\n"
    "  </head>\n"
    "  <body>\n"
    "    <h1>Links for {name}</h1>\n"
)
_ROOT_HEAD = (
    "<!DOCTYPE html>\n"
    '<html lang="en">\n'
    "  <head>\n"
    f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
    "    <title>Simple index</title>\n"
    "  </head>\n"
    "  <body>\n"
)


def warehouse_json(document: Any) -> bytes:
    """Warehouse's ``json-with-newline`` renderer (``warehouse/config.py``): sorted keys,
    compact separators, UTF-8 as is, then a newline. So a project page begins
    ``{"files":[`` and its ``meta`` comes after the files."""
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return (text + "\n").encode()


# pyramid's quote_path_segment: what route_url leaves unquoted in a path segment
_PATH_SEGMENT_SAFE = "~!$&'()*+,;=:@"


def _path_segment(text: str) -> str:
    if _URL_SAFE.fullmatch(text):
        return text  # the common case, and quote() is slow
    return urllib.parse.quote(text, safe=_PATH_SEGMENT_SAFE)


def provenance_url(normalized: str, version: str, filename: str) -> str:
    """Warehouse's ``integrity.provenance`` route (PEP 740) for one file."""
    segments = "/".join(map(_path_segment, (normalized, version, filename)))
    return f"https://pypi.org/integrity/{segments}/provenance"


def render_project_html(view: PageView) -> bytes:
    """A project page exactly as warehouse's detail template renders it (see module doc).

    Attributes as the template writes them: ``data-requires-python="…" `` and
    ``data-yanked="…" `` each with a space after, the two metadata attributes with none,
    then `` data-provenance="…"`` with one before (so two spaces follow the href when
    a file has a provenance and no core metadata). ``DistFile.url`` is built
    percent-quoted, so it needs no escaping.
    """
    lines = [_PROJECT_HEAD.format(status=escape(view.status), name=escape(view.normalized))]
    shared_of: dict[int, str] = {}  # a release's attributes, built once (populate: a million)
    for release, dist in view.files:
        shared = shared_of.get(id(release))
        if shared is None:
            shared = ""
            if release.requires_python:
                shared += f'data-requires-python="{escape(release.requires_python)}" '
            if release.yanked:
                shared += f'data-yanked="{escape(release.yanked_reason)}" '
            shared_of[id(release)] = shared
        metadata = dist.core_metadata_sha256
        attributes = shared
        if metadata:
            attributes += (
                f'data-dist-info-metadata="sha256={metadata}" '
                f'data-core-metadata="sha256={metadata}"'
            )
        if dist.has_provenance:
            url = provenance_url(view.normalized, release.version, dist.filename)
            attributes += f' data-provenance="{escape(url)}"'
        lines.append(
            f'<a href="{dist.url}#sha256={dist.sha256}" {attributes}>'
            f"{escape(dist.filename)}</a><br />\n"
        )
    lines.append(f"</body>\n</html>\n<!--SERIAL {view.serial}-->")
    return "".join(lines).encode()


def _iso(timestamp: int, micros: int | None = None) -> str:
    """``datetime.isoformat() + "Z"`` as warehouse writes it (microseconds only when not 0);
    ``micros`` None: ``strftime`` to the second, the legacy JSON API's ``upload_time``."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    if micros is None:
        return text
    return text + (f".{micros:06d}Z" if micros else "Z")


def render_project_json(view: PageView) -> bytes:
    """The PEP 691 form of a project page (``application/vnd.pypi.simple.v1+json``), as
    warehouse's ``_simple_detail`` builds it: ``versions`` only those with files."""
    files = []
    for release, dist in view.files:
        yanked: bool | str = release.yanked_reason if release.yanked else False
        if release.yanked and not release.yanked_reason:
            yanked = True
        metadata: dict[str, str] | bool = (
            {"sha256": dist.core_metadata_sha256} if dist.core_metadata_sha256 else False
        )
        files.append(
            {
                "filename": dist.filename,
                "url": dist.url,
                "hashes": {"sha256": dist.sha256},
                "requires-python": release.requires_python or None,
                "size": dist.size,
                "upload-time": _iso(dist.upload_time, dist.upload_micros),
                "yanked": yanked,
                "data-dist-info-metadata": metadata,
                "core-metadata": metadata,
                "provenance": (
                    provenance_url(view.normalized, release.version, dist.filename)
                    if dist.has_provenance
                    else None
                ),
            }
        )
    with_files = {release.version for release, _ in view.files}
    document = {
        "meta": {"api-version": API_VERSION, "_last-serial": view.serial},
        "name": view.normalized,
        "project-status": {"status": view.status},
        "versions": sorted(with_files, key=lambda version: (version_key(version), version)),
        "files": files,
    }
    return warehouse_json(document)


def _api_file(release: ReleaseView, dist: DistFile) -> dict[str, Any]:
    return {
        "comment_text": "",
        "digests": {
            "blake2b_256": dist.blake2b_256,
            "md5": dist.sha256[:32],
            "sha256": dist.sha256,
        },
        "downloads": -1,
        "filename": dist.filename,
        "has_sig": False,
        "md5_digest": dist.sha256[:32],
        "packagetype": dist.packagetype,
        "python_version": dist.python_version,
        "requires_python": release.requires_python,
        "size": dist.size,
        "upload_time": _iso(dist.upload_time),
        "upload_time_iso_8601": _iso(dist.upload_time, dist.upload_micros),
        "url": dist.url,
        "yanked": release.yanked,
        "yanked_reason": release.yanked_reason or None,
    }


def render_api_json(view: PageView) -> bytes | None:
    """The legacy JSON API (``/pypi/<name>/json``) body, or None where warehouse answers 404."""
    if view.status == QUARANTINED or not view.releases:
        return None
    candidates = [release for release in view.releases if not release.yanked] or view.releases
    latest = candidates[-1]  # releases are sorted by version
    info = {
        "author": "",
        "author_email": "",
        "classifiers": [],
        "description": "",
        "description_content_type": None,
        "home_page": "",
        "keywords": "",
        "license": None,
        "maintainer": "",
        "maintainer_email": "",
        "name": view.name,
        "package_url": f"https://pypi.org/project/{view.name}/",
        "platform": None,
        "project_url": f"https://pypi.org/project/{view.name}/",
        "project_urls": None,
        "release_url": f"https://pypi.org/project/{view.name}/{latest.version}/",
        "requires_dist": None,
        "requires_python": latest.requires_python or "",
        "summary": "",
        "version": latest.version,
        "yanked": latest.yanked,
        "yanked_reason": latest.yanked_reason or None,
    }
    document = {
        "info": info,
        "last_serial": view.serial,
        "releases": {
            release.version: [_api_file(release, dist) for dist in release.files]
            for release in view.releases
        },
        "urls": [_api_file(latest, dist) for dist in latest.files],
        "vulnerabilities": [],
    }
    return warehouse_json(document)


def render_root_html(entries: Sequence[ListingEntry]) -> bytes:
    lines = [
        f'<a href="/simple/{escape(entry.normalized)}/">{escape(entry.name)}</a>\n'
        for entry in entries
    ]
    return (_ROOT_HEAD + "".join(lines) + "</body>\n</html>").encode()


def render_root_json(entries: Sequence[ListingEntry], serial: int) -> bytes:
    document = {
        "meta": {"api-version": API_VERSION, "_last-serial": serial},
        "projects": [{"name": entry.name, "_last-serial": entry.serial} for entry in entries],
    }
    return warehouse_json(document)


def negotiate(accept: str | None) -> str:
    """Choose the Simple API media type the way warehouse does (WebOb ``acceptable_offers``).

    The most specific matching range gives each offer its q; the highest q wins and ties go
    to the earlier offer; no header, or nothing acceptable, gives ``text/html``.
    """
    if not accept:
        return MIME_HTML
    ranges: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append((media.lower(), quality))
    best, best_quality = MIME_HTML, 0.0
    for offer in SIMPLE_OFFERS:
        quality = _offer_quality(offer, ranges)
        if quality > best_quality:
            best, best_quality = offer, quality
    return best


def _offer_quality(offer: str, ranges: Sequence[tuple[str, float]]) -> float:
    major = offer.split("/", 1)[0]
    best_specificity, quality = -1, 0.0
    for media, media_quality in ranges:
        if media == offer:
            specificity = 2
        elif media == f"{major}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, quality = specificity, media_quality
    return quality


# --- synthetic names and files -------------------------------------------------------------

_WORDS = (
    "alpha", "beacon", "cider", "delta", "ember", "flask", "garnet", "harbor", "iris", "jade",
    "kite", "lumen", "maple", "nectar", "orbit", "pixel", "quartz", "raven", "sierra", "tango",
    "umber", "vortex", "willow", "xenon", "yarrow", "zephyr", "async", "py", "django", "data",
    "json", "http", "cloud", "tools", "utils", "lib", "client", "core", "plugin", "sdk",
)  # fmt: skip
_SEPARATORS = ("-", "-", "-", "_", "_", ".", "", "", "--", "_-")
_REQUIRES_PYTHON = (None, None, None, ">=3.8", ">=3.9", ">=3.7", "<4,>=3.8", "!=3.0.*,>=2.7")
_YANK_REASONS = ("", "Broken build", 'Security: see "CVE-0000-1234" & <advisory>')
_WHEEL_TAGS = (
    "py3-none-any",
    *(
        f"cp3{minor}-cp3{minor}-{platform}"
        for minor in range(8, 14)
        for platform in (
            "manylinux_2_17_x86_64.manylinux2014_x86_64",
            "manylinux_2_17_aarch64.manylinux2014_aarch64",
            "musllinux_1_2_x86_64",
            "macosx_10_9_x86_64",
            "macosx_11_0_arm64",
            "win_amd64",
            "win32",
        )
    ),
)


def synthetic_name(rng: random.Random, index: int) -> str:
    """A display name mixing cases and separators; the trailing index keeps it unique."""
    first, second = rng.choice(_WORDS), rng.choice(_WORDS)
    separator = rng.choice(_SEPARATORS)
    style = rng.random()
    if style < 0.6:
        return f"{first}{separator}{second}{index}"
    if style < 0.85:
        return f"{first.capitalize()}{separator}{second}{index}"
    return f"{first.upper()}{separator}{second.capitalize()}{index}"


def synthetic_file_count(rng: random.Random, max_files: int) -> int:
    """Files on one page: mostly 1-20, a long tail to thousands (a page of a few MB)."""
    roll = rng.random()
    if roll < 0.68:
        count = rng.randint(1, 4)
    elif roll < 0.955:
        count = rng.randint(5, 20)
    elif roll < 0.9955:
        count = rng.randint(21, 80)
    elif roll < 0.9997:
        count = rng.randint(81, 600)
    else:
        count = rng.randint(601, 8000)
    return max(1, min(count, max_files))


def synthetic_version(index: int) -> str:
    return f"{1 + index // 100}.{(index // 10) % 10}.{index % 10}"


def generated_filename(normalized: str, version: str, index: int) -> tuple[str, str]:
    """The ``index``-th file name of a release and its python_version (``source`` for sdists)."""
    dist = normalized.replace("-", "_")
    if index == 0:
        return f"{dist}-{version}.tar.gz", "source"
    tag = _WHEEL_TAGS[(index - 1) % len(_WHEEL_TAGS)]
    rounds = (index - 1) // len(_WHEEL_TAGS)
    build = f"-{rounds}" if rounds else ""
    return f"{dist}-{version}{build}-{tag}.whl", tag.split("-", 1)[0]


def python_version_of(filename: str) -> str:
    if filename.endswith(".whl") and filename.count("-") >= 4:
        return filename.rsplit("-", 3)[1]
    return "source"


_URL_SAFE = re.compile(r"[A-Za-z0-9_.+~-]+")


def make_dist_file(
    normalized: str,
    filename: str,
    python_version: str,
    uploaded: int,
    *,
    url_safe: bool = False,
    provenance: bool | None = None,
) -> DistFile:
    """A file with made-up but deterministic digests: the same name gives the same page bytes.

    One 64-byte blake2b of the name yields both the "sha256" and the storage path (nothing
    here has contents to hash; populate makes a million of these), and the upload time's
    microseconds and whether the file has a provenance (`provenance` None: about a third
    do, by the digest).
    """
    digest = hashlib.blake2b(f"{normalized}/{filename}".encode(), digest_size=64).hexdigest()
    sha256, path = digest[:64], digest[64:]
    metadata = sha256[::-1] if filename.endswith(".whl") else None
    if url_safe or _URL_SAFE.fullmatch(filename):
        quoted = filename
    else:
        quoted = urllib.parse.quote(filename, safe="")
    url = f"{FILES_URL}/{path[:2]}/{path[2:4]}/{path[4:]}/{quoted}"
    size = 1_000 + int(sha256[:6], 16) % 5_000_000
    micros = int(sha256[6:11], 16) % 1_000_000
    if provenance is None:
        provenance = sha256[11] in "012345"
    return DistFile(
        filename, url, sha256, size, python_version, metadata, uploaded, micros, provenance
    )


@dataclass(frozen=True, slots=True)
class BuiltWheel:
    """A real, installable wheel: its file name, bytes and ``.dist-info/METADATA`` bytes."""

    filename: str
    content: bytes
    metadata: bytes


def _record_hash(data: bytes) -> str:
    """A RECORD line's hash: urlsafe base64 of the SHA-256, no padding (the wheel spec)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def build_wheel(name: str, version: str, requires_python: str | None = None) -> BuiltWheel:
    """The smallest valid pure-Python wheel (binary distribution format: METADATA, WHEEL,
    RECORD) for ``name`` ``version``, with one module that records its version.

    Deterministic (fixed zip timestamps), so the same name and version give the same bytes
    and the same ``#sha256=`` on the page. pip and uv install it for real.
    """
    dist = normalize(name).replace("-", "_")
    filename = f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        metadata += f"Requires-Python: {requires_python}\n"
    members = {
        f"{dist}/__init__.py": f'VERSION = "{version}"\n'.encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests.fake_pypi\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in members.items())
    members[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in members.items():
            member = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            member.external_attr = 0o644 << 16  # rw-r--r--, as build backends write them
            archive.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
    return BuiltWheel(filename, buffer.getvalue(), members[f"{info}/METADATA"])


# --- the index -----------------------------------------------------------------------------


class FakePyPI:
    """An in-memory warehouse with an HTTP face on 127.0.0.1; see the module docstring.

    All state sits behind one re-entrant lock. Mutators return the last serial they wrote and
    raise KeyError for an unknown project or release, ValueError for a name or file that exists.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        page_cap: int = DEFAULT_PAGE_CAP,
        clock: Callable[[], float] = time.time,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
        log_requests: bool = True,
    ) -> None:
        if page_cap < 1:
            raise ValueError("page_cap must be at least 1")
        self.host = host
        self.page_cap = page_cap
        self.log_requests = log_requests
        self._requested_port = port
        self._clock = clock
        self._certfile = certfile
        self._keyfile = keyfile
        self._lock = threading.RLock()
        self._projects: dict[str, Project] = {}
        self._journal: list[JournalRow] = []
        self._raw_listing: dict[str, int] = {}
        self._files: dict[str, bytes] = {}  # URL path -> body, for add_wheel's files
        self._xmlrpc_off: str | None = None  # one of XMLRPC_OFF_MODES while switched off
        self._repository_version: str | None = API_VERSION  # in the HTML pages' meta
        self._cached_listing: dict[str, int] | None = None  # see `serve_cached_listing`
        self._generation = 0
        self._root: RootRendering | None = None
        self._root_previous: RootRendering | None = None
        self._page_faults: dict[str, deque[ArmedFault]] = {}
        self._xmlrpc_faults: dict[str, deque[ArmedFault]] = {}
        self._log: list[RequestRecord] = []
        self._pages_served = 0
        self._synthetic_count = 0
        self._removed_names: list[str] = []  # churn re-creates some, as happens on PyPI
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakePyPI:
        if self._server is not None:
            return self
        context = None
        if self._certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self._certfile), str(self._keyfile or self._certfile))
        self._server = _Server((self.host, self._requested_port), self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # how long stop() waits for the loop
            name="fake-pypi",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection, so no socket outlives the test."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakePyPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakePyPI is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._certfile else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # --- reading state ---------------------------------------------------------------------

    @property
    def last_serial(self) -> int:
        """The newest journal serial (0 while the journal is empty)."""
        with self._lock:
            return len(self._journal)

    @property
    def journal(self) -> list[JournalRow]:
        with self._lock:
            return list(self._journal)

    def changelog_since(self, since: int) -> list[JournalRow]:
        """What ``changelog_since_serial(since)`` returns: ascending, at most ``page_cap``."""
        with self._lock:
            start = max(since, 0)
            return self._journal[start : start + self.page_cap]

    def project_names(self) -> list[str]:
        """Normalized names of every project that has a page (quarantined ones included)."""
        with self._lock:
            return sorted(self._projects)

    def has_project(self, name: str) -> bool:
        with self._lock:
            return normalize(name) in self._projects

    def project_serial(self, name: str) -> int:
        with self._lock:
            return self._project(name).last_serial

    def project_status(self, name: str) -> str:
        with self._lock:
            return self._project(name).status

    def display_name(self, name: str) -> str:
        with self._lock:
            return self._project(name).name

    def filenames(self, name: str) -> list[str]:
        """File names on the project's page, in page order."""
        with self._lock:
            view = self._rendering(name).view
        return [dist.filename for _, dist in view.files]

    def page(self, name: str, *, json_form: bool = False) -> bytes:
        """The bytes ``/simple/<name>/`` serves now (HTML, or PEP 691 JSON)."""
        with self._lock:
            rendering = self._rendering(name)
        return self._simple_json(rendering) if json_form else rendering.html

    def root_page(self, *, json_form: bool = False) -> bytes:
        root = self._current_root()
        return self._root_json(root) if json_form else root.html

    def listing(self) -> dict[str, int]:
        """What ``list_packages_with_serial`` returns: ``{display_name: last_serial}`` of every
        project, quarantined ones included (only the ``/simple/`` roots leave them out)."""
        with self._lock:
            return self._xmlrpc_listing()

    # --- request log -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    @property
    def pages_served(self) -> int:
        """Project pages answered 200 since start (or the last `reset_log`)."""
        with self._lock:
            return self._pages_served

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._pages_served = 0

    def count(self, what: str) -> int:
        """Requests whose XML-RPC method or kind (see `RequestRecord`) is ``what``."""
        with self._lock:
            return sum(1 for r in self._log if what in (r.xmlrpc_method, r.kind))

    def count_pages(self, name: str | None = None) -> int:
        """Project page requests (any status), optionally for one project only."""
        wanted = None if name is None else f"/simple/{normalize(name)}/"
        with self._lock:
            return sum(
                1 for r in self._log if r.kind == "page" and (wanted is None or r.path == wanted)
            )

    # --- faults ----------------------------------------------------------------------------

    def inject(self, target: str, kind: str, times: int = 1, **params: Any) -> None:
        """Arm a fault for ``times`` requests to ``target``, then answer normally again.

        ``target`` is ``"root"``, a project name (normalized here; it covers
        ``/simple/<name>/`` and ``/pypi/<name>/json``) or an XML-RPC method name. Faults for
        one target fire in the order they were armed. Kinds and parameters:

        - ``status`` (code=503, retry_after=None): that status with an HTML error body (and
          a ``Retry-After`` header of that many seconds, if given).
        - ``rate_limit`` (seconds=1): HTTP 429 with ``Retry-After``.
        - ``xmlrpc_rate_limit`` (seconds=1): warehouse's -32500 ``HTTPTooManyRequests`` fault.
        - ``xmlrpc_fault`` (code=-32500, string=…): another fault.
        - ``xmlrpc_malformed``: 200 ``text/xml`` that is not XML-RPC.
        - ``reset``: close the connection without an answer.
        - ``slow`` (seconds=1.0): wait, then answer normally.
        - ``truncate``: announce the full Content-Length, send half, close.
        - ``stale``: the previous rendering and its serial (no previous: a lower serial).
        - ``not_simple``: 200 ``text/html`` CDN error page with no pypi meta and no serial.
        - ``json_instead``: the JSON form even though HTML was asked.
        - ``empty``: 200 with an empty body (headers as normal).
        - ``oversized`` (size=16 MiB): 200 with ``size`` bytes.
        - ``not_utf8``: 200 with bytes that are not UTF-8.
        - ``backwards``: ``changelog_since_serial`` rows whose serials go down.
        """
        _check_fault(target, kind, times, params)
        fault = ArmedFault(kind, times, dict(params))
        with self._lock:
            if target in XMLRPC_METHODS:
                self._xmlrpc_faults.setdefault(target, deque()).append(fault)
            else:
                key = target if target == "root" else normalize(target)
                self._page_faults.setdefault(key, deque()).append(fault)

    def switch_off_xmlrpc(self, mode: str = "410") -> None:
        """Retire XML-RPC: ``"404"``, ``"405"``, ``"410"`` (the endpoint's HTTP answer) or
        ``"disabled"`` (every mirroring method answers a -32500 fault saying so)."""
        if mode not in XMLRPC_OFF_MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {XMLRPC_OFF_MODES}")
        with self._lock:
            self._xmlrpc_off = mode

    def serve_cached_listing(self, listing: dict[str, int] | None) -> None:
        """Answer `listing` (``{display_name: serial}``) for ``list_packages_with_serial`` and
        list it in both roots, whatever the projects are now; None: the live listing again.

        Warehouse caches ``list_packages_with_serial`` in Redis for up to an hour (a stale
        cache was seen empty) and PyPI's CDN the roots for 30 minutes or more: a listing far
        behind the changelog and the pages. The journal, the serials and the pages stay live.
        """
        with self._lock:
            self._cached_listing = None if listing is None else dict(listing)
            self._generation += 1

    def set_repository_version(self, version: str | None) -> None:
        """The ``pypi:repository-version`` the HTML pages and root declare: None leaves the
        meta out, as an index of API 1.0 may (PEP 629: clients assume 1.0); ``"2.0"`` an
        index of a major version no client may read. The JSON forms keep ``1.4``."""
        with self._lock:
            self._repository_version = version

    def switch_on_xmlrpc(self) -> None:
        with self._lock:
            self._xmlrpc_off = None

    def clear_faults(self) -> None:
        with self._lock:
            self._page_faults.clear()
            self._xmlrpc_faults.clear()

    def faults_pending(self) -> int:
        """How many fault firings are still armed, over all targets."""
        with self._lock:
            queues = [*self._page_faults.values(), *self._xmlrpc_faults.values()]
            return sum(fault.remaining for queue in queues for fault in queue)

    def _take_fault(self, table: dict[str, deque[ArmedFault]], target: str) -> ArmedFault | None:
        with self._lock:
            queue = table.get(target)
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.popleft()
                if not queue:
                    del table[target]
            return ArmedFault(fault.kind, fault.remaining, fault.params)

    # --- mutators: warehouse's journal actions ---------------------------------------------

    def create_project(self, name: str) -> int:
        """``create``: the project appears with a page and no files."""
        with self._lock:
            normalized = normalize(name)
            if normalized in self._projects:
                raise ValueError(f"project {normalized!r} exists")
            project = Project(name, normalized)
            self._projects[normalized] = project
            serial = self._write(project, None, "create")
            self._render(project)
            return serial

    def add_release(
        self,
        name: str,
        version: str,
        files: int | Sequence[str | DistFile] | None = None,
        requires_python: str | None = None,
    ) -> int:
        """``new release`` then ``add <pyversion> file <filename>`` per file.

        ``files``: how many to generate (None: an sdist and a py3 wheel), explicit names, or
        ready `DistFile` records (`add_wheel`'s real files).
        Creates the project first (``create``) if absent. A version that exists gets only the
        file rows, as a later upload to an existing release does in warehouse.
        """
        with self._lock:
            if normalize(name) not in self._projects:
                self.create_project(name)
            project = self._project(name)
            release = project.releases.get(version)
            if release is None:
                release = Release(version, requires_python)
                project.releases[version] = release
                serial = self._write(project, version, "new release")
            else:
                serial = project.last_serial
            uploaded = int(self._clock())
            for dist in self._new_files(project, release, files, uploaded):
                release.files.append(dist)
                serial = self._write(
                    project, version, f"add {dist.python_version} file {dist.filename}"
                )
            self._render(project)
            return serial

    def add_wheel(self, name: str, version: str, requires_python: str | None = None) -> int:
        """Like `add_release` with one real wheel (`build_wheel`) that this stand-in serves.

        The page links to it as warehouse links to files.pythonhosted.org, by an absolute
        URL, here ``<url>/packages/<blake2b 2/2/60>/<filename>`` on loopback, with its real
        ``#sha256=`` and its PEP 658 metadata at ``<file URL>.metadata``, so pip and uv can
        download, verify and install it. Needs a started server (the URL holds its port).
        """
        wheel = build_wheel(name, version, requires_python)
        storage = hashlib.blake2b(wheel.content, digest_size=32).hexdigest()
        path = f"/packages/{storage[:2]}/{storage[2:4]}/{storage[4:]}/{wheel.filename}"
        dist = DistFile(
            wheel.filename,
            f"{self.url}{path}",
            hashlib.sha256(wheel.content).hexdigest(),
            len(wheel.content),
            "py3",
            hashlib.sha256(wheel.metadata).hexdigest(),
            int(self._clock()),
        )
        with self._lock:
            self._files[path] = wheel.content
            self._files[f"{path}.metadata"] = wheel.metadata
            return self.add_release(name, version, [dist], requires_python)

    def remove_file(self, name: str, filename: str) -> int:
        """``remove file <filename>``: the file leaves the page; the project stays."""
        with self._lock:
            project = self._project(name)
            for release in project.releases.values():
                for dist in release.files:
                    if dist.filename == filename:
                        release.files.remove(dist)
                        serial = self._write(project, release.version, f"remove file {filename}")
                        self._render(project)
                        return serial
            raise KeyError(f"{project.normalized!r} has no file {filename!r}")

    def remove_release(self, name: str, version: str) -> int:
        """``remove release``: its files leave the page; the project stays."""
        with self._lock:
            project = self._project(name)
            self._release(project, version)
            del project.releases[version]
            serial = self._write(project, version, "remove release")
            self._render(project)
            return serial

    def remove_project(self, name: str) -> int:
        """``remove project``: the page answers 404 and the name leaves the listings."""
        with self._lock:
            project = self._project(name)
            serial = self._write(project, None, "remove project")
            del self._projects[project.normalized]
            self._removed_names.append(project.name)
            return serial

    def yank_release(self, name: str, version: str, reason: str = "") -> int:
        """``yank release``: the release's links gain ``data-yanked="<reason>"``."""
        with self._lock:
            project = self._project(name)
            release = self._release(project, version)
            release.yanked, release.yanked_reason = True, reason
            serial = self._write(project, version, "yank release")
            self._render(project)
            return serial

    def unyank_release(self, name: str, version: str) -> int:
        with self._lock:
            project = self._project(name)
            release = self._release(project, version)
            release.yanked, release.yanked_reason = False, ""
            serial = self._write(project, version, "unyank release")
            self._render(project)
            return serial

    def quarantine_project(self, name: str) -> int:
        """``project quarantined``: page 200 with no files and status ``quarantined``;
        the project leaves both roots (``list_packages_with_serial`` still lists it)."""
        return self._set_status(name, QUARANTINED, "project quarantined")

    def clear_quarantine(self, name: str) -> int:
        """``project quarantine cleared``: back to active with its files."""
        return self._set_status(name, ACTIVE, "project quarantine cleared")

    def archive_project(self, name: str) -> int:
        """Archiving: the page's status becomes ``archived`` but, as in warehouse, no journal
        row is written and the serial does not move. Returns the (unchanged) project serial."""
        return self._set_status_silently(name, ARCHIVED)

    def unarchive_project(self, name: str) -> int:
        """Unarchiving (warehouse's ``unarchive_project``): back to ``active``, again with no
        journal row and no serial move. Returns the (unchanged) project serial."""
        return self._set_status_silently(name, ACTIVE)

    def _set_status_silently(self, name: str, status: str) -> int:
        with self._lock:
            project = self._project(name)
            project.status = status
            self._render(project)
            self._generation += 1
            return project.last_serial

    def add_role(self, name: str, user: str, role: str = "Owner") -> int:
        """``add <Role> <user>``: the serial moves, the files do not."""
        with self._lock:
            project = self._project(name)
            serial = self._write(project, None, f"add {role} {user}")
            self._render(project)
            return serial

    def rename_project(self, old: str, new: str) -> int:
        """Legacy ``rename from <old>``, journaled under the new name: the old page 404s,
        the new one has the old files."""
        with self._lock:
            project = self._project(old)
            new_normalized = normalize(new)
            if new_normalized in self._projects and new_normalized != project.normalized:
                raise ValueError(f"project {new_normalized!r} exists")
            old_name = project.name
            del self._projects[project.normalized]
            project.name, project.normalized = new, new_normalized
            project.previous = project.current = None
            self._projects[new_normalized] = project
            serial = self._write(project, None, f"rename from {old_name}")
            self._render(project)
            return serial

    def add_journal_row(self, name: str, version: str | None, action: str) -> int:
        """A raw journal row for hostile-input tests: no validation, no project change."""
        with self._lock:
            serial = len(self._journal) + 1
            self._journal.append(JournalRow(name, version, int(self._clock()), action, serial))
            self._generation += 1
            return serial

    def add_raw_listing_entry(self, name: str, serial: int) -> int:
        """Put a raw (possibly hostile) display name into the root page and
        ``list_packages_with_serial``; it has no page of its own."""
        with self._lock:
            self._raw_listing[name] = serial
            self._generation += 1
            return serial

    # --- synthetic data --------------------------------------------------------------------

    def populate(
        self,
        n_projects: int,
        seed: int = 0,
        *,
        max_files: int = 8000,
        archived_share: float = 0.003,
        quarantined_share: float = 0.0005,
    ) -> int:
        """Add ``n_projects`` synthetic projects quickly (100,000 in about 4 s).

        Journal: one ``create`` row per project, whose serial becomes the project's
        ``last_serial``; the releases and files filled in write no rows (as if their history
        were older than the journal), and archived/quarantined statuses are set directly.
        So a mirror that replays the changelog from 0 still fetches every page once.

        Deterministic for a given seed on a fresh instance: names mix cases and ``-``, ``_``,
        ``.`` separators; pages have mostly 1-20 files with a long tail to thousands (capped
        by ``max_files``); some releases are yanked, some carry ``requires-python``.
        Returns the last serial.
        """
        rng = random.Random(seed)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # millions of new objects would trigger full collections over and over
        try:
            self._populate(rng, n_projects, max_files, archived_share, quarantined_share)
        finally:
            if gc_was_enabled:
                gc.enable()
        # The index holds no reference cycles: let later collections skip it (serving pauses).
        gc.freeze()
        return self.last_serial

    def _populate(
        self,
        rng: random.Random,
        n_projects: int,
        max_files: int,
        archived_share: float,
        quarantined_share: float,
    ) -> None:
        with self._lock:
            now = int(self._clock())
            created = 0
            while created < n_projects:
                name = synthetic_name(rng, self._synthetic_count)
                self._synthetic_count += 1
                normalized = normalize(name)
                if normalized in self._projects:
                    continue
                project = Project(name, normalized)
                self._fill_synthetic(project, rng, max_files, now)
                roll = rng.random()
                if roll < quarantined_share:
                    project.status = QUARANTINED
                elif roll < quarantined_share + archived_share:
                    project.status = ARCHIVED
                self._projects[normalized] = project
                self._write(project, None, "create")
                self._render(project)
                created += 1

    def _fill_synthetic(
        self, project: Project, rng: random.Random, max_files: int, now: int
    ) -> None:
        remaining = synthetic_file_count(rng, max_files)
        per_release = min(remaining, rng.choice((1, 1, 2, 2, 3, 4, 6, 10, 20, 40)))
        n_releases = math.ceil(remaining / per_release)
        requires_python = rng.choice(_REQUIRES_PYTHON)
        for index in range(n_releases):
            version = synthetic_version(index)
            release = Release(version, requires_python)
            uploaded = now - (n_releases - index) * 86_400
            count = min(per_release, remaining)
            remaining -= count
            for file_index in range(count):
                filename, python_version = generated_filename(
                    project.normalized, version, file_index
                )
                release.files.append(
                    make_dist_file(
                        project.normalized, filename, python_version, uploaded, url_safe=True
                    )
                )
            release.next_file_index = count
            if n_releases > 1 and rng.random() < 0.03:
                release.yanked, release.yanked_reason = True, rng.choice(_YANK_REASONS)
            project.releases[version] = release
        project.version_counter = n_releases

    def churn(self, events: int = 10, seed: int | None = None) -> ChurnResult:
        """Apply ``events`` random realistic mutations; return what they did.

        Mostly new releases and new projects, then roles, yanks, file and release removals,
        project removals (and re-creation of a removed name), quarantines and archiving.
        ``seed`` None uses the current serial, so repeated calls differ but replay alike.
        """
        with self._lock:
            rng = random.Random(len(self._journal) if seed is None else seed)
            start = len(self._journal)
            applied = [self._churn_one(rng) for _ in range(events)]
            touched = {normalize(event.name) for event in applied}
            changed = tuple(sorted(n for n in touched if n in self._projects))
            removed = tuple(sorted(n for n in touched if n not in self._projects))
            return ChurnResult(start, len(self._journal), tuple(applied), changed, removed)

    def _churn_one(self, rng: random.Random) -> ChurnEvent:
        roll = rng.random()
        project = self._random_project(rng)
        if project is None or roll < 0.15:
            return self._churn_new_project(rng)
        releases = list(project.releases.values())
        if roll < 0.50 and project.status != QUARANTINED:
            version = self._fresh_version(project)
            serial = self.add_release(project.name, version, files=rng.randint(1, 4))
            return ChurnEvent("new release", project.name, version, serial)
        if roll < 0.60:
            user = f"user{rng.randint(1, 9999)}"
            role = rng.choice(("Owner", "Maintainer"))
            return ChurnEvent(
                "add role", project.name, None, self.add_role(project.name, user, role)
            )
        unyanked = [r for r in releases if not r.yanked]
        if roll < 0.68 and unyanked:
            release = rng.choice(unyanked)
            serial = self.yank_release(project.name, release.version, rng.choice(_YANK_REASONS))
            return ChurnEvent("yank release", project.name, release.version, serial)
        yanked = [r for r in releases if r.yanked]
        if roll < 0.72 and yanked:
            release = rng.choice(yanked)
            serial = self.unyank_release(project.name, release.version)
            return ChurnEvent("unyank release", project.name, release.version, serial)
        with_files = [r for r in releases if r.files]
        if roll < 0.80 and with_files:
            release = rng.choice(with_files)
            filename = rng.choice(release.files).filename
            serial = self.remove_file(project.name, filename)
            return ChurnEvent("remove file", project.name, release.version, serial)
        if roll < 0.86 and releases:
            release = rng.choice(releases)
            serial = self.remove_release(project.name, release.version)
            return ChurnEvent("remove release", project.name, release.version, serial)
        if roll < 0.91:
            return ChurnEvent(
                "remove project", project.name, None, self.remove_project(project.name)
            )
        if roll < 0.95:
            if project.status == QUARANTINED:
                serial = self.clear_quarantine(project.name)
                return ChurnEvent("project quarantine cleared", project.name, None, serial)
            serial = self.quarantine_project(project.name)
            return ChurnEvent("project quarantined", project.name, None, serial)
        if project.status == ACTIVE:
            self.archive_project(project.name)
            return ChurnEvent("archive", project.name, None, None)
        return self._churn_new_project(rng)

    def _churn_new_project(self, rng: random.Random) -> ChurnEvent:
        comeback = [n for n in self._removed_names if normalize(n) not in self._projects]
        if comeback and rng.random() < 0.3:
            name = rng.choice(comeback)
        else:
            name = synthetic_name(rng, self._synthetic_count)
            self._synthetic_count += 1
        serial = self.add_release(name, synthetic_version(0), files=rng.randint(1, 3))
        self._project(name).version_counter = 1
        return ChurnEvent("create", name, synthetic_version(0), serial)

    def _random_project(self, rng: random.Random) -> Project | None:
        if not self._projects:
            return None
        # islice walks the dict in C instead of copying 100,000 values for every event.
        index = rng.randrange(len(self._projects))
        return next(itertools.islice(self._projects.values(), index, None))

    def _fresh_version(self, project: Project) -> str:
        while True:
            version = synthetic_version(project.version_counter)
            project.version_counter += 1
            if version not in project.releases:
                return version

    # --- internals: state --------------------------------------------------------------------

    def _project(self, name: str) -> Project:
        project = self._projects.get(normalize(name))
        if project is None:
            raise KeyError(f"no project {normalize(name)!r}")
        return project

    def _release(self, project: Project, version: str) -> Release:
        release = project.releases.get(version)
        if release is None:
            raise KeyError(f"{project.normalized!r} has no release {version!r}")
        return release

    def _rendering(self, name: str) -> Rendering:
        rendering = self._project(name).current
        assert rendering is not None
        return rendering

    def _write(self, project: Project, version: str | None, action: str) -> int:
        """Append one journal row for ``project``; it becomes the project's last serial."""
        serial = len(self._journal) + 1
        self._journal.append(JournalRow(project.name, version, int(self._clock()), action, serial))
        project.last_serial = serial
        self._generation += 1
        return serial

    def _set_status(self, name: str, status: str, action: str) -> int:
        with self._lock:
            project = self._project(name)
            project.status = status
            serial = self._write(project, None, action)
            self._render(project)
            return serial

    def _new_files(
        self,
        project: Project,
        release: Release,
        files: int | Sequence[str | DistFile] | None,
        uploaded: int,
    ) -> list[DistFile]:
        existing = {d.filename for r in project.releases.values() for d in r.files}
        if files is None:
            files = 2
        if not isinstance(files, int):
            ready = [f for f in files if isinstance(f, DistFile)]
            if ready:
                if len(ready) != len(files):
                    raise TypeError("files: either all names or all DistFile records")
                clash = [f.filename for f in ready if f.filename in existing]
                if clash:
                    raise ValueError(f"{project.normalized!r} already has a file {clash[0]!r}")
                return ready
        if isinstance(files, int):
            names = []
            for _ in range(files):
                names.append(
                    generated_filename(project.normalized, release.version, release.next_file_index)
                )
                release.next_file_index += 1
        else:
            names = [(str(filename), python_version_of(str(filename))) for filename in files]
        created = []
        for filename, python_version in names:
            if filename in existing:
                raise ValueError(f"{project.normalized!r} already has a file {filename!r}")
            existing.add(filename)
            created.append(make_dist_file(project.normalized, filename, python_version, uploaded))
        return created

    def _render(self, project: Project) -> None:
        """Freeze the project's state into a view and render its HTML (kept as bytes)."""
        if project.status == QUARANTINED:
            releases: tuple[ReleaseView, ...] = ()
        else:
            ordered = sorted(
                project.releases.values(), key=lambda r: (version_key(r.version), r.version)
            )
            releases = tuple(
                ReleaseView(
                    r.version,
                    r.requires_python,
                    r.yanked,
                    r.yanked_reason,
                    tuple(sorted(r.files, key=lambda d: d.filename)),
                )
                for r in ordered
            )
        # warehouse's _simple_detail: sorted by (parsed version, filename)
        files = sorted(
            ((release, dist) for release in releases for dist in release.files),
            key=lambda pair: (version_key(pair[0].version), pair[1].filename),
        )
        view = PageView(
            project.name,
            project.normalized,
            project.status,
            project.last_serial,
            releases,
            tuple(files),
        )
        project.previous = project.current
        project.current = Rendering(view, render_project_html(view))

    def _listing_entries(self) -> tuple[ListingEntry, ...]:
        if self._cached_listing is not None:
            cached = [ListingEntry(n, normalize(n), s) for n, s in self._cached_listing.items()]
            return tuple(sorted(cached, key=lambda e: (e.normalized, e.name)))
        entries = [
            ListingEntry(p.name, p.normalized, p.last_serial)
            for p in self._projects.values()
            if p.status != QUARANTINED
        ]
        entries.extend(ListingEntry(n, normalize(n), s) for n, s in self._raw_listing.items())
        entries.sort(key=lambda e: (e.normalized, e.name))
        return tuple(entries)

    def _xmlrpc_listing(self) -> dict[str, int]:
        """``list_packages_with_serial``: PostgreSQL's ``jsonb_object_agg(name, last_serial)``
        over every project, so quarantined ones too, in jsonb's key order (shorter first)."""
        if self._cached_listing is not None:
            return dict(self._cached_listing)
        pairs = [(p.name, p.last_serial) for p in self._projects.values()]
        pairs.extend(self._raw_listing.items())
        pairs.sort(key=lambda pair: (len(pair[0].encode()), pair[0].encode()))
        return dict(pairs)

    def _current_root(self) -> RootRendering:
        with self._lock:
            root = self._root
            if root is None or root.generation != self._generation:
                entries = self._listing_entries()
                self._root_previous = root
                root = RootRendering(
                    self._generation, len(self._journal), entries, render_root_html(entries)
                )
                self._root = root
            return root

    @staticmethod
    def _simple_json(rendering: Rendering) -> bytes:
        # Racing threads may both render: same bytes, last assignment wins.
        if rendering.simple_json is None:
            rendering.simple_json = render_project_json(rendering.view)
        return rendering.simple_json

    @staticmethod
    def _api_json(rendering: Rendering) -> bytes | None:
        if rendering.api_json is None:
            rendering.api_json = render_api_json(rendering.view)
        return rendering.api_json

    @staticmethod
    def _root_json(root: RootRendering) -> bytes:
        if root.json is None:
            root.json = render_root_json(root.entries, root.serial)
        return root.json

    # --- HTTP: routing (no sockets here) -----------------------------------------------------

    def respond(self, request: Request) -> Reply:
        """Route one request, apply any armed fault, and log it."""
        kind, method, reply, fault = self._route(request)
        version = self._repository_version
        if version != API_VERSION and kind in ("page", "root"):
            reply = _with_repository_version(reply, version)
        reply = _encoded(reply, request.accept_encoding)
        record = RequestRecord(
            request.method,
            request.path,
            method,
            0 if reply.reset else reply.status,
            kind,
            fault.kind if fault else None,
            ("Content-Encoding", "gzip") in reply.headers,
        )
        with self._lock:
            if kind == "page" and reply.status == 200:
                self._pages_served += 1
            if self.log_requests:
                self._log.append(record)
        return reply

    def _route(self, request: Request) -> tuple[str, str | None, Reply, ArmedFault | None]:
        path = request.path
        if path in XMLRPC_PATHS:
            off = self._xmlrpc_off
            if off is not None and off != "disabled":
                allow = [("Allow", "GET, HEAD")] if off == "405" else []
                return "xmlrpc", None, _error_reply(int(off), allow), None
            if request.method != "POST":
                return "xmlrpc", None, _error_reply(405, [("Allow", "POST")]), None
            return self._route_xmlrpc(request)
        if request.method == "PURGE":
            return "purge", None, Reply(200, [("Content-Type", "text/plain")], b"purged\n"), None
        if path.startswith("/_fake/"):
            return "control", None, self._route_control(request), None
        if request.method not in ("GET", "HEAD"):
            return "other", None, _error_reply(405, [("Allow", "GET, HEAD")]), None
        if path == "/simple" or path.startswith("/simple/"):
            return self._route_simple(request)
        if path.startswith("/pypi/") and path.endswith("/json"):
            return self._route_json_api(request)
        if path.startswith("/packages/"):
            return "file", None, self._file_reply(path), None
        return "other", None, _error_reply(404), None

    def _file_reply(self, path: str) -> Reply:
        """An `add_wheel` file or its metadata, as the file host serves them (no serial)."""
        with self._lock:
            body = self._files.get(path)
        if body is None:
            return _error_reply(404)
        return Reply(200, [("Content-Type", "application/octet-stream")], body)

    def _route_simple(self, request: Request) -> tuple[str, None, Reply, ArmedFault | None]:
        rest = request.path[len("/simple") :]
        if rest in ("", "/"):
            if not rest:
                return "redirect", None, _redirect("/simple/"), None
            fault = self._take_fault(self._page_faults, "root")
            reply = self._root_reply(request, fault)
            return "root", None, _conditional(request, reply), fault
        raw_name, slash, tail = rest[1:].partition("/")
        if not slash:
            return "redirect", None, _redirect(f"/simple/{raw_name}/"), None
        if tail:
            return "other", None, _error_reply(404), None
        name = urllib.parse.unquote(raw_name)
        normalized = normalize(name)
        if name != normalized:
            location = f"/simple/{urllib.parse.quote(normalized, safe='')}/"
            return "redirect", None, _redirect(location), None
        fault = self._take_fault(self._page_faults, normalized)
        with self._lock:
            project = self._projects.get(normalized)
            current = project.current if project else None
            previous = project.previous if project else None
        if current is None:
            reply = _error_reply(404)
            if fault:
                reply = self._generic_fault(fault, reply, xmlrpc=False)
            return "page", None, reply, fault
        media = negotiate(request.accept)
        reply = self._page_reply(media, current)
        if fault:
            reply = self._page_fault(fault, reply, media, current, previous)
        return "page", None, _conditional(request, reply), fault

    def _page_reply(self, media: str, rendering: Rendering) -> Reply:
        body = self._simple_json(rendering) if media == MIME_V1_JSON else rendering.html
        return _simple_reply(media, body, rendering.view.serial)

    def _page_fault(
        self,
        fault: ArmedFault,
        reply: Reply,
        media: str,
        current: Rendering,
        previous: Rendering | None,
    ) -> Reply:
        if fault.kind == "stale":
            if previous is not None:
                return self._page_reply(media, previous)
            return _lower_serial(reply, current.view.serial)
        if fault.kind == "json_instead":
            return _simple_reply(MIME_V1_JSON, self._simple_json(current), current.view.serial)
        return self._generic_fault(fault, reply, xmlrpc=False)

    def _root_reply(self, request: Request, fault: ArmedFault | None) -> Reply:
        root = self._current_root()
        media = negotiate(request.accept)
        body = self._root_json(root) if media == MIME_V1_JSON else root.html
        reply = _simple_reply(media, body, root.serial)
        if fault is None:
            return reply
        if fault.kind == "stale":
            with self._lock:
                previous = self._root_previous
            if previous is not None and previous.serial < root.serial:
                body = self._root_json(previous) if media == MIME_V1_JSON else previous.html
                return _simple_reply(media, body, previous.serial)
            return _lower_serial(reply, root.serial)
        if fault.kind == "json_instead":
            return _simple_reply(MIME_V1_JSON, self._root_json(root), root.serial)
        return self._generic_fault(fault, reply, xmlrpc=False)

    def _route_json_api(self, request: Request) -> tuple[str, None, Reply, ArmedFault | None]:
        parts = request.path.split("/")  # ["", "pypi", name, "json"]
        if len(parts) != 4 or not parts[2]:
            return "json_api", None, _error_reply(404), None
        name = urllib.parse.unquote(parts[2])
        normalized = normalize(name)
        with self._lock:
            project = self._projects.get(normalized)
            current = project.current if project else None
            previous = project.previous if project else None
        if project is not None and current is not None and name != current.view.name:
            location = f"/pypi/{urllib.parse.quote(current.view.name, safe='')}/json"
            return "redirect", None, _redirect(location), None
        fault = self._take_fault(self._page_faults, normalized)
        body = self._api_json(current) if current else None
        if current is None or body is None:
            reply = _error_reply(404)
        else:
            reply = _json_reply(body, current.view.serial)
        if fault is None:
            return "json_api", None, reply, None
        if fault.kind == "stale" and current is not None and body is not None:
            old = self._api_json(previous) if previous else None
            if previous is not None and old is not None:
                reply = _json_reply(old, previous.view.serial)
            else:
                reply = _lower_serial(reply, current.view.serial)
        elif fault.kind not in ("stale", "json_instead"):
            reply = self._generic_fault(fault, reply, xmlrpc=False)
        return "json_api", None, reply, fault

    def _route_control(self, request: Request) -> Reply:
        if request.path == "/_fake/churn" and request.method == "POST":
            try:
                events = int(request.query.get("events", "10"))
                seed_text = request.query.get("seed")
                seed = int(seed_text) if seed_text is not None else None
            except ValueError:
                return _error_reply(400)
            result = self.churn(events, seed)
            return Reply(200, [("Content-Type", "application/json")], _json_bytes(result.to_dict()))
        if request.path == "/_fake/state" and request.method in ("GET", "HEAD"):
            with self._lock:
                state = {
                    "last_serial": len(self._journal),
                    "projects": len(self._projects),
                    "pages_served": self._pages_served,
                }
            return Reply(200, [("Content-Type", "application/json")], _json_bytes(state))
        return _error_reply(404)

    # --- HTTP: XML-RPC -----------------------------------------------------------------------

    def _route_xmlrpc(self, request: Request) -> tuple[str, str | None, Reply, ArmedFault | None]:
        try:
            params, method = xmlrpc.client.loads(request.body)
        except Exception:  # any parse failure is the client's: pyramid_rpc answers -32700
            return "xmlrpc", None, _fault_reply(-32700, "parse error; not well formed"), None
        if method is None:
            return (
                "xmlrpc",
                None,
                _fault_reply(-32601, "server error; requested method not found"),
                None,
            )
        if self._xmlrpc_off == "disabled":
            return "xmlrpc", method, _fault_reply(-32500, XMLRPC_DISABLED), None
        fault = self._take_fault(self._xmlrpc_faults, method)
        if fault is None:
            return "xmlrpc", method, self._call(method, params), None
        if fault.kind == "xmlrpc_rate_limit":
            message = RATE_LIMIT_MESSAGE.format(seconds=fault.params.get("seconds", 1))
            reply = _fault_reply(-32500, message)
        elif fault.kind == "xmlrpc_fault":
            code = fault.params.get("code", -32500)
            reply = _fault_reply(code, fault.params.get("string", "RuntimeError: injected fault"))
        elif fault.kind == "xmlrpc_malformed":
            garbage = b"<?xml version='1.0'?>\n<methodResponse><params><param><value><arr"
            reply = Reply(200, [("Content-Type", XMLRPC_CONTENT_TYPE)], garbage)
        elif fault.kind == "backwards":
            reply = _xmlrpc_reply(self._backwards_changelog(params))
        else:
            reply = self._generic_fault(fault, self._call(method, params), xmlrpc=True)
        return "xmlrpc", method, reply, fault

    def _call(self, method: str, params: tuple[Any, ...]) -> Reply:
        if method == "changelog_last_serial":
            if params:
                return _invalid_params()
            with self._lock:
                serial = len(self._journal) or None
            return _xmlrpc_reply(serial)
        if method == "changelog_since_serial":
            if len(params) != 1 or not isinstance(params[0], int) or isinstance(params[0], bool):
                return _invalid_params()
            rows = [row.as_tuple() for row in self.changelog_since(params[0])]
            return _xmlrpc_reply(rows)
        if method == "list_packages_with_serial":
            if params:
                return _invalid_params()
            root = self._current_root()
            if root.xmlrpc_listing is None:
                with self._lock:
                    root.xmlrpc_listing = _marshal(self._xmlrpc_listing())
            return Reply(200, [("Content-Type", XMLRPC_CONTENT_TYPE)], root.xmlrpc_listing)
        if method == "changelog":
            return _fault_reply(-32500, CHANGELOG_REMOVED)
        return _fault_reply(-32601, "server error; requested method not found")

    def _backwards_changelog(self, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A page whose serials go down: the real page reversed, or two made-up rows."""
        since = params[0] if params and isinstance(params[0], int) else 0
        rows = [row.as_tuple() for row in self.changelog_since(since)]
        if len(rows) >= 2:
            return rows[::-1]
        name = rows[0][0] if rows else "backwards"
        stamp = int(self._clock())
        return [(name, None, stamp, "create", since + 2), (name, None, stamp, "create", since + 1)]

    # --- HTTP: generic faults ----------------------------------------------------------------

    def _generic_fault(self, fault: ArmedFault, reply: Reply, *, xmlrpc: bool) -> Reply:
        """Faults that look the same on a page, the root, the JSON API and XML-RPC."""
        kind, params = fault.kind, fault.params
        content_type = XMLRPC_CONTENT_TYPE if xmlrpc else CONTENT_TYPES[MIME_HTML]
        if kind == "status":
            hint = params.get("retry_after")
            extra = [] if hint is None else [("Retry-After", str(hint))]
            return _error_reply(int(params.get("code", 503)), extra)
        if kind == "rate_limit":
            return _error_reply(429, [("Retry-After", str(params.get("seconds", 1)))])
        if kind == "reset":
            return Reply(0, reset=True)
        if kind == "slow":
            reply.delay = float(params.get("seconds", 1.0))
            return reply
        if kind == "truncate":
            reply.truncate = True
            return reply
        if kind == "not_simple":
            return Reply(200, [("Content-Type", CONTENT_TYPES[MIME_HTML])], CDN_ERROR_PAGE)
        if kind in ("empty", "oversized", "not_utf8"):
            headers = [(k, v) for k, v in reply.headers if k != "Content-Type"]
            headers.insert(0, ("Content-Type", content_type))
            if kind == "empty":
                return Reply(200, headers)
            if kind == "oversized":
                prefix = b"<?xml version='1.0'?>\n" if xmlrpc else b"<!DOCTYPE html>\n"
                return Reply(200, headers, prefix, pad_to=int(params.get("size", 16 << 20)))
            return Reply(200, headers, NOT_UTF8_XML if xmlrpc else NOT_UTF8_HTML)
        raise AssertionError(f"fault {kind!r} reached the generic handler")


# --- reply helpers -------------------------------------------------------------------------

CDN_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html>\n  <head>\n    <title>Error 503 Backend fetch failed</title>\n"
    b"  </head>\n  <body>\n    <h1>Error 503 Backend fetch failed</h1>\n"
    b"    <p>Backend fetch failed</p>\n    <h3>Guru Meditation:</h3>\n"
    b"    <p>XID: 123456789</p>\n    <hr>\n    <p>Varnish cache server</p>\n  </body>\n</html>\n"
)
NOT_UTF8_HTML = (
    b'<!DOCTYPE html>\n<html lang="en">\n  <head>\n'
    b'    <meta name="pypi:repository-version" content="1.4">\n'
    b"    <title>Links for \xff\xfe</title>\n  </head>\n  <body>\n"
    b'<a href="https://files.pythonhosted.org/packages/x/\xc3\x28.tar.gz">\xe9t\xe9</a><br />\n'
    b"</body>\n</html>\n"
)
NOT_UTF8_XML = b"<?xml version='1.0'?>\n<methodResponse>\xff\xfe\xc3\x28</methodResponse>\n"


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


_VERSION_META = f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'.encode()


def _with_repository_version(reply: Reply, version: str | None) -> Reply:
    """An HTML answer declaring `version` (None: no ``pypi:repository-version`` meta)."""
    if not reply.body.startswith(b"<!DOCTYPE html>") or _VERSION_META not in reply.body:
        return reply
    meta = b"" if version is None else _VERSION_META.replace(API_VERSION.encode(), version.encode())
    body = reply.body.replace(_VERSION_META, meta, 1)
    return Reply(reply.status, reply.headers, body, reply.delay, reply.reset, reply.truncate)


def _accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether WebOb's ``best_match(["identity", "gzip"])`` picks gzip for this header."""
    for item in (accept_encoding or "").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() in ("gzip", "*"):
            quality = 1.0
            for param in params:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    with contextlib.suppress(ValueError):
                        quality = float(value)
            if quality > 0:
                return True
    return False


@functools.lru_cache(maxsize=4096)
def _gzipped(body: bytes) -> bytes:
    """A body compressed once (bytes cache their hash: a page served again is a lookup)."""
    return gzip.compress(body, compresslevel=6, mtime=0)


def _encoded(reply: Reply, accept_encoding: str | None) -> Reply:
    """What warehouse's compression tween (``warehouse/utils/compression.py``) does to every
    answer: ``Accept-Encoding`` joins ``Vary``, and the body is gzipped when the client
    accepts gzip and that makes it shorter. Fault effects that cut or pad a body go out
    uncompressed."""
    if reply.reset:
        return reply
    headers = list(reply.headers)
    for index, (key, value) in enumerate(headers):
        if key == "Vary":
            headers[index] = (key, f"{value}, Accept-Encoding")
            break
    else:
        headers.append(("Vary", "Accept-Encoding"))
    reply.headers = headers
    if reply.pad_to or reply.truncate or not reply.body or not _accepts_gzip(accept_encoding):
        return reply
    compressed = _gzipped(reply.body)
    if len(compressed) < len(reply.body):
        reply.headers.append(("Content-Encoding", "gzip"))
        reply.body = compressed
    return reply


def _simple_reply(media: str, body: bytes, serial: int) -> Reply:
    headers = [
        ("Content-Type", CONTENT_TYPES[media]),
        ("Vary", "Accept"),
        ("X-PyPI-Last-Serial", str(serial)),
        ("Cache-Control", "max-age=600, public"),
        ("ETag", md5_etag(body)),
        *CORS_HEADERS,
    ]
    return Reply(200, headers, body)


def md5_etag(body: bytes) -> str:
    """Warehouse's ETag of a buffered 200 answer: its conditional-response tween calls WebOb's
    ``Response.md5_etag()`` (base64 MD5 of the body, ``=`` stripped, quoted). Warehouse gzips
    for clients that accept it and then tags the gzipped bytes; this stand-in never gzips."""
    digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest())
    return '"' + digest.decode("ascii").rstrip("=") + '"'


def _conditional(request: Request, reply: Reply) -> Reply:
    """A 304 for a 200 whose ETag the request's If-None-Match names (WebOb's comparison is
    weak: ``W/`` is ignored; ``*`` matches any), keeping every header but Content-Type and
    Content-Length as WebOb does (``X-PyPI-Last-Serial`` included)."""
    if reply.status != 200 or not request.if_none_match:
        return reply
    etag = dict(reply.headers).get("ETag")
    wanted = {tag.strip().removeprefix("W/") for tag in request.if_none_match.split(",")}
    if etag is None or not (etag in wanted or "*" in wanted):
        return reply
    headers = [(name, value) for name, value in reply.headers if name != "Content-Type"]
    return Reply(304, headers, b"", delay=reply.delay)


def _json_reply(body: bytes, serial: int) -> Reply:
    headers = [
        ("Content-Type", "application/json"),
        ("X-PyPI-Last-Serial", str(serial)),
        ("Access-Control-Allow-Origin", "*"),
    ]
    return Reply(200, headers, body)


def _lower_serial(reply: Reply, serial: int) -> Reply:
    """A stale answer when no older rendering exists: same body, a serial one lower."""
    lower = max(serial - 1, 0)
    headers = [(k, str(lower) if k == "X-PyPI-Last-Serial" else v) for k, v in reply.headers]
    body = reply.body
    trailer = f"<!--SERIAL {serial}-->".encode()
    if body.endswith(trailer):
        body = body[: -len(trailer)] + f"<!--SERIAL {lower}-->".encode()
    return Reply(reply.status, headers, body)


def _error_reply(status: int, extra: Sequence[tuple[str, str]] = ()) -> Reply:
    """An HTML error page; like warehouse, no ``X-PyPI-Last-Serial``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = (
        f"<html>\n <head>\n  <title>{status} {phrase}</title>\n </head>\n <body>\n"
        f"  <h1>{status} {phrase}</h1>\n </body>\n</html>"
    ).encode()
    return Reply(status, [("Content-Type", CONTENT_TYPES[MIME_HTML]), *extra], body)


def _redirect(location: str) -> Reply:
    return Reply(301, [("Location", location), ("Content-Type", CONTENT_TYPES[MIME_HTML])])


def _marshal(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode()


def _xmlrpc_reply(value: Any) -> Reply:
    return Reply(200, [("Content-Type", XMLRPC_CONTENT_TYPE)], _marshal(value))


def _fault_reply(code: int, message: str) -> Reply:
    body = xmlrpc.client.dumps(
        xmlrpc.client.Fault(code, message), methodresponse=True, allow_none=True
    ).encode()
    return Reply(200, [("Content-Type", XMLRPC_CONTENT_TYPE)], body)


def _invalid_params() -> Reply:
    return _fault_reply(-32602, "server error; invalid method params")


# --- HTTP: sockets -------------------------------------------------------------------------

_FILLER = b"<!-- padding -->" * 4096  # 64 KiB


class _Server(ThreadingHTTPServer):
    """Threaded, keep-alive, TCP_NODELAY; tracks its connections so `stop` can close them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], fake: FakePyPI, context: ssl.SSLContext | None
    ) -> None:
        self.fake = fake
        self.context = context
        self.stopping = threading.Event()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host up in DNS (getfqdn): skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is not None:
            # The handshake runs in the handler thread (see _Handler.setup), not in accept.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, ssl.SSLError, OSError)):
            return  # clients hang up, time out and reset: that is their right
        log.exception("fake PyPI failed on a request from %s", client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in connections:
            thread.join(timeout=2)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-pypi"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a benchmark makes hundreds of thousands of requests."""

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PURGE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BODY:
            self.close_connection = True
            self._write(_error_reply(413))
            return
        body = self.rfile.read(length) if length else b""
        split = urllib.parse.urlsplit(self.path)
        request = Request(
            self.command,
            split.path,
            dict(urllib.parse.parse_qsl(split.query)),
            self.headers.get("Accept"),
            body,
            self.headers.get("Accept-Encoding"),
            self.headers.get("If-None-Match"),
        )
        self._write(self.server.fake.respond(request))

    def _write(self, reply: Reply) -> None:
        if reply.delay:
            self.server.stopping.wait(reply.delay)
        if reply.reset:
            # Linger 0: closing sends a TCP reset instead of a graceful goodbye.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        length = max(len(reply.body), reply.pad_to)
        phrase = self.responses.get(reply.status, ("",))[0]
        lines = [
            f"HTTP/1.1 {reply.status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            *(f"{name}: {value}" for name, value in reply.headers),
            *([f"Content-Length: {length}"] if reply.status != 304 else []),
        ]
        if reply.truncate:
            self.close_connection = True
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        if self.command == "HEAD":
            self.wfile.write(head)
            return
        body = reply.body[: len(reply.body) // 2] if reply.truncate else reply.body
        self.wfile.write(head + body)
        sent = len(body)
        while sent < reply.pad_to:
            chunk = _FILLER[: reply.pad_to - sent]
            self.wfile.write(chunk)
            sent += len(chunk)


# --- TLS helper ----------------------------------------------------------------------------


def make_self_signed_cert(directory: str | Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write a throwaway certificate for ``host`` (openssl CLI); return (cert, key) paths.

    For clients that insist on https (bandersnatch refuses an ``http://`` master): start
    ``FakePyPI(certfile=cert, keyfile=key)`` and point the client's CA bundle at ``cert``.
    """
    directory = Path(directory)
    cert, key = directory / "fake-pypi-cert.pem", directory / "fake-pypi-key.pem"
    san = f"IP:{host}" if re.fullmatch(r"[\d.]+|[0-9a-fA-F:]+", host) else f"DNS:{host}"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "7", "-subj", f"/CN={host}", "-addext", f"subjectAltName={san}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


# --- command line --------------------------------------------------------------------------


def _serve_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_pypi",
        description="Serve a synthetic PyPI index on loopback until interrupted.",
        epilog="Other commands: 'churn --url URL --events N' (change a running server), "
        "'bench' (measure the serving ceiling).",
    )
    parser.add_argument("--projects", type=int, default=1000, help="synthetic projects")
    parser.add_argument("--port", type=int, default=8080, help="0 lets the OS choose")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page-cap", type=int, default=DEFAULT_PAGE_CAP)
    parser.add_argument("--certfile", help="serve https with this certificate")
    parser.add_argument("--keyfile", help="key for --certfile")
    parser.add_argument(
        "--xmlrpc-off",
        choices=XMLRPC_OFF_MODES,
        help="serve no XML-RPC: the endpoint answers this HTTP status, or 'disabled' faults",
    )
    args = parser.parse_args(argv)

    fake = FakePyPI(
        host=args.host,
        port=args.port,
        page_cap=args.page_cap,
        certfile=args.certfile,
        keyfile=args.keyfile,
        log_requests=False,
    )
    started = time.perf_counter()
    fake.populate(args.projects, seed=args.seed)
    elapsed = time.perf_counter() - started
    if args.xmlrpc_off:
        fake.switch_off_xmlrpc(args.xmlrpc_off)

    serve_until_stopped(
        fake,
        lambda: (
            f"fake PyPI: {args.projects} projects (built in {elapsed:.1f} s), "
            f"serial {fake.last_serial}, at {fake.url}; Ctrl-C stops it"
        ),
    )
    return 0


def serve_until_stopped(fake: FakePyPI, banner: Callable[[], str]) -> None:
    """Serve until Ctrl-C or SIGTERM: the URL alone on stdout (for scripts), banner() on stderr."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    # a signal may come as soon as the URL is out (a script read it), even mid-banner
    with fake, contextlib.suppress(KeyboardInterrupt):
        print(fake.url, flush=True)
        print(banner(), file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


def _churn_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_pypi churn",
        description="Apply random changes to a running fake PyPI; print what changed (JSON).",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--seed", type=int, help="default: the server's current serial")
    args = parser.parse_args(argv)
    query = {"events": str(args.events)}
    if args.seed is not None:
        query["seed"] = str(args.seed)
    url = f"{args.url.rstrip('/')}/_fake/churn?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=60) as r:
            sys.stdout.write(r.read().decode())
    except (urllib.error.URLError, OSError) as error:
        print(f"churn: cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    return 0


def measure_ceiling(
    projects: int = 2000, threads: int = 4, seconds: float = 3.0, client: str = "requests"
) -> float:
    """Project pages a second that ``threads`` keep-alive clients get from a stand-in.

    The server runs in its own process (as it does under a benchmark), so client and server
    do not share a GIL. ``client`` is ``requests`` (one Session a thread: what the mirror
    uses) or ``http.client`` (lighter, to see the server's own limit).
    """
    command = [sys.executable, "-m", "tests.fake_pypi", "--projects", str(projects), "--port", "0"]
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(
        command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            with urllib.request.urlopen(f"{url}/simple/", timeout=30) as response:
                listing = response.read().decode()
            paths = re.findall(r'href="(/simple/[^"]+/)"', listing)
            return _client_loop(url, paths, threads, seconds, client)
        finally:
            server.terminate()
            server.wait(timeout=10)


def _client_loop(url: str, paths: list[str], threads: int, seconds: float, client: str) -> float:
    import http.client

    import requests

    counts = [0] * threads
    deadline = time.perf_counter() + seconds
    split = urllib.parse.urlsplit(url)

    def fetch_with_requests(slot: int) -> None:
        with requests.Session() as session:
            position = slot
            while time.perf_counter() < deadline:
                session.get(url + paths[position % len(paths)], timeout=30).raise_for_status()
                counts[slot] += 1
                position += threads

    def fetch_with_http_client(slot: int) -> None:
        connection = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port)
        try:
            position = slot
            while time.perf_counter() < deadline:
                connection.request("GET", paths[position % len(paths)])
                response = connection.getresponse()
                response.read()
                counts[slot] += 1
                position += threads
        finally:
            connection.close()

    target = fetch_with_requests if client == "requests" else fetch_with_http_client
    workers = [threading.Thread(target=target, args=(slot,)) for slot in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "churn":
        return _churn_main(args[1:])
    if args and args[0] == "bench":
        for client in ("requests", "http.client"):
            for threads in (1, 4):
                rate = measure_ceiling(threads=threads, client=client)
                print(f"{client}, {threads} thread(s): {rate:,.0f} pages/s")
        return 0
    return _serve_main(args)


if __name__ == "__main__":
    sys.exit(main())
