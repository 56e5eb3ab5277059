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
from collections.abc import Iterable, Iterator, Mapping
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
        match = _ROOT_LINK.match(line)  # `$` matches before the line's "\n"
        if match:
            name, text = match.groups()
            display = text.decode()
            # html.unescape is the identity on text without "&" (most names): skip the call
            yield name.decode(), html.unescape(display) if "&" in display else display


# Lines a merge joins into one chunk: a few hundred KB, so the hashing and writing of the
# page are a few hundred calls, not one a line (100,000 lines at 100,000 projects).
_CHUNK_LINES = 4096


def merge_root_lines(
    current: Iterable[bytes], changes: Mapping[str, str | None]
) -> Iterator[bytes]:
    """The HTML root page `current` with `changes` merged, in chunks of whole lines.

    The bytes are those of ``render_root_lines(merge_root(iter_root_index(current),
    changes))``, but a line no change touches is copied as read rather than decoded,
    unescaped, escaped and encoded again: an update that changes a few thousand of
    PyPI's 700,000 names then costs little more than reading the page.
    """
    updates = sorted(changes.items())
    index = 0
    upcoming = updates[0][0].encode() if updates else None
    chunk = [ROOT_HEADER]
    for line in current:
        match = _ROOT_LINK.match(line)
        if match is None:
            continue
        name = match.group(1)
        while upcoming is not None and upcoming <= name:
            changed, display = updates[index]
            index += 1
            if display is not None:
                text = html.escape(display, quote=False)
                chunk.append(f'    <a href="simple/{changed}/">{text}</a>\n'.encode())
            same = upcoming == name
            upcoming = updates[index][0].encode() if index < len(updates) else None
            if same:
                break
        else:
            chunk.append(line if line.endswith(b"\n") else line + b"\n")
        if len(chunk) >= _CHUNK_LINES:
            yield b"".join(chunk)
            chunk = []
    for changed, display in updates[index:]:
        if display is not None:
            text = html.escape(display, quote=False)
            chunk.append(f'    <a href="simple/{changed}/">{text}</a>\n'.encode())
    chunk.append(ROOT_FOOTER)
    yield b"".join(chunk)


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
