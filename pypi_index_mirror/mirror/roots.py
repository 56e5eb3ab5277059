"""The mirror's root indexes: rendered, read back and merged as a stream of lines.

Two forms: ``index.html`` (PEP 503) and, with JSON pages, ``simple/index.v1_json``
(PEP 691, with each project's ``_last-serial`` as warehouse's JSON root has it,
so a downstream mirror can follow this one the way bandersnatch follows PyPI).
At PyPI's size each is tens of MB from 700,000 names, so neither is ever held
whole: it is rendered line by line into its temp file, and an update merges
its changes into the page while reading it back from disk.
"""

from __future__ import annotations

import bisect
import html
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from pypi_index_mirror.mirror.store import normalize_name

T = TypeVar("T")

ROOT_HEADER = (
    b'<!DOCTYPE html>\n<html lang="en">\n  <head>\n'
    b'    <meta name="pypi:repository-version" content="1.4">\n'
    b"    <title>Simple index</title>\n  </head>\n  <body>\n"
)
ROOT_FOOTER = b"  </body>\n</html>\n"
_ROOT_LINK = re.compile(rb'^    <a href="simple/([a-z0-9-]+)/">([^<]*)</a>$', re.MULTILINE)


def _root_line(normalized: str, display: str) -> bytes:
    """One project's line of the HTML root, without its newline."""
    text = html.escape(display, quote=False)
    return f'    <a href="simple/{normalized}/">{text}</a>'.encode()


def render_root_lines(projects: Iterable[tuple[str, str]]) -> Iterator[bytes]:
    """The mirror's root page, line by line, for (normalized, display) pairs in sorted order.

    Streamed: at PyPI's size the page is tens of MB, built from 700,000 names.
    """
    yield ROOT_HEADER
    for normalized, display in projects:
        yield _root_line(normalized, display) + b"\n"
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


# A root is read in blocks of about this many bytes, cut at a line's end: a merge or a
# revalidation's slice looks at single lines only around the names it wants, and copies
# or counts the rest of a block whole (C's speed, not a Python step a line).
_BLOCK_BYTES = 1 << 20
_MEMBER = b'    <a href="simple/'  # how every project's line of the HTML root starts
_NAME_AT = len(_MEMBER)


def _member_name(line: bytes) -> bytes:
    """The normalized name a project line (`_MEMBER`...) links to, as bytes."""
    return line[_NAME_AT : line.index(b"/", _NAME_AT)]


@dataclass(frozen=True)
class _RootLines:
    """How one form of root lists a project: a line starting with `member`, matching
    `pattern` (without its newline), its normalized name as bytes (`name`: the order
    the root is sorted in), and its (normalized, display) pairs (`members`)."""

    member: bytes
    pattern: re.Pattern[bytes]
    name: Callable[[bytes], bytes]
    members: Callable[[list[bytes]], list[tuple[str, str]]]


def _json_member_name(line: bytes) -> bytes:
    # `, "_last-serial"` cannot stand inside the name: a quote there is escaped
    display = json.loads(line[len(b'{"name": ') : line.rindex(b', "_last-serial"')])
    return normalize_name(display).encode()


_HTML_LINES = _RootLines(
    _MEMBER, _ROOT_LINK, _member_name, lambda lines: list(iter_root_index(lines))
)


def _clean(members: bytes, form: _RootLines) -> bytes:
    """`members` (whole lines) if each is a project line, else only its project lines."""
    start = form.member
    if members.startswith(start) and members.count(b"\n" + start) == members.count(b"\n") - 1:
        return members
    return b"".join(line + b"\n" for line in members.split(b"\n") if form.pattern.match(line))


def root_member_blocks(
    stream: BinaryIO, block_bytes: int = _BLOCK_BYTES, form: _RootLines = _HTML_LINES
) -> Iterator[bytes]:
    """A root's project lines (the HTML root's by default), in blocks of whole lines
    ("\\n"-ended), header and footer (and any line that is not a project's) left out,
    in the page's order."""
    carry, start = b"", form.member
    while True:
        data = stream.read(block_bytes)
        if not data:
            block, carry = carry, b""
            if block and not block.endswith(b"\n"):
                block += b"\n"  # a page cut short before its last newline
        else:
            data = carry + data
            end = data.rfind(b"\n") + 1
            block, carry = data[:end], data[end:]
        if block:
            first = 0 if block.startswith(start) else block.find(b"\n" + start) + 1
            last = block.rfind(start)
            if first > 0 or block.startswith(start):
                cleaned = _clean(block[first : block.index(b"\n", last) + 1], form)
                if cleaned:
                    yield cleaned
        if not data:
            return


def slice_root_index(
    stream: BinaryIO,
    after: str,
    count: int,
    block_bytes: int = _BLOCK_BYTES,
    json_root: bool = False,
) -> tuple[list[tuple[str, str]], int]:
    """A revalidation's slice of the root read from `stream`: the `count` members that
    follow `after` in sorted order, wrapping round to the first (never one twice), and
    how many members the root has (the next `revalidate.plan`'s total).
    `json_root`: the page is the JSON root (its members' display names the same).

    Only the lines around the cursor are looked at one by one (a binary search in
    a block, the root being sorted); every other block is just counted.
    """
    form = _JSON_LINES if json_root else _HTML_LINES
    wanted = after.encode()
    chosen: list[bytes] = []
    head: list[bytes] = []  # from the start, should the slice wrap round
    total = 0
    for block in root_member_blocks(stream, block_bytes, form):
        total += block.count(b"\n")
        need_head = len(head) < count and form.name(block[: block.index(b"\n")]) <= wanted
        need_chosen = len(chosen) < count and form.name(_last_line(block)) > wanted
        if need_head or need_chosen:
            lines = block.split(b"\n")[:-1]
            cut = bisect.bisect_right(lines, wanted, key=form.name)
            if need_head:
                head += lines[: min(cut, count - len(head))]
            if need_chosen:
                chosen += lines[cut : cut + count - len(chosen)]
    if len(chosen) < count:
        chosen += head[: count - len(chosen)]
    return form.members(chosen), total


def _last_line(block: bytes) -> bytes:
    return block[block.rfind(b"\n", 0, len(block) - 1) + 1 :]


def merge_root_lines(
    stream: BinaryIO, changes: Mapping[str, str | None], block_bytes: int = _BLOCK_BYTES
) -> Iterator[bytes]:
    """The HTML root page read from `stream` with `changes` merged, in blocks of lines.

    The bytes are those of ``render_root_lines(merge_root(iter_root_index(stream),
    changes))``, but a line no change touches is copied as read, and a block no
    change falls in is copied whole: each change is placed by a binary search in
    its block (the root is sorted), so an update that changes a few thousand of
    PyPI's 700,000 names costs little more than reading the page.
    """
    updates = [
        (name.encode(), None if display is None else _root_line(name, display))
        for name, display in sorted(changes.items())
    ]
    index = 0
    yield ROOT_HEADER
    for block in root_member_blocks(stream, block_bytes):
        last = _member_name(_last_line(block))
        if index == len(updates) or updates[index][0] > last:
            yield block
            continue
        lines = block.split(b"\n")[:-1]
        merged: list[bytes] = []
        start = 0
        while index < len(updates) and updates[index][0] <= last:
            name, line = updates[index]
            index += 1
            at = bisect.bisect_left(lines, name, start, key=_member_name)
            merged += lines[start:at]
            start = at + 1 if at < len(lines) and _member_name(lines[at]) == name else at
            if line is not None:
                merged.append(line)
        merged += lines[start:]
        merged.append(b"")
        yield b"\n".join(merged)
    tail = [line + b"\n" for _name, line in updates[index:] if line is not None]
    yield b"".join(tail) + ROOT_FOOTER


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


_JSON_LINES = _RootLines(
    b'{"name": ',
    _JSON_ROOT_LINE,
    _json_member_name,
    lambda lines: [(name, display) for name, (display, _serial) in iter_json_root(lines)],
)
