"""What a project page is: the checks that refuse what is not one, and the facts read off it.

Pure functions over a page's bytes, no I/O: the regex fast path for pages in
warehouse's shape (`facts_of_warehouse_page`), lxml's full check
(`parse_simple_page`), PEP 691's JSON form (`inspect_json_page`), and the serial
a held page carries (`page_serial`, `json_page_serial`). The client checks
every page it fetches with them; the writer reads a held page's serial and
facts with them, without the client.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

import lxml.etree

from pypi_index_mirror.upstream.errors import NotASimplePage


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


@dataclass(slots=True)
class FetchedPage:
    """A project page as PyPI served it; `body is None` means 404 (project gone)."""

    name: str
    body: bytes | None
    serial: int | None
    facts: PageFacts | None


_SERIAL_TRAILER = re.compile(rb"<!--SERIAL (\d+)-->\s*$")
# A page that writes "meta" first: {"meta": {"api-version": "1.4", "_last-serial": 123}, ...}
_JSON_META_SERIAL = re.compile(
    rb'^\s*\{\s*"meta"\s*:\s*\{\s*"api-version"\s*:\s*"[^"]*"\s*,\s*"_last-serial"\s*:\s*(\d+)\s*\}'
)
_JSON_META_KEY = re.compile(rb'"meta"\s*:')


def page_serial(page_tail: bytes) -> int | None:
    """The serial warehouse writes at the end of each page (``<!--SERIAL n-->``)."""
    match = _SERIAL_TRAILER.search(page_tail)
    return int(match.group(1)) if match else None


def json_page_serial_at_start(page_head: bytes) -> int | None:
    """The ``meta._last-serial`` of a PEP 691 page that begins with its ``meta`` object."""
    match = _JSON_META_SERIAL.match(page_head)
    return int(match.group(1)) if match else None


def json_page_serial(page_tail: bytes) -> int | None:
    """The top-level ``meta._last-serial`` of a PEP 691 page, from the page's last bytes.

    Warehouse renders JSON with sorted keys (``json.dumps(sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``), so ``"meta"`` comes after
    the files, followed only by ``name``, ``project-status`` and ``versions``.
    `page_tail` must end where the page ends. The last ``"meta":`` key in it
    whose remainder, read as the rest of an object, parses to a whole JSON
    object is the top-level one: a ``"meta"`` inside a string is escaped
    (``\\"meta\\"``) and one nested deeper leaves unbalanced brackets behind it.
    None when there is none (the caller then fetches the page again, never guesses).
    """
    for match in reversed(list(_JSON_META_KEY.finditer(page_tail))):
        start = before = match.start()
        while before and page_tail[before - 1] == 0x5C:  # backslashes before the quote
            before -= 1
        if (start - before) % 2:
            continue  # an escaped quote: inside a string
        try:
            document = json.loads(b"{" + page_tail[start:])
        except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
            continue
        meta = document.get("meta") if isinstance(document, dict) else None
        serial = meta.get("_last-serial") if isinstance(meta, dict) else None
        return serial if type(serial) is int and serial >= 0 else None
    return None
