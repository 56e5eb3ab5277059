"""What the mirror does with what warehouse really sends (issue 22, items 1-4).

Warehouse's JSON puts ``meta`` after the files, its pages come gzipped when asked, an index of
API 1.0 has no ``pypi:repository-version`` meta, and its cached project listing can be empty
or far behind: each is run here against the stand-in, which renders what warehouse renders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.store import JSON_PAGE_NAME
from pypi_index_mirror.mirror.writer import JSON_TAIL_READS
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.sync.plan import listing_refusal
from pypi_index_mirror.upstream.pages import json_page_serial
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import (
    Mirror,
    assert_mirror_matches_upstream,
    upstream_json_page,
    upstream_page,
)

JSON_ONLY = ("--simple-format", "json")
HOSTILE = 'evil"meta":{"_last-serial":999999,"api-version":"1.4"}}-1.0.tar.gz'


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    return Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)


def warehouse_json(document: dict) -> bytes:
    return (
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    ).encode()


# --- 1. the serial of a JSON page on disk ----------------------------------------------------


def test_json_page_serial_is_read_after_the_files_and_never_from_a_string() -> None:
    page = {
        "files": [{"filename": HOSTILE, "meta": {"_last-serial": 7}, "url": "u"}],
        "meta": {"_last-serial": 42, "api-version": "1.4"},
        "name": "x",
        "project-status": {"status": "active"},
        "versions": ['1.0"meta":{"_last-serial":5}', "ü"],
    }
    body = warehouse_json(page)
    assert body.startswith(b'{"files":[')
    assert json_page_serial(body) == 42
    # any tail that holds the top-level meta finds it; a shorter one finds nothing, never a
    # serial out of a file name, a version or a nested object
    for start in range(len(body)):
        assert json_page_serial(body[start:]) in (42, None), start
    spaced = json.dumps(page, indent=1).encode()  # another index's spacing
    assert json_page_serial(spaced) == 42
    del page["meta"]
    assert json_page_serial(warehouse_json(page)) is None  # only a nested one: unknown
    page["meta"] = {"_last-serial": True}
    assert json_page_serial(warehouse_json(page)) is None


def test_resuming_a_json_first_sync_fetches_only_what_it_lacks(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    """Warehouse's JSON begins ``{"files":[``: the resumed run must still see its pages current."""
    pypi.add_release("hostile", "1.0", files=[HOSTILE])
    # versions after meta longer than the tail reads: the whole page is read
    label = "a" * 200
    for index in range(JSON_TAIL_READS[-1] // len(label) + 1):
        pypi.add_release("many-versions", f"0.{index}+{label}", files=1)
    pypi.inject("requests", "status", times=100, code=503)
    assert mirror.run(*JSON_ONLY) == cli_support.EXIT_PARTIAL  # the first sync is unfinished
    assert mirror.serial() is None
    held = sorted(p.parent.name for p in mirror.layout.simple_dir.glob(f"*/{JSON_PAGE_NAME}"))
    assert "hostile" in held and "many-versions" in held and "requests" not in held
    long_page = mirror.layout.project_page("many-versions", JSON_PAGE_NAME).read_bytes()
    assert len(long_page) - long_page.rindex(b'"meta":') > JSON_TAIL_READS[-1]
    pypi.clear_faults()
    pypi.reset_log()
    assert mirror.run(*JSON_ONLY) == 0
    assert pypi.count_pages() == 1 and pypi.count_pages("requests") == 1
    for name in [*held, "requests"]:
        assert mirror.layout.project_page(name, JSON_PAGE_NAME).read_bytes() == (
            upstream_json_page(pypi.url, name)
        ), name


# --- 4. gzip: what is stored is what warehouse rendered ---------------------------------------


def test_gzipped_answers_are_stored_as_the_uncompressed_bytes(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    """libcurl (pages) and requests (XML-RPC) ask for gzip and get it; the files hold the
    page bytes warehouse rendered, never the compressed ones."""
    assert mirror.run("--simple-format", "all") == 0
    pages = [r for r in pypi.requests if r.kind == "page"]
    assert pages and all(r.gzipped for r in pages)
    assert all(r.gzipped for r in pypi.requests if r.xmlrpc_method == "list_packages_with_serial")
    assert_mirror_matches_upstream(mirror)
    for name in ("numpy", "django"):
        assert mirror.page(name) == pypi.page(name)
        json_page = mirror.layout.project_page(name, JSON_PAGE_NAME).read_bytes()
        assert json_page == pypi.page(name, json_form=True)


# --- 2. an index of API 1.0 ---------------------------------------------------------------------


def test_an_index_of_api_1_0_is_mirrored(mirror: Mirror, pypi: FakePyPI) -> None:
    """No ``pypi:repository-version`` meta: PEP 629 says assume 1.0, so the first sync ends."""
    pypi.create_project("no-files")  # no link to show it is a simple page: its title names it
    pypi.set_repository_version(None)
    assert b"repository-version" not in (upstream_page(pypi.url, "numpy") or b"")
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    empty = mirror.page("no-files")
    assert empty is not None and b"repository-version" not in empty


def test_an_index_of_api_2_is_still_refused(mirror: Mirror, pypi: FakePyPI) -> None:
    pypi.set_repository_version("2.0")
    result = mirror.cli()
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    assert "pypi:repository-version '2.0' is not 1.x" in result.stderr
    assert mirror.page("numpy") is None and mirror.serial() is None


# --- 3. an empty or shrunken listing ------------------------------------------------------------


def tree_snapshot(mirror: Mirror) -> dict[str, tuple[int, int]]:
    """Every file the mirror directory holds but the lock and status files, with its inode
    and mtime: a refused run must leave each as it was."""
    found = {}
    for path in mirror.root.rglob("*"):
        if path.is_file() and path.name not in (".lock", "status.json"):
            stat = path.stat()
            found[path.relative_to(mirror.root).as_posix()] = (stat.st_ino, stat.st_mtime_ns)
    return found


def refused_line(result) -> str:
    *_, error, summary = result.stderr.strip().splitlines()
    assert " ERROR " in error and summary.endswith(" exit=1"), result.stderr
    return error


@pytest.mark.parametrize("no_xmlrpc", [False, True])
def test_an_empty_listing_never_ends_a_first_sync(
    mirror: Mirror, pypi: FakePyPI, no_xmlrpc: bool
) -> None:
    pypi.serve_cached_listing({})  # warehouse's Redis cache, seen empty
    extra = ("--no-xmlrpc",) if no_xmlrpc else ()
    result = mirror.cli(*extra)
    assert result.returncode == cli_support.EXIT_FAILED
    source = "JSON root /simple/" if no_xmlrpc else "list_packages_with_serial"
    assert f"PyPI's {source} lists no project at all although its journal is at serial" in (
        refused_line(result)
    )
    assert "--trust-listing" in refused_line(result)
    assert not mirror.state.exists()
    assert not mirror.layout.served_dir.exists()
    assert pypi.count_pages() == 0
    # the cache catches up: the next run is the first sync it should have been
    pypi.serve_cached_listing(None)
    assert mirror.run(*extra) == 0
    assert_mirror_matches_upstream(mirror)


def test_a_full_check_refuses_a_listing_of_a_tenth_of_the_mirror(
    tmp_path: Path,
) -> None:
    with FakePyPI() as pypi:
        pypi.populate(200, seed=3, max_files=2)
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        state, tree = mirror.state.read_bytes(), tree_snapshot(mirror)
        tenth = dict(list(pypi.listing().items())[:20])
        pypi.serve_cached_listing(tenth)
        pypi.reset_log()
        result = mirror.cli("--full-check")
        assert result.returncode == cli_support.EXIT_FAILED
        assert (
            "PyPI's list_packages_with_serial lists 20 project(s), fewer than half of the "
            "200 this mirror holds: a stale cache, not the index; nothing was changed"
        ) in refused_line(result)
        assert mirror.state.read_bytes() == state and tree_snapshot(mirror) == tree
        assert pypi.count_pages() == 0
        # --dry-run refuses it alike; --trust-listing takes it (the index really shrank)
        assert mirror.run("--full-check", "--dry-run") == cli_support.EXIT_FAILED
        assert mirror.run("--full-check", "--trust-listing") == 0
        assert len(mirror.root_projects()) == 20


def test_a_listing_above_the_threshold_or_of_a_small_mirror_is_taken(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    """Half the mirror is enough; a mirror under 100 projects may lose most of them."""
    assert mirror.run() == 0
    for name in ("django", "numpy", "requests"):
        pypi.remove_project(name)
    assert mirror.run("--full-check") == 0
    assert sorted(mirror.root_projects()) == ["foo-bar", "zope-interface"]


def test_a_json_root_update_refuses_an_empty_root(mirror: Mirror, pypi: FakePyPI) -> None:
    """Without XML-RPC every update reads the root: an empty CDN copy fetches nothing."""
    assert mirror.run("--no-xmlrpc") == 0
    state = mirror.state.read_bytes()
    pypi.add_release("numpy", "2.0")
    pypi.serve_cached_listing({})
    pypi.reset_log()
    result = mirror.cli("--no-xmlrpc")
    assert "PyPI's JSON root /simple/ lists no project at all" in refused_line(result)
    assert mirror.state.read_bytes() == state and pypi.count_pages() == 0


def test_listing_refusal_rules() -> None:
    assert listing_refusal(0, 0, 0, 5) is not None  # empty, journal not
    assert listing_refusal(0, 0, 0, None) is None and listing_refusal(0, 0, 0, 0) is None
    assert listing_refusal(3, 0, 0, 5) is None  # the filter allows none of them: not empty
    assert listing_refusal(1000, 49, 99, 5) is None  # a small mirror may lose most
    assert listing_refusal(1000, 50, 100, 5) is None  # half is enough
    assert listing_refusal(1000, 49, 100, 5) == (
        "lists 49 project(s), fewer than half of the 100 this mirror holds"
    )


@pytest.mark.parametrize("form", ["html", "json"])
def test_a_current_quarantined_page_stays_out_of_the_roots_of_a_resumed_sync(
    mirror: Mirror, pypi: FakePyPI, form: str
) -> None:
    """list_packages_with_serial lists quarantined projects too (warehouse's XML-RPC): a
    resumed first sync that finds such a page current reads the status off the page."""
    pypi.quarantine_project("numpy")
    assert "numpy" in pypi.listing()
    pypi.inject("requests", "status", times=100, code=503)
    assert mirror.run("--simple-format", form) == cli_support.EXIT_PARTIAL
    pypi.clear_faults()
    pypi.reset_log()
    assert mirror.run("--simple-format", form) == 0
    assert pypi.count_pages("numpy") == 0  # current on disk: not fetched again
    assert mirror.layout.project_page(
        "numpy", "index.html" if form == "html" else JSON_PAGE_NAME
    ).exists()
    if form == "html":
        listed = set(mirror.root_projects())
    else:
        document = json.loads(mirror.layout.json_root_page.read_bytes())
        listed = {project["name"].lower() for project in document["projects"]}
    assert "numpy" not in listed and "requests" in listed


def test_the_empty_rule_counts_the_listing_before_the_filter(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    """A filter that admits none of PyPI's projects is not an empty listing; an empty
    listing is one whatever the filter."""
    assert mirror.run("--include", "no-such-*") == 0
    assert mirror.root_projects() == {}
    pypi.serve_cached_listing({})
    result = mirror.cli("--include", "no-such-*", "--full-check")
    assert "lists no project at all" in refused_line(result)
