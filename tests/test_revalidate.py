"""--revalidate-period: pages PyPI changed without a changelog entry, found and delivered.

The planning is pure (`pypi_index_mirror.sync.revalidate`); the rest runs the
mirror against the stand-ins, where archiving writes no journal entry (as in
warehouse) and pages carry warehouse's ETag, so an unchanged page costs a 304.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import random
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import requests

from pypi_index_mirror.mirror.roots import (
    iter_root_index,
    render_json_root_lines,
    render_root_lines,
    slice_root_index,
)
from pypi_index_mirror.mirror.state import load_state, save_state
from pypi_index_mirror.ops.cli import format_duration, parse_duration
from pypi_index_mirror.ops.settings import config_from
from pypi_index_mirror.sync.revalidate import Cursor, cursor_after, due, plan
from pypi_index_mirror.upstream.client import conditional_headers, etag_of
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import FakeRstuf
from tests.mirror_helpers import (
    Mirror,
    assert_consistent,
    mirror_view,
    signed_mirror,
    upstream_json_page,
    upstream_page,
)

WEEK = 7 * 86400.0
RSTUF_FAST = ["--rstuf-poll", "0.05"]


# --- the pure planning


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("90", 90), ("15m", 900), ("6h", 21600), ("7d", WEEK), ("2w", 2 * WEEK),
     ("0", 0), (" 1.5h ", 5400)],
)  # fmt: skip
def test_durations_are_read_in_every_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1h", "h", "1e400", "nan", "3y"])
def test_a_bad_duration_is_refused_with_the_text_named(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_are_shown_as_they_are_written() -> None:
    assert [format_duration(s) for s in (WEEK, 21600, 90, 0, 1.5)] == [
        "7d",
        "6h",
        "90s",
        "0",
        "1.5s",
    ]


def test_the_option_is_settable_everywhere_and_out_of_range_values_are_refused(
    tmp_path: Path,
) -> None:
    from pypi_index_mirror.ops.command import build_parser

    assert config_from([], build_parser(), {}).revalidate_period == WEEK
    assert config_from(["--revalidate-period", "6h"], build_parser(), {}).revalidate_period == 21600
    env = {"PYPI_MIRROR_REVALIDATE_PERIOD": "0"}
    assert config_from([], build_parser(), env).revalidate_period == 0
    toml = tmp_path / "c.toml"
    toml.write_text('revalidate-period = "1d"\n')
    assert config_from(["--config", str(toml)], build_parser(), {}).revalidate_period == 86400
    with pytest.raises(SystemExit):
        config_from(["--revalidate-period", "5s"], build_parser(), {})


def test_an_hourly_run_checks_a_168th_of_the_mirror_with_a_weekly_period() -> None:
    total, start = 700_000, 1_000_000.0
    cursor = Cursor("", start, total)
    checked = 0
    for hour in range(1, 169):
        step = plan(cursor, total, start + hour * 3600, WEEK)
        checked += step.count
        cursor = step.cursor
        assert step.count in (4166, 4167)
    assert checked == total  # fractions carried, none lost: every page once a week


def test_a_run_after_a_long_pause_does_one_periods_worth_and_restarts_the_clock() -> None:
    step = plan(Cursor("m", 0.0, 1000), 1000, 30 * 86400.0, WEEK)
    assert step.count == 1000 and step.cursor.at == 30 * 86400.0
    capped = plan(Cursor("m", 0.0, 1000), 1000, 30 * 86400.0, WEEK, limit=100)
    assert capped.count == 100
    assert capped.cursor.at == pytest.approx(30 * 86400.0 - WEEK + 100 * WEEK / 1000)


def test_less_than_a_page_due_checks_none_and_keeps_the_time() -> None:
    step = plan(Cursor("m", 100.0, 10), 10, 100.0 + WEEK / 20, WEEK)
    assert step.count == 0 and step.cursor.at == 100.0
    assert plan(Cursor(), 10, 5.0, WEEK) == plan(Cursor(), 10, 5.0, WEEK)
    first = plan(Cursor(), 10, 5.0, WEEK)  # the first revalidation starts the clock
    assert first.count == 0 and first.cursor.at == 5.0
    assert plan(Cursor("m", 0.0, 10), 10, WEEK, 0).count == 0  # period 0: off


def next_slice(
    names: Iterable[tuple[str, str]], after: str, count: int
) -> tuple[list[tuple[str, str]], int]:
    """The rule a run's slice follows, by walking every member: the `count` members
    following `after` in sorted `names`, wrapping round to the first.

    `names` are (normalized, display) pairs in sorted order, as the mirror's
    root index streams them; only `count` of them are ever held (twice: those
    after the cursor and those from the start, for the wrap). Returns the slice
    in order and how many members `names` had (the next `plan`'s total).
    """
    chosen: list[tuple[str, str]] = []
    head: list[tuple[str, str]] = []  # from the start, should the slice wrap round
    total = 0
    for member in names:
        total += 1
        if count <= 0:
            continue
        if member[0] > after and len(chosen) < count:
            chosen.append(member)
        elif len(head) < count and member[0] <= after:
            head.append(member)
    if len(chosen) < count:
        seen = {name for name, _ in chosen}
        chosen += [member for member in head if member[0] not in seen][: count - len(chosen)]
    return chosen, total


def test_the_slice_follows_the_cursor_and_wraps_round() -> None:
    names = [(n, n.upper()) for n in ("a", "b", "c", "d", "e")]
    assert next_slice(iter(names), "b", 2) == ([("c", "C"), ("d", "D")], 5)
    assert next_slice(iter(names), "d", 3) == ([("e", "E"), ("a", "A"), ("b", "B")], 5)
    assert next_slice(iter(names), "", 9) == (names, 5)  # never a name twice
    assert next_slice(iter(names), "zz", 1) == ([("a", "A")], 5)
    assert next_slice(iter(names), "a", 0) == ([], 5)
    chosen, _ = next_slice(iter(names), "d", 3)
    assert cursor_after(chosen, Cursor("d", 7.0, 5)) == Cursor("b", 7.0, 5)


def test_the_slice_read_from_the_root_page_is_the_slice_of_its_members() -> None:
    """A run takes its slice from a root in blocks (a binary search around the cursor,
    the rest only counted): the same slice and total as walking every member, from the
    HTML root and from the JSON root (a json-only mirror's) alike."""
    rng = random.Random(3)
    for _ in range(300):
        names = sorted(rng.sample([f"p-{i:02d}" for i in range(60)], rng.randint(0, 30)))
        after = rng.choice(["", "zz", f"p-{rng.randrange(60):02d}", f"p-{rng.randrange(60):02d}x"])
        count = rng.randint(0, 35)
        block = rng.choice([1, 50, 200, 1 << 20])
        members = [(name, rng.choice([name.upper(), f"{name}&<"])) for name in names]
        page = b"".join(render_root_lines(members))
        expected = next_slice(iter_root_index(page.splitlines(keepends=True)), after, count)
        assert slice_root_index(io.BytesIO(page), after, count, block) == expected
        assert slice_root_index(io.BytesIO(page), after, 0, block) == ([], len(members))
        # the JSON root's lines carry display names (normalizing to the name) and serials
        spellings = [str.upper, lambda n: n.replace("-", "_"), lambda n: n.replace("-", ".")]
        shown = [(name, rng.choice(spellings)(name)) for name in names]
        page = b"".join(render_json_root_lines((n, d, 7) for n, d in shown))
        found = slice_root_index(io.BytesIO(page), after, count, block, json_root=True)
        assert found == next_slice(iter(shown), after, count)


def test_the_cursor_is_three_values_in_state_json(tmp_path: Path) -> None:
    assert Cursor.from_json(Cursor("numpy", 12.5, 3).to_json()) == Cursor("numpy", 12.5, 3)
    bad: object
    for bad in ({"after": "Not Normal"}, {"at": "yesterday"}, {"total": -1}, []):
        with pytest.raises(ValueError):
            Cursor.from_json(bad)
    from pypi_index_mirror.mirror.state import State

    path = tmp_path / "state.json"
    save_state(path, State(serial=1, revalidation=Cursor("numpy", 12.5, 3)))
    assert load_state(path).revalidation == Cursor("numpy", 12.5, 3)


def test_a_watch_process_revalidates_every_few_minutes() -> None:
    assert due(Cursor(), 10.0, WEEK, 300)
    assert not due(Cursor("a", 100.0, 5), 399.0, WEEK, 300)
    assert due(Cursor("a", 100.0, 5), 400.0, WEEK, 300)
    assert not due(Cursor("a", 100.0, 5), 10_000.0, 0, 300)


def test_the_etag_is_the_one_warehouse_derives_from_the_body() -> None:
    body = b"<!DOCTYPE html>\n<html>hello</html>"
    # WebOb's Response.md5_etag(), as warehouse's conditional_http_tween calls it
    expected = base64.b64encode(hashlib.md5(body).digest()).decode().strip("=")
    assert etag_of(body) == f'"{expected}"' == '"tC1qrbE6ncZ6xMiIWuOWoQ"'
    assert conditional_headers(body) == (
        'If-None-Match: "tC1qrbE6ncZ6xMiIWuOWoQ"',
        "Accept-Encoding: identity",
    )


# --- the stand-in does what warehouse does


def test_the_stand_in_sends_etags_and_a_304_that_keeps_the_serial(pypi: FakePyPI) -> None:
    url = f"{pypi.url}/simple/numpy/"
    first = requests.get(url, timeout=10)
    assert first.headers["ETag"] == etag_of(first.content)
    again = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["X-PyPI-Last-Serial"] == first.headers["X-PyPI-Last-Serial"]
    assert again.headers["ETag"] == first.headers["ETag"]
    weak = requests.get(url, headers={"If-None-Match": 'W/"x", W/' + first.headers["ETag"]})
    assert weak.status_code == 304
    json_page = requests.get(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    assert json_page.headers["ETag"] == etag_of(json_page.content) != first.headers["ETag"]
    other = requests.get(url, headers={"If-None-Match": json_page.headers["ETag"]}, timeout=10)
    assert other.status_code == 200 and other.content == first.content


def test_archiving_and_unarchiving_write_no_journal_entry(pypi: FakePyPI) -> None:
    serial, journal = pypi.project_serial("numpy"), len(pypi.journal)
    before = upstream_page(pypi.url, "numpy")
    assert pypi.archive_project("numpy") == serial
    archived = upstream_page(pypi.url, "numpy") or b""
    assert b'content="archived"' in archived
    assert b'"status":"archived"' in (upstream_json_page(pypi.url, "numpy") or b"").replace(
        b" ", b""
    )
    assert pypi.unarchive_project("numpy") == serial
    assert upstream_page(pypi.url, "numpy") == before
    assert len(pypi.journal) == journal and pypi.project_serial("numpy") == serial


# --- the mirror


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(step=0.02) as fake:
        yield fake


def make_due(mirror: Mirror, seconds: float) -> None:
    """Move the revalidation clock back, as if the last revalidation were `seconds` ago."""
    state = load_state(mirror.state)
    assert state.revalidation.at is not None  # the first sync started it
    state.revalidation = dataclasses.replace(state.revalidation, at=time.time() - seconds)
    save_state(mirror.state, state)


def not_modified(pypi: FakePyPI) -> int:
    return sum(1 for r in pypi.requests if r.kind == "page" and r.status == 304)


def test_a_silent_archive_is_revalidated_written_and_signed(
    tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    mirror = signed_mirror(tmp_path, pypi.url, rstuf)
    pypi.archive_project("numpy")  # no journal entry: the changelog never names it
    assert mirror.run(*RSTUF_FAST) == 0
    assert b'content="archived"' not in (mirror.page("numpy") or b"")  # not due yet
    make_due(mirror, WEEK)  # a week since: every page is due
    pypi.reset_log()
    assert mirror.run(*RSTUF_FAST) == 0
    assert not_modified(pypi) == 4  # the other four pages cost a 304 each
    assert pypi.pages_served == 1
    assert mirror.page("numpy") == upstream_page(pypi.url, "numpy")
    assert b'content="archived"' in (mirror.page("numpy") or b"")
    assert rstuf.view == mirror_view(mirror.layout)  # RSTUF signs the archived page
    assert_consistent(mirror)
    state = load_state(mirror.state)
    assert not state.outbox.dirty and not state.outbox.tasks
    assert state.revalidation.after == "zope-interface" and state.revalidation.total == 5
    pypi.reset_log()
    assert mirror.run(*RSTUF_FAST) == 0  # just checked: nothing due
    assert pypi.count("page") == 0


def test_revalidation_off_leaves_a_silent_change_alone(
    tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    mirror = signed_mirror(tmp_path, pypi.url, rstuf)
    pypi.archive_project("numpy")
    make_due(mirror, WEEK)
    pypi.reset_log()
    assert mirror.run(*RSTUF_FAST, "--revalidate-period", "0") == 0
    assert b'content="archived"' not in (mirror.page("numpy") or b"")
    assert pypi.count("page") == 0


@pytest.mark.parametrize("form", ["all", "json"])
def test_a_share_of_the_pages_each_run_in_every_form(
    tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf, form: str
) -> None:
    """The slice comes from the HTML root, or from the JSON root of a json-only mirror."""
    options = ("--simple-format", form, "--revalidate-period", "1d")
    mirror = signed_mirror(tmp_path, pypi.url, rstuf, "--simple-format", form)
    pypi.archive_project("zope.interface")
    pypi.archive_project("django")
    # 2/5 of a day's period elapsed: two projects (sorted after the cursor: django, foo-bar)
    make_due(mirror, 0.4 * 86400 + 60)
    pypi.reset_log()
    assert mirror.run(*RSTUF_FAST, *options) == 0
    assert pypi.count_pages() == (4 if form == "all" else 2)  # two projects, each form
    if form == "all":
        assert b'content="archived"' in (mirror.page("django") or b"")
        assert b'content="archived"' not in (mirror.page("zope-interface") or b"")  # not yet
    json_page = mirror.layout.project_page("django", "index.v1_json").read_bytes()
    assert json_page == upstream_json_page(pypi.url, "django")
    zope = mirror.layout.project_page("zope-interface", "index.v1_json")
    assert zope.read_bytes() != upstream_json_page(pypi.url, "zope-interface")  # not yet
    assert load_state(mirror.state).revalidation.after == "foo-bar"
    make_due(mirror, 86400)
    assert mirror.run(*RSTUF_FAST, *options) == 0
    assert zope.read_bytes() == upstream_json_page(pypi.url, "zope-interface")
    if form == "all":
        assert b'content="archived"' in (mirror.page("zope-interface") or b"")
    assert rstuf.view == mirror_view(mirror.layout)
    assert_consistent(mirror)


def test_a_304_without_the_serial_header_takes_the_held_pages_serial(pypi: FakePyPI) -> None:
    """Warehouse keeps X-PyPI-Last-Serial on a 304; a CDN that drops it is read from the
    held page instead, in either form (a 304 to an unconditional GET stays an error)."""
    from pypi_index_mirror.ops.settings import Config
    from pypi_index_mirror.upstream.client import PypiClient
    from pypi_index_mirror.upstream.errors import UpstreamError
    from pypi_index_mirror.upstream.transport import PageAnswer, ResponseHeaders

    client = PypiClient(pypi.url, Config(pypi_url=pypi.url))
    bare = ResponseHeaders(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n')
    html = upstream_page(pypi.url, "numpy") or b""
    json_page = upstream_json_page(pypi.url, "numpy") or b""
    serial = pypi.project_serial("numpy")
    for known, json_form in ((html, False), (json_page, True)):
        page = client.read_page("numpy", PageAnswer(304, bare, b""), known, json_form)
        assert (page.body, page.serial) == (known, serial)
        assert page.facts is not None and page.facts.project_status == "active"
    assert client.not_modified == 2
    with pytest.raises(UpstreamError, match="304"):
        client.read_page("numpy", PageAnswer(304, bare, b""), None, False)
    client.close()


ROOT_READS: list[str] | None = None  # paths opened while a test counts them


def _count_opens(event: str, args: tuple[object, ...]) -> None:
    if ROOT_READS is not None and event == "open" and isinstance(args[0], str | Path):
        ROOT_READS.append(str(args[0]))


sys.addaudithook(_count_opens)  # audit hooks stay for the process: it counts only when asked


def test_a_revalidation_that_moves_nothing_leaves_the_roots_an_update_merged(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    """The update's merge already holds its changes: the revalidation after it in the same
    run reads the root to choose its slice, and merges it again only for what it moved
    (at PyPI's size each merge is a pass over 700,000 lines)."""
    global ROOT_READS
    mirror = Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)
    assert mirror.run("--no-rstuf") == 0
    pypi.create_project("brand-new")  # the update changes the root's membership
    make_due(mirror, 0.4 * 86400 + 60)  # two unchanged projects due: two 304s
    root = str(mirror.layout.root_page)
    ROOT_READS = []
    try:
        assert mirror.run("--no-rstuf", "--revalidate-period", "1d") == 0
        opened = ROOT_READS.count(root)
    finally:
        ROOT_READS = None
    assert b"brand-new" in mirror.layout.root_page.read_bytes()
    assert not_modified(pypi) == 2
    # two by the update (its merge, the old root's digest), two by the revalidation counting
    # and choosing its slice; merging again for the update's changes would add two more
    assert opened == 4
