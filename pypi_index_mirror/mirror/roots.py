"""The mirror's root indexes: rendered, read back and merged as a stream of lines.

Two forms: ``index.html`` (PEP 503) and, with JSON pages, ``simple/index.v1_json``
(PEP 691, with each project's ``_last-serial`` as warehouse's JSON root has it,
so a downstream mirror can follow this one the way bandersnatch follows PyPI).
At PyPI's size each is tens of MB from 700,000 names, so neither is ever held
whole: it is rendered line by line into its temp file, and an update merges
its changes into the page while reading it back from disk.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

from pypi_index_mirror.mirror.store import normalize_name

T = TypeVar("T")

ROOT_HEADER = (
    b'<!DOCTYPE html>\n<html lang="en">\n  <head>\n'
    b'    <meta name="pypi:repository-version" content="1.4">\n'
    b"    <title>Simple index</title>\n  </head>\n  <body>\n"
)
ROOT_FOOTER = b"  </body>\n</html>\n"
_ROOT_LINK = re.compile(rb'^    <a href="simple/([a-z0-9-]+)/">([^<]*)</a>$', re.MULTILINE)


def render_root_lines(projects: Iterable[tuple[str, str]]) -> Iterator[bytes]:
    """The mirror's root page, line by line, for (normalized, display) pairs in sorted order.

    Streamed: at PyPI's size the page is tens of MB, built from 700,000 names.
    """
    yield ROOT_HEADER
    for normalized, display in projects:
        text = html.escape(display, quote=False)
        yield f'    <a href="simple/{normalized}/">{text}</a>\n'.encode()
    yield ROOT_FOOTER


def iter_root_index(lines: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """Inverse of render_root_lines (only ever reads pages this tool wrote)."""
    for line in lines:
        match = _ROOT_LINK.match(line.rstrip(b"\n"))
        if match:
            yield match.group(1).decode(), html.unescape(match.group(2).decode())


def merge_root(
    current: Iterable[tuple[str, T]], changes: dict[str, T | None]
) -> Iterator[tuple[str, T]]:
    """Merge sorted root members with `changes` (None: leave the root), in sorted order.

    A member is (normalized name, what its line shows): the display name for
    the HTML root, (display name, serial) for the JSON root.
    """
    updates = sorted(changes.items())
    index = 0
    for name, display in current:
        while index < len(updates) and updates[index][0] <= name:
            changed, new_display = updates[index]
            index += 1
            if new_display is not None:
                yield changed, new_display
            if changed == name:
                break
        else:
            yield name, display
    for changed, new_display in updates[index:]:
        if new_display is not None:
            yield changed, new_display


# The JSON root's API version: it holds only PEP 691 (1.0) keys, plus warehouse's private
# `_last-serial`; each project page keeps the version PyPI served it with.
JSON_ROOT_API_VERSION = "1.0"
_JSON_ROOT_HEAD = b'{"projects": [\n'
_JSON_ROOT_LINE = re.compile(rb'^\{"name": ("(?:[^"\\]|\\.)*"), "_last-serial": (\d+)\},?$')


def render_json_root_lines(projects: Iterable[tuple[str, str, int]]) -> Iterator[bytes]:
    """The JSON root, line by line, for sorted (normalized, display, serial) triples.

    One project a line, so an update can merge into it as a stream. ``meta`` comes
    last (key order means nothing in JSON): its ``_last-serial`` is the newest
    serial of a listed project, known only at the end, and moves only when a
    listed project's does, so a mirror of a few projects is not rewritten for
    every change elsewhere on PyPI.
    """
    yield _JSON_ROOT_HEAD
    newest = 0
    separator = b""
    for _normalized, display, serial in projects:
        newest = max(newest, serial)
        yield separator + f'{{"name": {json.dumps(display)}, "_last-serial": {serial}}}'.encode()
        separator = b",\n"
    meta = json.dumps({"api-version": JSON_ROOT_API_VERSION, "_last-serial": newest})
    yield (("\n" if separator else "") + f'], "meta": {meta}}}\n').encode()


def iter_json_root(lines: Iterable[bytes]) -> Iterator[tuple[str, tuple[str, int]]]:
    """Inverse of render_json_root_lines: (normalized, (display, serial)) in file order."""
    for line in lines:
        match = _JSON_ROOT_LINE.match(line.rstrip(b"\n"))
        if match:
            display = json.loads(match.group(1))
            yield normalize_name(display), (display, int(match.group(2)))
