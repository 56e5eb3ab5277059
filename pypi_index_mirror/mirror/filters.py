"""Which projects the mirror carries: ``--include`` / ``--exclude`` globs over PEP 503 names.

A project is mirrored when it matches at least one include pattern (or none
are given) and no exclude pattern. Patterns are `fnmatch` globs matched
against the normalized name, and are normalized like a name themselves
(``Zope.*`` matches ``zope-interface``), so an operator never has to guess
which spelling PyPI lists. Pure: nothing here touches the disk or the network.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pypi_index_mirror.mirror.store import normalize_name

# What a glob over normalized names may hold: the name alphabet and fnmatch's * ? [ ] !
_PATTERN = re.compile(r"^[a-z0-9*?\[\]!-]+$")


def glob_pattern(text: str) -> str:
    """Normalize and check one ``--include``/``--exclude`` pattern; ValueError names the fault."""
    pattern = normalize_name(text.strip())
    if not pattern:
        raise ValueError("an empty pattern matches nothing; give a glob such as 'django*'")
    if not _PATTERN.fullmatch(pattern):
        raise ValueError(
            f"pattern {text!r} can never match a project name (letters, digits, '-', '.', "
            "'_' and the glob characters * ? [ ] ! only)"
        )
    return pattern


@dataclass(frozen=True)
class ProjectFilter:
    """The include and exclude globs, normalized, sorted and without duplicates."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def of(cls, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> ProjectFilter:
        """Build from raw patterns (validated); equal sets give equal filters."""
        return cls(
            tuple(sorted({glob_pattern(p) for p in include})),
            tuple(sorted({glob_pattern(p) for p in exclude})),
        )

    @property
    def everything(self) -> bool:
        """No pattern at all: every project is mirrored (the default)."""
        return not self.include and not self.exclude

    def allows(self, normalized: str) -> bool:
        """Whether the project with this PEP 503 name is mirrored."""
        if self.include and not any(fnmatch.fnmatchcase(normalized, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(normalized, p) for p in self.exclude)

    def admits_only_part_of(self, other: ProjectFilter) -> bool:
        """Whether every project this filter admits is sure to be admitted by `other`.

        Judged from the patterns alone (no listing needed): fewer or equal
        includes (where `other` has any) and at least `other`'s excludes.
        False means "maybe not", which costs a listing, never a missed project.
        """
        includes_within = not other.include or (
            bool(self.include) and set(self.include) <= set(other.include)
        )
        return includes_within and set(self.exclude) >= set(other.exclude)

    def to_json(self) -> dict[str, list[str]]:
        return {"include": list(self.include), "exclude": list(self.exclude)}

    @classmethod
    def from_json(cls, doc: object) -> ProjectFilter:
        """Read what `to_json` wrote; ValueError if it is not that."""
        if not isinstance(doc, dict) or set(doc) - {"include", "exclude"}:
            raise ValueError("bad 'filters'")
        lists = [doc.get("include", []), doc.get("exclude", [])]
        for patterns in lists:
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                raise ValueError("bad 'filters'")
        return cls.of(*lists)

    def describe(self) -> str:
        """One line for the log: what the filter admits."""
        if self.everything:
            return "every project"
        parts = []
        if self.include:
            parts.append("include " + " ".join(self.include))
        if self.exclude:
            parts.append("exclude " + " ".join(self.exclude))
        return ", ".join(parts)
