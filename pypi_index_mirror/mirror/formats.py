"""The forms a project page is mirrored in (``--simple-format``), and when the forms agree.

PEP 691 serves each project page as HTML or JSON by content negotiation. The
mirror keeps one file per form in the project's directory (``index.html``,
``index.v1_json``: bandersnatch's names) and one root index per form. When it
keeps both, both must show the project at one moment: the same
``X-PyPI-Last-Serial``, or both a 404 (`sync.plan.forms_answer` decides). Pure:
no disk, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pypi_index_mirror.mirror.store import JSON_PAGE_NAME, JSON_ROOT_TARGET, PAGE_NAME, ROOT_TARGET
from pypi_index_mirror.upstream.pages import PageFacts, inspect_json_page, inspect_simple_page


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
