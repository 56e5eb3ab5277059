"""pypi_mirror.py against the stand-in PyPI: full sync, every journal action, resumption."""

from __future__ import annotations

import glob
import io
import random
import signal
import time
from pathlib import Path

import pytest

from pypi_index_mirror.mirror import roots as root_index
from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.store import mirror_lock
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops import command as pypi_mirror
from pypi_index_mirror.ops import options, settings
from pypi_index_mirror.sync.refresh import Refresher
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import (
    Mirror,
    assert_consistent,
    assert_mirror_matches_upstream,
    files_outside,
    page_filenames,
    upstream_listing,
    upstream_page,
)


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    return Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)


def synced(mirror: Mirror) -> Mirror:
    assert mirror.run() == 0
    return mirror


# --- first sync -------------------------------------------------------------------


def test_first_sync_copies_every_page_byte_for_byte(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    assert mirror.serial() == pypi.last_serial
    assert sorted(mirror.root_projects()) == [
        "django",
        "foo-bar",
        "numpy",
        "requests",
        "zope-interface",
    ]
    assert mirror.root_projects()["zope-interface"] == "zope.interface"
    state = load_state(mirror.state)
    assert not state.outbox.dirty, "a first sync sends nothing to RSTUF (the CSV bootstraps it)"


def test_a_first_sync_keeps_at_most_workers_requests_in_flight(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    """One thread's page loop makes a first sync's requests (fetch_loop): no more at once
    than ``--workers``, whatever it could start. Six pages each held 0.3 s, two at a time,
    take three rounds."""
    pypi.add_release("six", "1.0")
    for name in pypi.project_names():
        pypi.inject(name, "slow", times=1, seconds=0.3)
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    started = time.monotonic()
    assert mirror.run("--workers", "2") == 0
    assert time.monotonic() - started >= 0.9
    assert_mirror_matches_upstream(mirror)


def test_root_index_is_deterministic(mirror: Mirror, tmp_path: Path) -> None:
    synced(mirror)
    other = Mirror(tmp_path / "other", tmp_path / "other.json", mirror.pypi_url)
    synced(other)
    assert other.layout.root_page.read_bytes() == mirror.layout.root_page.read_bytes()


def test_cli_prints_summary_and_exit_code(mirror: Mirror, pypi: FakePyPI) -> None:
    result = mirror.cli()
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stderr.splitlines() if " summary " in line]
    assert len(summary) == 1
    assert "added=5 " in summary[0]
    assert f"serial=None->{pypi.last_serial}" in summary[0]
    assert result.stdout == ""


# --- updates: each journal action --------------------------------------------------


def update(mirror: Mirror, pypi: FakePyPI) -> None:
    pypi.reset_log()
    assert mirror.run() == 0
    assert mirror.serial() == pypi.last_serial
    assert_mirror_matches_upstream(mirror)


ACTIONS = {
    "create": lambda p: p.create_project("Brand.New"),
    "new release": lambda p: p.add_release("numpy", "2.0", files=3),
    "remove file": lambda p: p.remove_file(
        "numpy", page_filenames(upstream_page(p.url, "numpy"))[0]
    ),
    "remove release": lambda p: p.remove_release("numpy", "1.0"),
    "yank": lambda p: p.yank_release("Django", "1.0", reason="broken"),
    "unyank": lambda p: (p.yank_release("Django", "1.0"), p.unyank_release("Django", "1.0")),
    "role": lambda p: p.add_role("requests", "alice", "Maintainer"),
    "quarantine": lambda p: p.quarantine_project("Foo_Bar"),
    "quarantine cleared": lambda p: (
        p.quarantine_project("Foo_Bar"),
        p.clear_quarantine("Foo_Bar"),
    ),
    "remove project": lambda p: p.remove_project("Django"),
    "rename": lambda p: p.rename_project("requests", "requests3"),
    "removed and created again": lambda p: (
        p.remove_project("numpy"),
        p.create_project("NumPy"),
        p.add_release("NumPy", "9.0", files=1),
    ),
}


# The pages each action must make an update fetch: each exactly once, and no other page
# (the others default to numpy). A role change alters nothing but a page's serial
# trailer: the one fetch is what shows the update read it from the changelog.
FETCHED = {
    "create": {"brand-new"},
    "rename": {"requests", "requests3"},
    "removed and created again": {"numpy"},
    "role": {"requests"},
    "quarantine": {"foo-bar"},
    "quarantine cleared": {"foo-bar"},
    "remove project": {"django"},
    "yank": {"django"},
    "unyank": {"django"},
}


@pytest.mark.parametrize("action", ACTIONS)
def test_each_journal_action_is_mirrored(mirror: Mirror, pypi: FakePyPI, action: str) -> None:
    synced(mirror)
    ACTIONS[action](pypi)
    pypi.reset_log()
    assert mirror.run() == 0
    fetched = FETCHED.get(action, {"numpy"})
    assert {name: pypi.count_pages(name) for name in fetched} == dict.fromkeys(fetched, 1)
    assert pypi.count_pages() == len(fetched), "pages the changelog did not name were fetched"
    assert mirror.serial() == pypi.last_serial
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def test_remove_file_keeps_the_project(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    filename = page_filenames(upstream_page(pypi.url, "numpy"))[0]
    pypi.remove_file("numpy", filename)
    update(mirror, pypi)
    page = mirror.page("numpy")
    assert page is not None and filename.encode() not in page
    assert "numpy" in mirror.root_projects()


def test_remove_project_removes_its_page_and_root_entry(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.remove_project("Django")
    assert mirror.run("--grace", "0") == 0
    assert mirror.page("django") is None
    assert "django" not in mirror.root_projects()
    # a mirror without RSTUF (--no-rstuf): no TUF metadata names the old copy, it goes
    assert not mirror.layout.project_dir("django").exists()


def test_changes_wait_in_the_outbox_while_rstuf_is_not_configured(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    synced(mirror)
    mirror.had_rstuf = True  # RSTUF is meant to be there: the run owes it the changes
    pypi.remove_project("Django")
    pypi.rename_project("requests", "requests3")
    assert mirror.run("--grace", "0") == cli_support.EXIT_PARTIAL
    assert mirror.page("django") is None and mirror.page("requests3") is not None
    state = load_state(mirror.state)
    owed = {"simple/django/index.html", "simple/requests/index.html"}
    assert owed | {"simple/requests3/index.html", "index.html"} <= state.outbox.dirty
    # RSTUF still signs the old pages: their copies stay
    copies = list(mirror.layout.project_dir("django").iterdir())
    assert len(copies) == 1 and copies[0].name.endswith(".index.html")


def test_quarantined_project_keeps_page_but_leaves_root(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.quarantine_project("Foo_Bar")
    update(mirror, pypi)
    page = mirror.page("foo-bar")
    assert page is not None and b'content="quarantined"' in page
    assert "foo-bar" not in mirror.root_projects()


def test_rename_removes_old_and_adds_new(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.rename_project("requests", "requests3")
    update(mirror, pypi)
    assert mirror.page("requests") is None
    assert mirror.page("requests3") is not None


def test_update_fetches_exactly_the_projects_the_changelog_mentions(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    synced(mirror)
    pypi.add_release("numpy", "2.0")
    pypi.add_release("numpy", "2.1")
    pypi.yank_release("Django", "1.0")
    pypi.reset_log()
    assert mirror.run() == 0
    assert pypi.count_pages() == 2
    assert pypi.count("changelog_since_serial") == 1
    assert pypi.count("list_packages_with_serial") == 0


def test_nothing_changed_means_no_page_requests(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    root_before = mirror.layout.root_page.stat().st_mtime_ns
    pypi.reset_log()
    assert mirror.run() == 0
    assert pypi.count_pages() == 0
    assert mirror.layout.root_page.stat().st_mtime_ns == root_before


def test_changelog_is_paged_across_the_cap(tmp_path: Path) -> None:
    with FakePyPI(page_cap=3) as pypi:
        pypi.add_release("alpha", "1.0")
        mirror = synced(Mirror(tmp_path / "m", tmp_path / "s.json", pypi.url))
        for index in range(5):
            pypi.add_release(f"proj{index}", "1.0", files=1)  # 3 rows each: 15 rows
        pypi.reset_log()
        assert mirror.run() == 0
        assert pypi.count("changelog_since_serial") >= 5
        assert mirror.serial() == pypi.last_serial
        assert_mirror_matches_upstream(mirror)


# --- stale pages and failures -----------------------------------------------------------


def test_stale_page_is_retried_until_current(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "stale", times=2)
    update(mirror, pypi)


def test_page_that_stays_stale_is_kept_pending(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    old = mirror.page("numpy")
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    pypi.inject("numpy", "stale", times=100)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    assert mirror.page("numpy") == old, "stale bytes must not replace the page"
    assert mirror.page("django") == upstream_page(pypi.url, "django")
    state = load_state(mirror.state)
    assert state.serial == pypi.last_serial
    assert list(state.pending) == ["numpy"]
    pypi.clear_faults()
    pypi.reset_log()
    assert mirror.run() == 0
    assert pypi.count_pages() == 1
    assert_mirror_matches_upstream(mirror)
    assert load_state(mirror.state).pending == {}


def test_failing_project_does_not_abort_the_run(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    pypi.inject("numpy", "status", times=100, code=503)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    assert mirror.page("django") == upstream_page(pypi.url, "django")
    assert "numpy" in load_state(mirror.state).pending


def test_unreachable_pypi_fails_without_touching_state(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    before = mirror.state.read_bytes()
    pypi.stop()  # the same upstream, gone (another URL would be another upstream: refused)
    result = mirror.cli("--retries", "0")
    assert result.returncode == cli_support.EXIT_FAILED
    *_, error, summary = result.stderr.strip().splitlines()
    assert " ERROR " in error and "connection failed" in error, result.stderr
    assert " summary " in summary and summary.endswith(" exit=1"), summary
    assert mirror.state.read_bytes() == before


# --- interruption -----------------------------------------------------------------------------


def test_interrupted_first_sync_resumes_without_refetching(tmp_path: Path) -> None:
    """Killed with its first batch of pages written and three pages still hanging."""
    batch = Refresher.BATCH
    with FakePyPI() as pypi:
        pypi.populate(batch + 20, seed=1, max_files=2)
        slow = [f"slow{index}" for index in range(3)]
        for name in slow:  # each holds a worker; the fourth fetches the first batch
            pypi.add_release(name, "1.0")
            pypi.inject(name, "slow", times=1, seconds=120)  # the run cannot end meanwhile
        mirror = Mirror(tmp_path / "m", tmp_path / "s.json", pypi.url)
        process = mirror.popen("--workers", "4")
        pages = mirror.layout.simple_dir / "*" / "index.html"
        try:
            deadline = time.monotonic() + 60
            while len(glob.glob(str(pages))) < batch:  # the slow pages hold the run meanwhile
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the first batch was never written"
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate()
        assert process.returncode == -signal.SIGKILL, "the run ended before the kill"
        assert not mirror.layout.root_page.exists()
        written = len(glob.glob(str(pages)))  # a first sync's workers write as pages come
        assert written >= batch
        pypi.clear_faults()
        pypi.reset_log()
        assert mirror.run() == 0
        assert {name: pypi.count_pages(name) for name in slow} == dict.fromkeys(slow, 1)
        fetched_again = pypi.count_pages() - (len(glob.glob(str(pages))) - written)
        assert fetched_again == 0, "pages written before the kill were fetched again"
        # complete and byte for byte (a sample: 1,000 more page requests would cost seconds)
        listing = upstream_listing(pypi.url)
        assert mirror.root_projects() == listing
        # a quarantined project keeps its page but is not listed (it was current on disk,
        # not fetched again: its page said so, not list_packages_with_serial, which lists it)
        assert len(glob.glob(str(pages))) == len(pypi.listing()) > len(listing)
        for name in [*slow, *random.Random(1).sample(sorted(listing), 20)]:
            assert mirror.page(name) == upstream_page(pypi.url, name), name
        assert_consistent(mirror)


# --- hostile input, lock, usage ----------------------------------------------------------------


# Control characters cannot travel in XML 1.0 at all (such an answer is malformed XML and
# the run fails cleanly); test_mirror_store covers them at the name gate.
HOSTILE = ["..", ".", "../x", "a/b", "/abs", "a\\b", "x" * 1000, "n\u03c5mpy", "", "GOOD"]


def test_hostile_names_are_skipped_and_touch_nothing(tmp_path: Path) -> None:
    with FakePyPI() as pypi:
        pypi.add_release("good", "1.0")
        for name in HOSTILE:
            pypi.add_raw_listing_entry(name, 1)
        mirror = Mirror(tmp_path / "m", tmp_path / "s.json", pypi.url)
        assert mirror.run() == 0
        for name in HOSTILE:
            pypi.add_journal_row(name, None, "create")
        pypi.add_release("GOOD", "2.0")
        assert mirror.run() == 0
        assert files_outside(tmp_path, mirror.layout.root) == [tmp_path / "s.json"]
        assert sorted(p.name for p in mirror.layout.simple_dir.iterdir()) == ["good"]


def test_second_run_exits_at_once_while_the_lock_is_held(mirror: Mirror) -> None:
    synced(mirror)
    with mirror_lock(mirror.layout.lock_path):
        result = mirror.cli()
    assert result.returncode == cli_support.EXIT_LOCKED
    assert "another run holds the mirror lock" in result.stderr


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (["--workers", "0"], "argument --workers: must be from 1 to"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_usage_error_exits_2_with_its_reason(mirror: Mirror, bad: list[str], words: str) -> None:
    result = mirror.cli(*bad)
    assert result.returncode == cli_support.EXIT_USAGE
    *lines, summary = result.stderr.splitlines()  # every run ends with its summary line
    assert lines[0].startswith("usage: pypi_mirror.py") and words in lines[-1], result.stderr
    assert " summary " in summary and summary.endswith(" exit=2"), summary
    assert result.stdout == ""
    assert not mirror.root.exists(), "a usage error touches nothing"


def test_corrupt_state_is_refused_and_kept(mirror: Mirror) -> None:
    synced(mirror)
    mirror.state.write_text('{"schema": 1, "serial": ')
    result = mirror.cli()
    assert result.returncode == 1
    assert "corrupt" in result.stderr and "--full-check" in result.stderr
    assert mirror.state.read_text() == '{"schema": 1, "serial": '


def test_dry_run_changes_nothing(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    before_state = mirror.state.read_bytes()
    before = mirror.targets()
    pypi.reset_log()
    result = mirror.cli("--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert {"fetch numpy", "fetch django", "rstuf-add simple/numpy/index.html"} <= set(lines)
    assert "rstuf-remove simple/django/index.html" in lines
    assert pypi.count_pages() == 0, "a dry run plans from the changelog, it fetches no page"
    assert mirror.targets() == before
    assert mirror.state.read_bytes() == before_state


# --- full check ----------------------------------------------------------------------------------


def test_full_check_repairs_what_the_changelog_never_reports(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    synced(mirror)
    pypi.archive_project("numpy")  # no journal entry
    mirror.layout.project_page("django").write_bytes(b"damaged")
    assert mirror.run() == 0
    assert b"archived" not in (mirror.page("numpy") or b"")
    mirror.had_rstuf = True  # so that the repairs are owed to RSTUF
    assert mirror.run("--full-check") == cli_support.EXIT_PARTIAL
    assert_mirror_matches_upstream(mirror)
    dirty = load_state(mirror.state).outbox.dirty
    assert {"simple/numpy/index.html", "simple/django/index.html"} <= dirty


def test_full_check_removes_only_projects_that_404(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.quarantine_project("Foo_Bar")  # leaves the listing, keeps its page
    stray = mirror.layout.project_dir("stray")
    stray.mkdir()
    (stray / "index.html").write_bytes(b"<html>not on PyPI</html>")
    assert mirror.run("--full-check") == 0
    assert not stray.joinpath("index.html").exists()
    assert mirror.page("foo-bar") == upstream_page(pypi.url, "foo-bar")
    assert "foo-bar" not in mirror.root_projects()


# --- operator interface


def test_help_explains_every_option_exit_codes_and_environment() -> None:
    text = pypi_mirror.build_parser().format_help()
    for option in options.OPTIONS:
        assert option.help and f"--{option.key}" in text, option.key
    for needle in ("RSTUF_API_TOKEN", "PYPI_URL", "RSTUF_API_URL", "75", "lock"):
        assert needle in text


def test_quiet_run_under_cron_logs_only_problems(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.add_release("numpy", "2.0")
    result = mirror.cli("-q")
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert " INFO summary added=0 updated=1 " in lines[-1]  # the summary ends every run
    assert all(" WARNING " in line for line in lines[:-1])  # -q: otherwise problems only
    assert "\r" not in result.stderr  # no progress bar without a terminal


def test_a_404_for_a_project_the_changelog_says_exists_is_retried(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    synced(mirror)
    pypi.create_project("Just-Created")
    pypi.add_release("Just-Created", "1.0")
    pypi.inject("just-created", "status", times=2, code=404)  # a CDN that has not caught up
    update(mirror, pypi)
    assert mirror.page("just-created") is not None


def test_a_404_that_stays_keeps_the_project_pending_not_lost(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    synced(mirror)
    pypi.add_release("numpy", "2.0")
    before = mirror.page("numpy")
    pypi.inject("numpy", "status", times=100, code=404)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    assert mirror.page("numpy") == before, "a 404 after 'new release' must not remove it"
    pending = load_state(mirror.state).pending["numpy"]
    assert pending.expect_page
    pypi.clear_faults()
    update(mirror, pypi)
    assert "numpy" not in load_state(mirror.state).pending


def test_a_project_removed_while_pending_is_removed(mirror: Mirror, pypi: FakePyPI) -> None:
    synced(mirror)
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "status", times=100, code=404)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    pypi.clear_faults()
    pypi.remove_project("numpy")
    update(mirror, pypi)
    assert mirror.page("numpy") is None


def test_root_index_merge_keeps_sorted_order_and_applies_every_change() -> None:
    current = [("a", "A"), ("c", "C"), ("e", "E<&>")]
    page = b"".join(root_index.render_root_lines(current))
    assert list(root_index.iter_root_index(page.splitlines(keepends=True))) == current
    changes = {"0": None, "b": "B", "c": None, "e": "E2", "z": "Z"}
    merged = list(root_index.merge_root(current, changes))
    assert merged == [("a", "A"), ("b", "B"), ("e", "E2"), ("z", "Z")]
    assert list(root_index.merge_root([], {"x": "X", "y": None})) == [("x", "X")]


def test_root_index_merged_as_bytes_is_the_page_merged_as_members() -> None:
    """An update merges the HTML root as bytes, copying untouched lines: the page must be
    exactly the one rendered from the merged members, whatever the changes."""
    rng = random.Random(7)
    for _ in range(200):
        names = sorted(rng.sample([f"p{i}" for i in range(40)], rng.randint(0, 20)))
        current = [
            (name, rng.choice([name.upper(), f"{name}<&>", f"{name}&amp;"])) for name in names
        ]
        changes: dict[str, str | None] = {
            f"p{i}": rng.choice([None, f"P{i}", f"p{i}&lt;"]) for i in rng.sample(range(40), 8)
        }
        page = b"".join(root_index.render_root_lines(current))
        lines = page.splitlines(keepends=True)
        lines.insert(rng.randint(0, len(lines)), b"<!-- no project line -->\n")
        expected = root_index.render_root_lines(
            root_index.merge_root(root_index.iter_root_index(lines), changes)
        )
        block = rng.choice([1, 40, 97, 1 << 20])  # blocks of a line or less, a few, the page
        merged = root_index.merge_root_lines(io.BytesIO(b"".join(lines)), changes, block)
        assert b"".join(merged) == b"".join(expected)
    last = b'    <a href="simple/a/">A</a>'  # a page cut short before its last newline
    cut_short = io.BytesIO(root_index.ROOT_HEADER + last)
    expected_page = root_index.render_root_lines([("a", "A"), ("b", "B")])
    assert b"".join(root_index.merge_root_lines(cut_short, {"b": "B"})) == b"".join(expected_page)


def test_both_scripts_default_to_the_same_mirror_and_state() -> None:
    from pypi_index_mirror.rstuf import bootstrap_csv as generate_csv

    ours = settings.config_from([], pypi_mirror.build_parser(), environ={})
    csv = generate_csv.parse_options(generate_csv.build_parser().parse_args([]), environ={})
    assert (ours.mirror_dir, ours.state_file) == (csv.mirror_dir, csv.state_path)
    assert ours.state_file == Path("state.json")  # the top level, beside the mirror directory
