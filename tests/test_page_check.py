"""The project page check's fast path: warehouse's shape read without lxml, never a verdict
lxml would not give.

`upstream.pages.facts_of_warehouse_page` accepts a page by its shape alone; the full check
(`parse_simple_page`, lxml's tree) is the oracle it must agree with whenever it accepts.
"""

from __future__ import annotations

import random
import re

import pytest

from pypi_index_mirror.upstream.errors import NotASimplePage
from pypi_index_mirror.upstream.pages import (
    PageFacts,
    facts_of_warehouse_page,
    inspect_simple_page,
    parse_simple_page,
)
from tests.fake_pypi import FakePyPI

VERSION_META = b'    <meta name="pypi:repository-version" content="1.4">\n'


def warehouse_pages(count: int = 60) -> list[tuple[str, bytes]]:
    """The stand-in's pages (warehouse's template, byte for byte): every attribute mix."""
    fake = FakePyPI(log_requests=False)
    fake.populate(count, seed=7)
    fake.archive_project(fake.project_names()[0])
    fake.quarantine_project(fake.project_names()[1])
    return [(name, fake.page(name)) for name in fake.project_names()]


def api_1_0_pages(count: int = 40) -> list[tuple[str, bytes]]:
    """The same pages as an index of API 1.0 writes them: no version meta (PEP 629)."""
    pages = warehouse_pages(count)
    fake = FakePyPI(log_requests=False)
    fake.create_project("no-files")
    pages.append(("no-files", fake.page("no-files")))
    return [(name, body.replace(VERSION_META, b"", 1)) for name, body in pages]


def full_check(name: str, body: bytes) -> PageFacts | str:
    """What the check says without the fast path: the facts, or the refusal's text."""
    try:
        body.decode("utf-8")
        return parse_simple_page(name, body)
    except (NotASimplePage, UnicodeDecodeError) as exc:
        return f"refused: {exc}"


# Pieces that change what lxml builds (or may): markup where text was, comments, raw-text
# elements, quotes and brackets inside values, case, bytes libxml2 treats apart.
HOSTILE_PIECES = [
    b"<",
    b">",
    b'"',
    b"'",
    b"&",
    b"&#46;",
    b"\x00",
    b"\x0b",
    b"\x0c",
    b"\x1f",
    b"<!--",
    b"-->",
    b"<a>",
    b"<a name=x>",
    b"<a >",
    b"<A>",
    b"<A HREF=x>",
    b"</a>",
    b"<script>",
    b"</script>",
    b"<style>",
    b"<textarea>",
    b"<![CDATA[",
    b"</head>",
    b"<body>",
    b"</html>",
    b"<br>",
    b"<p>",
    b"<title>",
    b'<meta name="pypi:repository-version" content="2.0">',
    b'<meta name="pypi:project-status" content="quarantined">',
    b'<meta name="pypi:repository-version">',
    VERSION_META,
    b"<h1>",
    b"</h1>",
    b"Links for ",
    b' href="x"',
    b' name="y"',
    b"\xc3\xa9",
    b" ",
    b"\n",
]


def mutate(body: bytes, rng: random.Random) -> bytes:
    """One to three edits at random places: insert, replace or delete a stretch."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(body) + 1)
        action = rng.random()
        if action < 0.5:
            body = body[:at] + rng.choice(HOSTILE_PIECES) + body[at:]
        elif action < 0.8:
            body = body[:at] + rng.choice(HOSTILE_PIECES) + body[at + rng.randint(1, 8) :]
        else:
            body = body[:at] + body[at + rng.randint(1, 40) :]
    return body


def test_every_page_of_warehouse_shape_takes_the_fast_path_with_lxml_facts() -> None:
    """Without this the fast path could quietly never fire (and the cost come back)."""
    pages = warehouse_pages()
    statuses = set()
    for name, body in pages:
        facts = facts_of_warehouse_page(body)
        assert facts is not None, body[:300]
        assert facts == full_check(name, body)
        statuses.add(facts.project_status)
    assert {"active", "archived", "quarantined"} <= statuses


@pytest.mark.parametrize(
    "extra",
    [
        b"",  # an <a> with no optional attribute keeps a space before ">"
        b' data-requires-python="&gt;=3.8" ',
        b' data-yanked="" ',
        b' data-yanked="broken &#34;sdist&#34;" ',
        b' data-provenance="https://pypi.org/integrity/x/1.0/x-1.0.tar.gz/provenance"',
        b'>x-1.0.tar.gz</a><br />\n<a href="https://files.example/x-1.0.zip" ',
    ],
)
def test_the_template_s_attribute_variants_take_the_fast_path(extra: bytes) -> None:
    """warehouse's detail template, each optional attribute and an alternate location; of two
    status metas the first counts, as lxml's XPath finds it first."""
    body = (
        b'<!DOCTYPE html>\n<html lang="en">\n  <head>\n'
        b'    <meta name="pypi:repository-version" content="1.4">\n'
        b'<meta name="pypi:alternate-locations" content="https://example.org/simple/x/">'
        b'<meta name="pypi:project-status" content="archived">'
        b'<meta name="pypi:project-status" content="quarantined">    <title>Links for x</title>\n'
        b"  </head>\n  <body>\n    <h1>Links for x</h1>\n"
        b'<a href="https://files.example/x-1.0.tar.gz#sha256=' + b"0" * 64 + b'"' + extra + b">"
        b"x-1.0.tar.gz</a><br />\n</body>\n</html>\n<!--SERIAL 12-->"
    )
    assert facts_of_warehouse_page(body) == PageFacts("archived") == full_check("x", body)


@pytest.mark.parametrize(
    "edit",
    [
        (b"<a href=", b"<!-- --><a name=x>y</a><a href="),  # a link with no href
        (b"<a href=", b'<a name="x" href='),  # href not first
        (b"<a href=", b"<A href="),
        (b"<a href=", b"<!-- <a> --><a href="),  # a comment
        (b"<a href=", b"<script><a></script><a href="),
        (b'content="1.4"', b'content="1&#46;4"'),  # lxml reads 1.4: its verdict, not ours
        (b'content="1.4"', b'content="2.0"'),
        (b'status" content="', b'status" content="&#97;'),
        (b"<title>", b"<title>\x00"),
        (b'" data', b'"\x0bdata'),
        (b"</title>", b"</title><title>"),
        (b"<h1>", b"<h1><b>"),
    ],
)
def test_a_page_off_warehouse_s_shape_gets_lxml_s_verdict(edit: tuple[bytes, bytes]) -> None:
    name, body = next((n, b) for n, b in warehouse_pages(20) if b"data-requires-python" in b)
    changed = body.replace(*edit, 1)
    assert changed != body
    assert facts_of_warehouse_page(changed) is None
    try:
        assert inspect_simple_page(name, changed) == full_check(name, changed)
    except NotASimplePage as exc:
        assert full_check(name, changed) == f"refused: {exc}"


def test_whatever_the_fast_path_accepts_lxml_accepts_with_the_same_facts() -> None:
    """Thousands of hostile edits of real-shaped pages, with and without the version meta;
    the fast path agrees or abstains."""
    rng = random.Random(20261202)
    pages = warehouse_pages(40) + api_1_0_pages(20)
    accepted = abstained = 0
    for _ in range(8000):
        name, body = rng.choice(pages)
        changed = mutate(body, rng)
        facts = facts_of_warehouse_page(changed, name)
        if facts is None:
            abstained += 1
            continue
        accepted += 1
        assert facts == full_check(name, changed), changed
    # both sides exercised: edits it still accepts (in text, values, blanks) and ones it leaves
    assert accepted > 400 and abstained > 1000, (accepted, abstained)


# --- PEP 629: a page without the version meta is API 1.0 ---------------------------------------


def test_a_page_without_the_version_meta_is_api_1_0_on_both_paths() -> None:
    pages = api_1_0_pages()
    assert any(b"<a " not in body for _, body in pages)  # a project with no files among them
    for name, body in pages:
        assert b"repository-version" not in body
        facts = facts_of_warehouse_page(body, name)
        assert facts is not None, body[:300]
        assert facts == full_check(name, body) == inspect_simple_page(name, body)
    name, body = pages[0]
    # another index's spelling (no doctype's case, no lang, one line) goes through lxml alike
    plain = b"<html><head><title>Links for %s</title></head><body></body></html>" % name.encode()
    assert facts_of_warehouse_page(plain, name) is None
    assert inspect_simple_page(name, plain) == PageFacts("active")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'<meta name="pypi:repository-version" content="2.0">', "'2.0' is not 1.x"),
        (b'<meta name="pypi:repository-version" content="">', "'' is not 1.x"),
        (None, "<p> element"),  # the stand-in's CDN error page, served 200
        (b"<html><body><h1>Service Unavailable</h1></body></html>", "no title naming it"),
        (b"<html><head><title>Log in</title></head><body><form></form></body></html>", "<form>"),
    ],
)
def test_a_version_2_or_a_page_that_is_no_list_of_links_is_refused(
    body: bytes | None, reason: str
) -> None:
    from tests.fake_pypi import CDN_ERROR_PAGE

    if body is None:
        body = CDN_ERROR_PAGE
    elif body.startswith(b"<meta"):
        body = warehouse_pages(5)[0][1].replace(VERSION_META, b"    " + body + b"\n", 1)
    assert facts_of_warehouse_page(body, "x") is None
    with pytest.raises(NotASimplePage, match=re.escape(reason)):
        inspect_simple_page("x", body)
