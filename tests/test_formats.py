"""PEP 691 JSON pages (--simple-format json|all) and the JSON root, against the stand-ins."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pypi_index_mirror.mirror import roots as root_index
from pypi_index_mirror.mirror.filters import ProjectFilter
from pypi_index_mirror.mirror.state import PendingProject, State, StateError, load_state, save_state
from pypi_index_mirror.mirror.store import (
    JSON_PAGE_NAME,
    JSON_ROOT_TARGET,
    PAGE_NAME,
    PAGE_NAMES,
    digest_file,
    prefixed_name,
)
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.rstuf import bootstrap_csv as generate_csv
from pypi_index_mirror.sync.plan import forms_answer, stale_answer
from pypi_index_mirror.upstream.pages import FetchedPage
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import ADD, REMOVE, FakeRstuf
from tests.mirror_helpers import (
    REPO,
    Mirror,
    assert_consistent,
    assert_mirror_matches_upstream,
    bootstrap,
    mirror_view,
    upstream_json_page,
)

ALL = ("--simple-format", "all")
JSON_ONLY = ("--simple-format", "json")


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    return Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)


def json_root(mirror: Mirror) -> dict:
    return json.loads(mirror.layout.json_root_page.read_bytes())


def json_page(mirror: Mirror, name: str) -> bytes | None:
    path = mirror.layout.project_page(name, JSON_PAGE_NAME)
    return path.read_bytes() if path.exists() else None


def upstream_root_serials(pypi: FakePyPI) -> dict[str, int]:
    """display name -> _last-serial, as PyPI's own JSON root lists them."""
    root = json.loads(pypi.root_page(json_form=True))
    return {project["name"]: project["_last-serial"] for project in root["projects"]}


def assert_json_matches_upstream(mirror: Mirror, pypi: FakePyPI) -> None:
    """Both forms of every listed page byte for byte, and a JSON root that agrees with PyPI's."""
    assert_mirror_matches_upstream(mirror)
    for name in mirror.root_projects():
        assert json_page(mirror, name) == upstream_json_page(pypi.url, name), name
    root = json_root(mirror)
    listed = {project["name"]: project["_last-serial"] for project in root["projects"]}
    assert listed == upstream_root_serials(pypi)
    assert root["meta"] == {"api-version": "1.0", "_last-serial": max(listed.values(), default=0)}


# --- first sync and updates with both forms ----------------------------------------------------


def test_first_sync_with_all_mirrors_both_forms_and_the_json_root(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    assert mirror.run(*ALL) == 0
    assert_json_matches_upstream(mirror, pypi)
    assert_consistent(mirror)  # each JSON page hard-linked to its <blake2b-256>.index.v1_json
    root_copy = prefixed_name(digest_file(mirror.layout.json_root_page).hexdigest, JSON_PAGE_NAME)
    assert (mirror.layout.simple_dir / root_copy).exists()
    assert load_state(mirror.state).formats == ("html", "json")
    # a JSON page has what HTML cannot carry (PEP 700)
    page = json.loads(json_page(mirror, "numpy") or b"")
    assert page["versions"] == ["1.0"] and all("size" in f for f in page["files"])


def test_json_root_is_deterministic(mirror: Mirror, pypi: FakePyPI, tmp_path: Path) -> None:
    assert mirror.run(*ALL) == 0
    other = Mirror(tmp_path / "other", tmp_path / "other.json", pypi.url)
    assert other.run(*ALL) == 0
    assert other.layout.json_root_page.read_bytes() == mirror.layout.json_root_page.read_bytes()


def test_update_fetches_both_forms_of_each_changed_project(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*ALL) == 0
    html_root = mirror.layout.root_page.stat().st_mtime_ns
    mirror.had_rstuf = True  # RSTUF not configured yet: the changes are owed to it
    pypi.add_release("numpy", "2.0")
    pypi.reset_log()
    assert mirror.run(*ALL) == cli_support.EXIT_PARTIAL
    assert pypi.count_pages() == 2  # one more request per changed project, no more
    assert pypi.count_pages("numpy") == 2
    assert_json_matches_upstream(mirror, pypi)
    assert mirror.layout.root_page.stat().st_mtime_ns == html_root, "membership did not change"
    dirty = load_state(mirror.state).outbox.dirty
    assert dirty == {"simple/numpy/index.html", "simple/numpy/index.v1_json", JSON_ROOT_TARGET}


def test_nothing_changed_rewrites_no_root(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*ALL) == 0
    before = mirror.layout.json_root_page.stat().st_mtime_ns
    pypi.reset_log()
    assert mirror.run(*ALL) == 0
    assert pypi.count_pages() == 0
    assert mirror.layout.json_root_page.stat().st_mtime_ns == before


def test_removed_and_quarantined_projects_follow_the_html_rules(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    assert mirror.run(*ALL) == 0
    pypi.remove_project("Django")
    pypi.quarantine_project("Foo_Bar")
    assert mirror.run(*ALL) == 0
    assert mirror.page("django") is None and json_page(mirror, "django") is None
    quarantined = json.loads(json_page(mirror, "foo-bar") or b"")
    assert quarantined["project-status"]["status"] == "quarantined"
    assert quarantined["files"] == []
    names = [project["name"] for project in json_root(mirror)["projects"]]
    assert "Django" not in names and "Foo_Bar" not in names
    assert_json_matches_upstream(mirror, pypi)


def test_both_forms_come_from_one_serial_or_the_project_waits(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    assert mirror.run(*ALL) == 0
    old_html, old_json = mirror.page("numpy"), json_page(mirror, "numpy")
    pypi.add_release("numpy", "2.0")
    # Every answer for numpy is stale except the first (the HTML): the JSON never catches up.
    pypi.inject("numpy", "slow", seconds=0)
    pypi.inject("numpy", "stale", times=100)
    assert mirror.run(*ALL) == cli_support.EXIT_PARTIAL
    assert (mirror.page("numpy"), json_page(mirror, "numpy")) == (old_html, old_json)
    assert "numpy" in load_state(mirror.state).pending
    pypi.clear_faults()
    assert mirror.run(*ALL) == 0
    assert_json_matches_upstream(mirror, pypi)
    assert not load_state(mirror.state).pending


def test_a_stale_json_answer_is_retried_until_it_matches(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*ALL) == 0
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "slow", seconds=0)  # the HTML request
    pypi.inject("numpy", "stale", times=2)  # the JSON request and its first retry
    pypi.reset_log()
    assert mirror.run(*ALL) == 0
    assert pypi.count_pages("numpy") == 4  # the HTML once, the JSON three times
    assert_json_matches_upstream(mirror, pypi)


def test_a_json_page_that_is_not_a_pep_691_page_is_refused(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*ALL) == 0
    old = json_page(mirror, "numpy")
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "slow", seconds=0)
    pypi.inject("numpy", "not_simple", times=100)  # a CDN error page where JSON was asked
    assert mirror.run(*ALL) == cli_support.EXIT_PARTIAL
    assert json_page(mirror, "numpy") == old
    assert "numpy" in load_state(mirror.state).pending


def test_forms_answer_settles_which_forms_to_fetch_again() -> None:
    def page(serial: int | None) -> FetchedPage:
        return FetchedPage("x", None if serial is None else b"x", serial, None)

    def answer(pages: list[FetchedPage], serial: int, exists: bool) -> tuple:
        got = forms_answer(pages, PendingProject("x", serial, exists))
        return got.behind, type(got.problem).__name__, got.expected

    assert answer([page(7), page(7)], 5, True) == ((), "NoneType", 7)
    assert answer([page(None), page(None)], 5, False)[:2] == ((), "NoneType")  # removed
    assert answer([page(7), page(9)], 5, True) == ((0,), "StalePage", 9)  # the HTML lags
    assert answer([page(7), page(7)], 8, True) == ((0, 1), "StalePage", 8)
    # a 404 beside a 200: removed or created, not seen by every cache yet: ask both again
    assert answer([page(None), page(7)], 5, False) == ((0, 1), "MissingPage", 7)
    assert answer([page(None), page(7)], 5, True)[:2] == ((0,), "MissingPage")  # it exists
    for one in (page(7), page(3), page(None)):  # one form: exactly the single-page rule
        for exists in (True, False):
            wanted = PendingProject("x", 5, exists)
            problem = forms_answer([one], wanted).problem
            assert type(problem) is type(stale_answer(one, wanted))


# --- json only, and changing forms -----------------------------------------------------------


def test_json_only_serves_no_html_at_all(mirror: Mirror, pypi: FakePyPI, tmp_path: Path) -> None:
    assert mirror.run(*JSON_ONLY) == 0
    served = sorted(p.name for p in mirror.layout.served_dir.rglob("*") if p.is_file())
    assert served and not any(name.endswith(".html") for name in served)
    names = [project["name"] for project in json_root(mirror)["projects"]]
    assert sorted(names) == sorted(upstream_root_serials(pypi))
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    assert mirror.run(*JSON_ONLY) == 0
    assert json_page(mirror, "numpy") == upstream_json_page(pypi.url, "numpy")
    assert json_page(mirror, "django") is None
    csv = tmp_path / "artifacts.csv"
    assert generate_csv.main(["--mirror-dir", str(mirror.root), "--state", str(mirror.state),
                              "--output", str(csv), "-q"]) == 0  # fmt: skip
    paths = [line.split(";")[0] for line in csv.read_text().splitlines()]
    assert paths[0] == JSON_ROOT_TARGET
    assert paths[1:] == sorted(f"simple/{n}/{JSON_PAGE_NAME}" for n in mirror_projects(mirror))


def mirror_projects(mirror: Mirror) -> list[str]:
    """Projects with a page in some form (a removed one's directory may still hold old copies)."""
    simple = mirror.layout.simple_dir
    return sorted(p.name for p in simple.iterdir() if any((p / n).exists() for n in PAGE_NAMES))


def test_adding_then_dropping_the_json_form(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run() == 0  # html, as before this option existed
    html_before = {name: mirror.page(name) for name in mirror_projects(mirror)}
    mirror.had_rstuf = True  # RSTUF not configured yet: the changes are owed to it
    # every project gains its JSON page, nothing else moves
    assert mirror.run(*ALL) == cli_support.EXIT_PARTIAL
    assert_json_matches_upstream(mirror, pypi)
    assert {name: mirror.page(name) for name in mirror_projects(mirror)} == html_before
    dirty = load_state(mirror.state).outbox.dirty
    assert dirty == {f"simple/{n}/{JSON_PAGE_NAME}" for n in html_before} | {JSON_ROOT_TARGET}
    pypi.reset_log()
    # back to html: JSON pages and root removed, no page fetched
    assert mirror.run() == cli_support.EXIT_PARTIAL
    assert pypi.count_pages() == 0
    assert not list(mirror.layout.served_dir.rglob(JSON_PAGE_NAME))
    assert load_state(mirror.state).formats == ("html",)
    assert_mirror_matches_upstream(mirror)


def test_full_check_with_all_repairs_a_damaged_json_page(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*ALL) == 0
    mirror.layout.project_page("numpy", JSON_PAGE_NAME).write_bytes(b"{}")
    pypi.archive_project("requests")  # changes both forms, writes no journal entry
    mirror.had_rstuf = True  # RSTUF not configured yet: the repairs are owed to it
    assert mirror.run(*ALL, "--full-check") == cli_support.EXIT_PARTIAL
    assert_json_matches_upstream(mirror, pypi)
    dirty = load_state(mirror.state).outbox.dirty
    assert {"simple/numpy/index.v1_json", "simple/requests/index.v1_json"} <= dirty
    assert "simple/numpy/index.html" not in dirty  # unchanged bytes are not sent again


# --- RSTUF --------------------------------------------------------------------------------------


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(step=0.02) as fake:
        yield fake


def test_each_form_is_its_own_rstuf_target(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    assert mirror.run(*ALL) == 0
    bootstrap(rstuf, mirror_view(mirror.layout))
    assert JSON_ROOT_TARGET in rstuf.view and "simple/numpy/index.v1_json" in rstuf.view
    mirror.rstuf_url = rstuf.url
    old_copy = mirror.layout.project_dir("numpy") / prefixed_name(
        digest_file(mirror.layout.project_page("numpy", JSON_PAGE_NAME)).hexdigest, JSON_PAGE_NAME
    )
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    assert mirror.run(*ALL, "--rstuf-poll", "0.05", "--grace", "0") == 0
    assert rstuf.view == mirror_view(mirror.layout)
    added = {a["path"] for r in rstuf.accepted if r.action == ADD for a in r.body["artifacts"]}
    removed = {p for r in rstuf.accepted if r.action == REMOVE for p in r.body["artifacts"]}
    assert added == {"simple/numpy/index.html", "simple/numpy/index.v1_json", JSON_ROOT_TARGET,
                     PAGE_NAME}  # fmt: skip
    assert removed == {"simple/django/index.html", "simple/django/index.v1_json"}
    assert mirror.run(*ALL, "--grace", "0") == 0  # RSTUF confirmed: the old copy's grace ran out
    assert not old_copy.exists()
    assert_consistent(mirror)


def sent_actions(rstuf: FakeRstuf) -> dict[str, str]:
    """Every path the stand-in RSTUF was sent, with its action ("add" or "remove")."""
    sent: dict[str, str] = {}
    for request in rstuf.accepted:
        if request.action in (ADD, REMOVE):
            for item in request.body["artifacts"]:
                path = item["path"] if request.action == ADD else item
                sent[path] = "add" if request.action == ADD else "remove"
    return sent


@pytest.mark.parametrize("form", ["html", "json", "all"])
def test_a_dry_run_plans_the_rstuf_paths_the_run_then_sends(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf, form: str
) -> None:
    """Seen with json and all: simple/<n>/index.html planned for a JSON-only mirror, no
    index.v1_json and no JSON root (planned 15, sent 30)."""
    formats = ("--simple-format", form)
    assert mirror.run(*formats) == 0
    bootstrap(rstuf, mirror_view(mirror.layout))
    mirror.rstuf_url = rstuf.url
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    pypi.create_project("Brand.New")
    run = subprocess.run(
        [sys.executable, "pypi_mirror.py", *mirror.args(*formats, "--dry-run")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    planned = {
        line.split()[1]: line.split()[0].removeprefix("rstuf-")
        for line in run.stdout.splitlines()
        if line.startswith("rstuf-")
    }
    assert f"rstuf={len(planned)}" in run.stdout.splitlines()[0]
    assert mirror.run(*formats, "--rstuf-poll", "0.05") == 0
    assert planned == sent_actions(rstuf)
    assert len(planned) == {"html": 4, "json": 4, "all": 8}[form]


@pytest.mark.parametrize("form", ["all", "json"])
def test_full_check_leaves_unchanged_pages_alone(mirror: Mirror, pypi: FakePyPI, form: str) -> None:
    assert mirror.run("--simple-format", form) == 0
    pypi.quarantine_project("Foo_Bar")
    mirror.had_rstuf = True  # RSTUF not configured yet: the changes are owed to it
    assert mirror.run("--simple-format", form) == cli_support.EXIT_PARTIAL
    owed = load_state(mirror.state).outbox.dirty  # no RSTUF here: the update's changes wait
    assert owed
    files = [p for p in mirror.layout.served_dir.rglob("*") if p.is_file()]
    before = {path: path.stat().st_mtime_ns for path in files}
    pypi.reset_log()
    assert mirror.run("--simple-format", form, "--full-check") == cli_support.EXIT_PARTIAL
    assert pypi.count_pages() == 5 * (2 if form == "all" else 1)
    assert {path: path.stat().st_mtime_ns for path in files} == before  # nothing rewritten
    assert load_state(mirror.state).outbox.dirty == owed  # nothing more for RSTUF
    names = [project["name"] for project in json_root(mirror)["projects"]]
    assert "Foo_Bar" not in names, "an unchanged quarantined page still keeps it unlisted"


def test_json_root_renders_reads_back_and_merges() -> None:
    members = [("a", "A", 3), ("b-c", "B.c", 9), ("q-x", "Q_x", 2)]
    page = b"".join(root_index.render_json_root_lines(members))
    assert json.loads(page) == {
        "projects": [{"name": d, "_last-serial": s} for _, d, s in members],
        "meta": {"api-version": "1.0", "_last-serial": 9},
    }
    read = list(root_index.iter_json_root(page.splitlines(keepends=True)))
    assert read == [(n, (d, s)) for n, d, s in members]
    merged = root_index.merge_root(read, {"a": None, "b-c": ("B.c", 12), "z": ("Z", 1)})
    assert list(merged) == [("b-c", ("B.c", 12)), ("q-x", ("Q_x", 2)), ("z", ("Z", 1))]
    empty = b"".join(root_index.render_json_root_lines([]))
    assert json.loads(empty) == {"projects": [], "meta": {"api-version": "1.0", "_last-serial": 0}}


def test_state_records_forms_and_filters_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = State(serial=3, formats=("html", "json"), filters=ProjectFilter.of(["d*"]))
    save_state(path, state)
    again = load_state(path)
    assert (again.formats, again.filters) == (("html", "json"), ProjectFilter.of(["d*"]))
    path.write_text(path.read_text().replace('"json"', '"xml"'))
    with pytest.raises(StateError, match="corrupt"):
        load_state(path)


# --- served by serving/nginx.conf, installed from by pip and uv ---------------------------------


def test_pip_and_uv_install_from_the_json_pages_through_nginx(tmp_path: Path) -> None:
    """The mirror's own JSON pages (not hand-placed ones) behind nginx, read by pip and uv."""
    from tests.installers import installed_version, pip_install, uv_install
    from tests.test_serving import MIME_V1_JSON as JSON_TYPE
    from tests.test_serving import PIP_ACCEPT, start_nginx

    with FakePyPI() as pypi:
        pypi.add_wheel("Tiny_Wheel", "1.0")
        pypi.add_wheel("Tiny_Wheel", "1.1")
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run(*ALL) == 0
        nginx = start_nginx(mirror.layout.served_dir, tmp_path / "nginx")
        try:
            root = requests.get(f"{nginx.url}/simple/", headers={"Accept": PIP_ACCEPT}, timeout=10)
            assert root.headers["Content-Type"] == JSON_TYPE
            assert root.content == mirror.layout.json_root_page.read_bytes()
            for tool, install in (("pip", pip_install), ("uv", uv_install)):
                target = tmp_path / tool
                result = install(f"{nginx.url}/simple/", target, "tiny-wheel", tmp=tmp_path)
                assert result.returncode == 0, f"{tool}: {result.stderr}"
                assert installed_version(target, "tiny_wheel") == "1.1", tool
            pages = [line for line in nginx.access_log() if " /simple/tiny-wheel/ " in line]
            assert len(pages) == 2 and all(f'"{JSON_TYPE}"' in line for line in pages), pages
        finally:
            nginx.stop()


@pytest.mark.parametrize(
    "point",
    [
        "page-temp@simple/numpy/index.v1_json",
        "page-renamed@simple/django/index.html",  # the HTML in place, its JSON not yet
        "page-renamed@simple/index.v1_json",  # the JSON root written, its intent saved
        "state-save@batch-intent",
        "state-save@root-intent",
    ],
)
def test_a_run_killed_mid_update_leaves_both_forms_and_roots_right(
    mirror: Mirror, pypi: FakePyPI, point: str
) -> None:
    assert mirror.run(*ALL) == 0
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    pypi.create_project("Brand.New")
    mirror.had_rstuf = True  # RSTUF not configured yet: the changes are owed to it
    killed = mirror.cli(*ALL, env={"PYPI_MIRROR_CRASH_AT": point})
    assert killed.returncode == -9, killed.stderr
    assert mirror.run(*ALL) == cli_support.EXIT_PARTIAL
    assert_json_matches_upstream(mirror, pypi)
    assert_consistent(mirror)
    dirty = load_state(mirror.state).outbox.dirty
    for name in ("numpy", "django", "brand-new"):
        assert {f"simple/{name}/index.html", f"simple/{name}/index.v1_json"} <= dirty
    assert {PAGE_NAME, JSON_ROOT_TARGET} <= dirty
