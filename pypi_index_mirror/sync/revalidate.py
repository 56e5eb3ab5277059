"""Revalidation: which of the mirror's pages a run checks again, though the changelog is silent.

Warehouse changes some pages without a journal entry, so the serial does not
move and the changelog never names the project: archiving and unarchiving a
project (PEP 792's ``project-status``), and template changes that rewrote
every page. A mirror that only follows the changelog keeps serving (and RSTUF
keeps signing) the old bytes until a ``--full-check`` re-fetches everything.

Revalidation spreads that full check over a period (``--revalidate-period``):
each run re-checks the share of the mirror's projects that the time since the
previous revalidation is of the period, in sorted-name order from where the
last one stopped, so every page is seen again within one period however often
the tool runs, and a run after a long pause does at most one period's worth.
The bookkeeping is a `Cursor` of three values in state.json, not a timestamp
per page.

Each check is a conditional GET: warehouse's ETag is the MD5 of the body
(Pyramid's ``Response.md5_etag``, base64 without padding, quoted), so the
mirror derives it from the bytes it holds and an unchanged page costs a 304
with no body. Everything here is pure: no clock, no disk, no network.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A --watch process revalidates at most this often (seconds): each revalidation reads the
# mirror's root index to find its slice (0.06 s at PyPI's size) and merges what changed.
WATCH_REVALIDATE_EVERY = 300.0


@dataclass(frozen=True)
class Cursor:
    """Where revalidation stands, as kept in state.json.

    `after`: the last normalized name checked ("" : start from the first);
    `at`: the moment (epoch seconds) the pages checked so far account for,
    None before the first revalidation; `total`: how many projects the mirror
    listed when the last slice was chosen (0: unknown, count them first).
    """

    after: str = ""
    at: float | None = None
    total: int = 0

    def to_json(self) -> dict[str, object]:
        return {"after": self.after, "at": self.at, "total": self.total}

    @classmethod
    def from_json(cls, doc: object) -> Cursor:
        """Read one back; raises ValueError on anything this module did not write."""
        if not isinstance(doc, dict):
            raise ValueError("bad 'revalidation'")
        after, at, total = doc.get("after", ""), doc.get("at"), doc.get("total", 0)
        if not isinstance(after, str) or (after and not re.fullmatch(r"[a-z0-9-]+", after)):
            raise ValueError("bad 'revalidation.after'")
        if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
            raise ValueError("bad 'revalidation.at'")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError("bad 'revalidation.total'")
        return cls(after, None if at is None else float(at), total)


@dataclass(frozen=True)
class Plan:
    """What one run revalidates: `count` projects, and the cursor once they are checked."""

    count: int
    cursor: Cursor  # `after` is filled in from the names chosen (`cursor_after`)


def plan(cursor: Cursor, total: int, now: float, period: float, limit: int | None = None) -> Plan:
    """How many of the mirror's `total` projects to check now, and the time they account for.

    The share is (time since `cursor.at`) / `period`, capped at one period (every
    page once). The cursor's time moves on by exactly what the pages checked
    account for, so fractions are carried to the next run, never lost: a run
    whose share is under one page checks none and leaves the time where it was.
    The first revalidation (no `at` yet) starts the clock and checks nothing.
    `limit` caps one run's pages (a --watch cycle), the rest following later.
    """
    if period <= 0 or total <= 0 or cursor.at is None:
        return Plan(0, Cursor(cursor.after, now if cursor.at is None else cursor.at, total))
    elapsed = max(0.0, now - cursor.at)
    if elapsed >= period:  # a long pause: one period's worth, and the clock restarts now
        count = total if limit is None else min(total, limit)
        at = now if count == total else now - period + count * period / total
        return Plan(count, Cursor(cursor.after, at, total))
    count = math.floor(total * elapsed / period)
    if limit is not None:
        count = min(count, limit)
    return Plan(count, Cursor(cursor.after, cursor.at + count * period / total, total))


def cursor_after(chosen: list[tuple[str, str]], planned: Cursor) -> Cursor:
    """The cursor once `chosen` is checked: after the last name checked, time as planned."""
    if not chosen:
        return planned
    return Cursor(chosen[-1][0], planned.at, planned.total)


def due(cursor: Cursor, now: float, period: float, every: float) -> bool:
    """Whether a --watch process revalidates now: on, and `every` seconds since the last."""
    return period > 0 and (cursor.at is None or now - cursor.at >= min(every, period))
