"""What the proxy answers to a URL and an ``Accept`` header: pure functions, no I/O.

The Simple Repository API as PyPI serves it (PEP 503, PEP 691): ``/simple/``
and ``/simple/<normalized>/``, a non-normalized name redirected with 301, HTML
or JSON chosen by ``Accept`` the way warehouse chooses (WebOb's
``acceptable_offers``: the most specific matching range gives each offer its
q, the highest q wins, ties go to ``text/html``, then
``application/vnd.pypi.simple.v1+html``, then ``+json``; no header or nothing
acceptable gives ``text/html``).

Each answer is a TUF target of the mirror (docs/target-naming.md):
``simple/<p>/index.html`` or ``simple/<p>/index.v1_json`` for a project,
``index.html`` or ``simple/index.v1_json`` for the root. The root HTML links
its projects relatively (``simple/<p>/``), so it is served at ``/`` and an
HTML client asking ``/simple/`` is redirected there, as the mirror's nginx
site does; links then resolve to ``/simple/<p>/``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pypi_index_mirror.mirror.store import (
    JSON_PAGE_NAME,
    JSON_ROOT_TARGET,
    PAGE_NAME,
    ROOT_TARGET,
    InvalidProjectName,
    project_dir_name,
    project_target,
)

MIME_HTML = "text/html"
MIME_V1_HTML = "application/vnd.pypi.simple.v1+html"
MIME_V1_JSON = "application/vnd.pypi.simple.v1+json"
# warehouse's order of offers: a tie in q goes to the earlier one
SIMPLE_OFFERS = (MIME_HTML, MIME_V1_HTML, MIME_V1_JSON)
CONTENT_TYPES = {
    MIME_HTML: "text/html; charset=utf-8",
    MIME_V1_HTML: MIME_V1_HTML,
    MIME_V1_JSON: MIME_V1_JSON,
}
_PROJECT_URL = re.compile(r"^/simple/([^/]+)(/?)$")


@dataclass(frozen=True)
class Candidate:
    """One TUF target that may answer, with the Content-Type it is served as."""

    target: str
    content_type: str


@dataclass(frozen=True)
class Page:
    """Serve the first candidate TUF signs; if none, redirect to `otherwise` (or 404)."""

    candidates: tuple[Candidate, ...]
    project: str | None  # the normalized name; None for the root
    otherwise: str | None = None  # a Location when no candidate is signed
    vary: bool = True


@dataclass(frozen=True)
class Redirect:
    location: str
    status: int = 301
    vary: bool = False


@dataclass(frozen=True)
class NotServed:
    """A URL this proxy has no page for; `reason` is the one line the client reads."""

    reason: str


Route = Page | Redirect | NotServed


def _quality(offer: str, ranges: Sequence[tuple[str, float]]) -> float:
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


def parse_accept(accept: str) -> list[tuple[str, float]]:
    """(media range, q) pairs of an Accept header; an unreadable q counts as 0."""
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
                if not 0.0 <= quality <= 1.0:  # also NaN
                    quality = 0.0
        ranges.append((media.lower(), quality))
    return ranges


def acceptable(accept: str | None) -> list[str]:
    """The Simple API media types the client accepts, best first (warehouse's tie order).

    Never empty: no header, or nothing acceptable, gives ``[text/html]`` as PyPI does.
    """
    if not accept:
        return [MIME_HTML]
    ranges = parse_accept(accept)
    scored = [(offer, _quality(offer, ranges)) for offer in SIMPLE_OFFERS]
    ordered = sorted((o for o in scored if o[1] > 0), key=lambda o: -o[1])  # stable: ties
    return [offer for offer, _ in ordered] or [MIME_HTML]


def negotiate(accept: str | None) -> str:
    """The one media type PyPI would answer `accept` with."""
    return acceptable(accept)[0]


def _basename(media: str) -> str:
    return JSON_PAGE_NAME if media == MIME_V1_JSON else PAGE_NAME


def project_candidates(normalized: str, accept: str | None) -> tuple[Candidate, ...]:
    """The project's targets in the client's order, each form once.

    The client's first choice, then the other form if it accepts it too: a
    mirror that keeps only one form still answers every client that can read it.
    """
    seen: set[str] = set()
    found = []
    for media in acceptable(accept):
        basename = _basename(media)
        if basename not in seen:
            seen.add(basename)
            found.append(Candidate(project_target(normalized, basename), CONTENT_TYPES[media]))
    return tuple(found)


def route(path: str, accept: str | None) -> Route:
    """What answers a request for `path` (query string already removed)."""
    if path in ("/", "/index.html"):
        return Page((Candidate(ROOT_TARGET, CONTENT_TYPES[MIME_HTML]),), None, vary=False)
    if path == "/simple":
        return Redirect("/simple/")
    if path == "/simple/":
        if negotiate(accept) != MIME_V1_JSON:
            return Redirect("/", status=302, vary=True)
        return Page((Candidate(JSON_ROOT_TARGET, MIME_V1_JSON),), None, otherwise="/")
    match = _PROJECT_URL.match(path)
    if match is None:
        return NotServed(
            f"{path[:200]} is not an index page; this proxy serves /simple/ and "
            "/simple/<project>/ (files come from the links in the verified pages)"
        )
    name, slash = match.groups()
    try:
        normalized = project_dir_name(name)
    except InvalidProjectName as exc:
        return NotServed(str(exc))
    if name != normalized or not slash:
        return Redirect(f"/simple/{normalized}/")
    return Page(project_candidates(normalized, accept), normalized)
