"""Life without XML-RPC: following PyPI through its JSON root /simple/ (PEP 691)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
import requests

from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.upstream.client import is_disabled_fault
from pypi_index_mirror.upstream.json_root import JsonRootParser
from tests.fake_pypi import XMLRPC_OFF_MODES, FakePyPI
from tests.mirror_helpers import Mirror, assert_mirror_matches_upstream

V1_JSON = "application/vnd.pypi.simple.v1+json"
NO_XMLRPC = ("--no-xmlrpc",)


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    return Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)


def test_first_sync_and_update_without_xmlrpc(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*NO_XMLRPC) == 0
    assert pypi.count("xmlrpc") == 0 and pypi.count("root") == 1
    assert_mirror_matches_upstream(mirror)
    assert mirror.serial() == pypi.last_serial
    pypi.add_release("numpy", "2.0")
    pypi.create_project("Brand.New")
    pypi.remove_project("Django")
    pypi.quarantine_project("Foo_Bar")
    pypi.reset_log()
    assert mirror.run(*NO_XMLRPC) == 0
    assert pypi.count("xmlrpc") == 0 and pypi.count("root") == 1
    # numpy and brand-new moved past the mirror's serial; django and foo-bar left the listing
    fetched = {r.path for r in pypi.requests if r.kind == "page"}
    assert fetched == {f"/simple/{n}/" for n in ("numpy", "brand-new", "django", "foo-bar")}
    assert len(pypi.requests) == 5
    assert_mirror_matches_upstream(mirror)
    assert mirror.page("foo-bar") is not None, "a quarantined project keeps its page"
    assert mirror.page("django") is None
    assert mirror.serial() == pypi.last_serial
    pypi.reset_log()
    assert mirror.run(*NO_XMLRPC) == 0
    assert pypi.count_pages() == 0, "a project gone from the listing is fetched once"


def test_each_way_of_switching_xmlrpc_off_falls_back_once(tmp_path: Path, pypi: FakePyPI) -> None:
    for mode in XMLRPC_OFF_MODES:
        pypi.switch_on_xmlrpc()
        mirror = Mirror(tmp_path / mode, tmp_path / f"{mode}.json", pypi.url)
        assert mirror.run() == 0
        pypi.add_release("numpy", f"{mode}.0")
        pypi.switch_off_xmlrpc(mode)
        pypi.reset_log()
        result = mirror.cli()
        assert result.returncode == 0, result.stderr
        assert pypi.count("xmlrpc") == 1, mode  # the one call that found it gone
        assert pypi.count_pages() == 1
        said = [line for line in result.stderr.splitlines() if "JSON root /simple/" in line]
        assert len(said) == 1 and " WARNING " in said[0] and "unavailable" in said[0], mode
        assert_mirror_matches_upstream(mirror)


def test_a_first_sync_falls_back_too(mirror: Mirror, pypi: FakePyPI) -> None:
    pypi.switch_off_xmlrpc("disabled")
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)


def test_other_faults_are_not_mistaken_for_a_retired_api(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run() == 0
    pypi.inject("changelog_last_serial", "xmlrpc_fault", times=100, string="RuntimeError: boom")
    pypi.reset_log()
    assert mirror.run() == cli_support.EXIT_FAILED
    assert pypi.count("root") == 0
    assert is_disabled_fault(-32601, "server error; requested method not found")
    assert is_disabled_fault(-32500, "RuntimeError: This API has been deprecated.")
    assert not is_disabled_fault(-32500, "HTTPTooManyRequests: Limit may reset in 5 seconds.")


def test_a_lagging_cdn_copy_of_the_root_never_moves_the_serial_back(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    assert mirror.run(*NO_XMLRPC) == 0
    pypi.root_page(json_form=True)  # render the root as it is now
    pypi.add_release("numpy", "2.0")
    pypi.inject("root", "stale")  # the CDN still serves the root from before the release
    assert mirror.run(*NO_XMLRPC) == 0
    serial_after_stale_root = mirror.serial()
    assert serial_after_stale_root is not None and serial_after_stale_root < pypi.last_serial
    assert mirror.run(*NO_XMLRPC) == 0  # the next run sees the release
    assert mirror.serial() == pypi.last_serial
    assert_mirror_matches_upstream(mirror)


def test_switching_sources_keeps_one_serial(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run() == 0  # XML-RPC
    pypi.add_release("numpy", "2.0")
    assert mirror.run(*NO_XMLRPC) == 0
    pypi.add_release("Django", "2.0")
    pypi.reset_log()
    assert mirror.run() == 0  # and back
    assert pypi.count_pages() == 1
    assert_mirror_matches_upstream(mirror)


def test_a_pending_project_gone_from_the_listing_is_removed_by_its_404(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    assert mirror.run(*NO_XMLRPC) == 0
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "status", times=100, code=404)  # a CDN not caught up, for now
    assert mirror.run(*NO_XMLRPC) == cli_support.EXIT_PARTIAL
    assert load_state(mirror.state).pending["numpy"].expect_page
    pypi.clear_faults()
    pypi.remove_project("numpy")
    assert mirror.run(*NO_XMLRPC) == 0
    assert mirror.page("numpy") is None and "numpy" not in mirror.root_projects()


def test_json_only_and_no_xmlrpc_together(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*NO_XMLRPC, "--simple-format", "json") == 0
    pypi.remove_project("Django")
    pypi.add_release("numpy", "2.0")
    pypi.reset_log()
    assert mirror.run(*NO_XMLRPC, "--simple-format", "json") == 0
    assert pypi.count_pages() == 2
    root = json.loads(mirror.layout.json_root_page.read_bytes())
    assert "Django" not in [project["name"] for project in root["projects"]]


# --- the stand-in models warehouse's JSON side -------------------------------------------------


def test_stand_in_serves_json_as_warehouse_does(pypi: FakePyPI) -> None:
    pypi.quarantine_project("Foo_Bar")
    with requests.Session() as session:
        page = session.get(f"{pypi.url}/simple/numpy/", headers={"Accept": V1_JSON}, timeout=10)
        root = session.get(f"{pypi.url}/simple/", headers={"Accept": V1_JSON}, timeout=10)
        pypi.switch_off_xmlrpc("410")
        gone = session.post(f"{pypi.url}/pypi", data=b"<methodCall/>", timeout=10)
    for response in (page, root):
        assert response.headers["Content-Type"] == V1_JSON  # no charset: not a text/* type
        assert response.headers["Vary"] == "Accept, Accept-Encoding"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert page.headers["X-PyPI-Last-Serial"] == str(pypi.project_serial("numpy"))
    assert page.json()["meta"]["_last-serial"] == pypi.project_serial("numpy")
    assert root.headers["X-PyPI-Last-Serial"] == str(pypi.last_serial)
    listed = {project["name"] for project in root.json()["projects"]}
    assert "Foo_Bar" not in listed and "numpy" in listed  # quarantined: left out, as on PyPI
    assert gone.status_code == 410 and "X-PyPI-Last-Serial" not in gone.headers


# --- the streaming parser of the root -----------------------------------------------------------


def parse(document: bytes, chunk: int) -> tuple[list[tuple[object, object]], dict | None]:
    got: list[tuple[object, object]] = []
    parser = JsonRootParser(lambda name, serial: got.append((name, serial)))
    for start in range(0, len(document), chunk):
        parser.feed(document[start : start + chunk])
    parser.close()
    return got, parser.meta


def test_root_parser_handles_any_split_order_and_spacing() -> None:
    projects = [{"name": f"P.{i}", "_last-serial": i * 7} for i in range(30)]
    projects += [
        {"_last-serial": 1, "name": "keys-reversed"},
        {"name": "\u00e9", "_last-serial": 2},
    ]
    meta = {"api-version": "1.4", "_last-serial": 999}
    expected = [(p["name"], p["_last-serial"]) for p in projects]
    documents = [
        json.dumps({"meta": meta, "projects": projects}),
        json.dumps({"projects": projects, "other": [1, {"a": 2}], "meta": meta}, indent=2),
        json.dumps({"meta": meta, "projects": projects}, separators=(",", ":")),
    ]
    for text in documents:
        for chunk in (1, 5, 64, 1 << 20):
            assert parse(text.encode(), chunk) == (expected, meta)


@pytest.mark.parametrize(
    "document",
    [b"", b"[]", b'{"projects": [1]}', b'{"projects": [{}', b'{"projects": [{},]}', b"{} {}"],
)
def test_root_parser_refuses_malformed_documents(document: bytes) -> None:
    with pytest.raises(ValueError):
        parse(document, 3)


def test_root_parser_memory_stays_flat() -> None:
    """100,000 entries (5 MB): the parser's own allocations stay far below the document's."""
    projects = [{"name": f"project-{i}", "_last-serial": 30_000_000 + i} for i in range(100_000)]
    document = json.dumps({"meta": {"api-version": "1.4"}, "projects": projects}).encode()
    del projects
    count = 0

    def sink(name: object, serial: object) -> None:
        nonlocal count
        count += 1

    tracemalloc.start()
    try:
        parser = JsonRootParser(sink)
        for start in range(0, len(document), 1 << 20):
            parser.feed(document[start : start + (1 << 20)])
        parser.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"  # a few chunks of text; json.loads: ~30 MiB


@pytest.mark.parametrize(
    "opening",
    [b'{"meta": "', b'{"projects": [{"name": "'],
    ids=["a-member", "a-project-entry"],
)
def test_root_parser_refuses_a_value_that_never_ends_without_buffering_it(opening: bytes) -> None:
    """One value that goes on and on (a string never closed) is refused once it passes
    ``MAX_VALUE`` characters, while it streams: not buffered and re-scanned up to the
    listing's cap (hundreds of MB, each chunk re-scanning all before it)."""
    chunk = 1 << 16
    endless = opening + b"x" * (4 * JsonRootParser.MAX_VALUE)
    fed = 0
    parser = JsonRootParser(lambda name, serial: None)
    with pytest.raises(ValueError):
        for start in range(0, len(endless), chunk):
            parser.feed(endless[start : start + chunk])
            fed += chunk
    assert fed <= JsonRootParser.MAX_VALUE + chunk, f"refused only after {fed} bytes"
