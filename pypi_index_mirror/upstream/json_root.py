"""The streaming parser of PEP 691's JSON root: 700,000 projects in flat memory.

Apart from the client because it is a parser over text, no I/O: the client
feeds it the answer's chunks as they arrive (`PypiClient.list_projects_json`).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable


class JsonRootParser:
    """Stream-parses a PEP 691 root, handing each project's name and serial to `sink`.

    PyPI's root lists about 700,000 projects (tens of MB): ``json.loads`` would
    build a dict per project, several times the listing itself. This reads
    the top-level object key by key and decodes each ``projects`` entry alone,
    so memory stays flat whatever the size. ``meta`` may come before or after
    ``projects``; other keys are skipped. Raises ValueError on malformed input.
    """

    MAX_VALUE = 1 << 20  # one JSON value other than the projects list, characters

    def __init__(self, sink: Callable[[object, object], None]) -> None:
        self._sink = sink
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._buffer = ""
        self._pos = 0
        self._step = self._open_object
        self._key: str | None = None
        self.meta: dict[str, object] | None = None
        self.projects = 0
        self._after_project = False  # in 'projects': an entry was read, ',' or ']' is next

    def feed(self, chunk: bytes) -> None:
        self._buffer = self._buffer[self._pos :] + self._text.decode(chunk)
        self._pos = 0
        self._run(final=False)

    def close(self) -> None:
        self._buffer = self._buffer[self._pos :] + self._text.decode(b"", final=True)
        self._pos = 0
        self._run(final=True)
        if self._step != self._done:  # bound methods: equal, never identical
            raise ValueError("the document ends early")
        if self._skip_space() < len(self._buffer):
            raise ValueError("data after the document")

    def _run(self, final: bool) -> None:
        while self._step(final):
            pass

    # Each step consumes one token and returns True, or False when it needs more input.

    def _skip_space(self) -> int:
        buffer, pos = self._buffer, self._pos
        while pos < len(buffer) and buffer[pos] in " \t\r\n":
            pos += 1
        self._pos = pos
        return pos

    def _punctuation(self, final: bool, expected: str) -> str | None:
        pos = self._skip_space()
        if pos >= len(self._buffer):
            if final:
                raise ValueError(f"expected one of {expected!r}, got the end")
            return None
        char = self._buffer[pos]
        if char not in expected:
            raise ValueError(f"expected one of {expected!r} at character {pos}, got {char!r}")
        self._pos = pos + 1
        return char

    def _value(self, final: bool) -> tuple[bool, object]:
        pos = self._skip_space()
        try:
            value, end = self._json.raw_decode(self._buffer, pos)
        except json.JSONDecodeError:
            if final or len(self._buffer) - pos > self.MAX_VALUE:
                raise
            return False, None
        # a number at the end of the buffer may go on in the next chunk
        if end == len(self._buffer) and not final and not isinstance(value, dict | list | str):
            return False, None
        self._pos = end
        return True, value

    def _open_object(self, final: bool) -> bool:
        if self._punctuation(final, "{") is None:
            return False
        self._step = self._key_or_end
        return True

    def _key_or_end(self, final: bool) -> bool:
        pos = self._skip_space()
        if pos < len(self._buffer) and self._buffer[pos] == "}":
            self._pos = pos + 1
            self._step = self._done
            return True
        ready, key = self._value(final)
        if not ready:
            return False
        if not isinstance(key, str):
            raise ValueError("an object key that is not a string")
        self._key = key
        self._step = self._colon
        return True

    def _colon(self, final: bool) -> bool:
        if self._punctuation(final, ":") is None:
            return False
        self._step = self._projects_open if self._key == "projects" else self._member_value
        return True

    def _member_value(self, final: bool) -> bool:
        ready, value = self._value(final)
        if not ready:
            return False
        if self._key == "meta":
            if not isinstance(value, dict):
                raise ValueError("'meta' is not an object")
            self.meta = value
        self._step = self._comma_or_end
        return True

    def _comma_or_end(self, final: bool) -> bool:
        char = self._punctuation(final, ",}")
        if char is None:
            return False
        self._step = self._key_or_end if char == "," else self._done
        return True

    def _projects_open(self, final: bool) -> bool:
        if self._punctuation(final, "[") is None:
            return False
        self._step = self._project_or_end
        self._after_project = False
        return True

    def _project_or_end(self, final: bool) -> bool:
        """Decode a run of entries in one tight loop: 700,000 of them are the whole cost.

        Entries shaped as warehouse writes them (``{"name": "...", "_last-serial": n}``,
        a plain name) take one regular-expression match each; anything else goes
        through the JSON decoder, which gives the same answer, three times slower.
        """
        buffer, pos, sink = self._buffer, self._pos, self._sink
        fast, scan, size = _PLAIN_PROJECT.match, self._json.scan_once, len(buffer)
        count = self.projects
        while True:
            if self._after_project:
                pos = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
                if pos >= size:
                    break
                if buffer[pos] == "]":
                    self._pos, self.projects = pos + 1, count
                    self._step = self._comma_or_end
                    return True
                if buffer[pos] != ",":
                    raise ValueError(f"expected ',' or ']' after 'projects' entry {count}")
                pos += 1
                self._after_project = False
            match = fast(buffer, pos)
            if match is not None:
                sink(match.group(1), int(match.group(2)))
                count += 1
                pos = match.end()
                self._after_project = not match.group(3)
                continue
            pos = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
            if pos >= size:
                break
            if buffer[pos] == "]" and not count:
                self._pos = pos + 1
                self._step = self._comma_or_end
                return True
            try:
                project, end = scan(buffer, pos)
            except (StopIteration, json.JSONDecodeError) as exc:
                if final or size - pos > self.MAX_VALUE:
                    raise ValueError(f"malformed 'projects' entry {count + 1}") from exc
                break
            if not isinstance(project, dict):
                raise ValueError(f"'projects' entry {count + 1} is not an object")
            sink(project.get("name"), project.get("_last-serial"))
            count += 1
            pos, self._after_project = end, True
        self._pos, self.projects = pos, count
        if final:
            raise ValueError("the 'projects' list ends early")
        return False

    def _done(self, final: bool) -> bool:
        return False


_SPACE = re.compile(r"[ \t\r\n]*")
# One root entry as warehouse writes it, with what follows it: ',' (group 3) or ']' (left).
_PLAIN_PROJECT = re.compile(
    r'[ \t\r\n]*\{[ \t\r\n]*"name"[ \t\r\n]*:[ \t\r\n]*"([A-Za-z0-9._-]*)"[ \t\r\n]*,'
    r'[ \t\r\n]*"_last-serial"[ \t\r\n]*:[ \t\r\n]*(0|[1-9][0-9]*)[ \t\r\n]*\}'
    r"[ \t\r\n]*(?:(,)|(?=\]))"
)
