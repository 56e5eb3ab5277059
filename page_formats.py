"""The forms a project page is mirrored in (``--simple-format``), and when the forms agree.

PEP 691 serves each project page as HTML or JSON by content negotiation. The
mirror keeps one file per form in the project's directory (``index.html``,
``index.v1_json``: bandersnatch's names) and one root index per form. When it
keeps both, both must show the project at one moment: the same
``X-PyPI-Last-Serial``, or both a 404. Pure: no disk, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mirror_store import JSON_PAGE_NAME, JSON_ROOT_TARGET, PAGE_NAME, ROOT_TARGET
from pypi_client import FetchedPage, PageFacts, inspect_json_page, inspect_simple_page


@dataclass(frozen=True)
class PageFormat:
    """One form: its ``--simple-format`` word, its file name, its root index."""

    word: str  # "html" or "json"; also what state.json records
    basename: str  # the page's file in simple/<name>/
    root_target: str  # the root index in this form (a TUF target path)

    def inspect(self, name: str, body: bytes) -> PageFacts:
        """Check a page of this form (raises NotASimplePage) and read its facts."""
        if self.word == "json":
            return inspect_json_page(name, body)
        return inspect_simple_page(name, body)


HTML = PageFormat("html", PAGE_NAME, ROOT_TARGET)
JSON = PageFormat("json", JSON_PAGE_NAME, JSON_ROOT_TARGET)
ALL_FORMATS = (HTML, JSON)
BY_WORD = {form.word: form for form in ALL_FORMATS}
BY_BASENAME = {form.basename: form for form in ALL_FORMATS}
# --simple-format -> the forms mirrored; the first is the one membership and serials are read from
SIMPLE_FORMATS = {"html": (HTML,), "json": (JSON,), "all": (HTML, JSON)}


def forms_of(words: Sequence[str]) -> tuple[PageFormat, ...]:
    """The forms named by state.json's ``formats``, in canonical order."""
    return tuple(form for form in ALL_FORMATS if form.word in words)


@dataclass(frozen=True)
class Verdict:
    """What a set of answers (one per form) says: done, or which to fetch again."""

    refetch: tuple[int, ...]  # indexes of the forms to fetch again; empty: they agree
    expected: int  # the serial those must reach
    missing: bool  # a form answered 404 where the project exists (or forms disagree on 404)

    @property
    def agreed(self) -> bool:
        return not self.refetch


def judge(pages: Sequence[FetchedPage], expected: int, expect_page: bool) -> Verdict:
    """Whether the answers for one project show it at one moment, no older than `expected`.

    A 200 older than the newest serial seen (or than the changelog's) is a CDN
    copy not caught up: fetch it again. A 404 is believed only when every form
    says 404 and the changelog does not say the project exists; a 404 beside
    a 200 is either a removal or a creation not seen by every cache yet, so
    every form is fetched again unless the changelog settles which.
    """
    serials = [page.serial for page in pages if page.body is not None]
    newest = max([expected, *(serial or 0 for serial in serials)])
    missing = [index for index, page in enumerate(pages) if page.body is None]
    if missing and (expect_page or serials):
        if expect_page:  # the project exists: only the 404s are behind
            behind = [i for i, p in enumerate(pages) if p.body is None or (p.serial or 0) < newest]
            return Verdict(tuple(behind), newest, True)
        return Verdict(tuple(range(len(pages))), newest, True)
    if missing:  # every form says 404, and nothing says the project exists
        return Verdict((), expected, False)
    behind = [index for index, page in enumerate(pages) if (page.serial or 0) < newest]
    return Verdict(tuple(behind), newest, False)
