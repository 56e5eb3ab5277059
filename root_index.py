"""The mirror's root index: rendered, read back and merged as a stream of lines.

At PyPI's size the page is tens of MB from 700,000 names, so it is never held
whole: it is rendered line by line into its temp file, and an update merges
its changes into the page while reading it back from disk.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator

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
    current: Iterable[tuple[str, str]], changes: dict[str, str | None]
) -> Iterator[tuple[str, str]]:
    """Merge sorted root members with `changes` (None: leave the root), in sorted order."""
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
