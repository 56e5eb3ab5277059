"""What the mirror does with what warehouse really sends (issue 22, items 1-4).

Warehouse's JSON puts ``meta`` after the files, its pages come gzipped when asked, an index of
API 1.0 has no ``pypi:repository-version`` meta, and its cached project listing can be empty
or far behind: each is run here against the stand-in, which renders what warehouse renders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli_support
from mirror_store import JSON_PAGE_NAME
from mirror_writer import JSON_TAIL_READS, json_page_serial
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
    assert b"repository-version" not in upstream_page(pypi.url, "numpy")
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    assert b"repository-version" not in mirror.page("no-files")


def test_an_index_of_api_2_is_still_refused(mirror: Mirror, pypi: FakePyPI) -> None:
    pypi.set_repository_version("2.0")
    result = mirror.cli()
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    assert "pypi:repository-version '2.0' is not 1.x" in result.stderr
    assert mirror.page("numpy") is None and mirror.serial() is None
