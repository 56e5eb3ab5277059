"""--include / --exclude: what is mirrored, what a change of filter does, and list options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.filters import ProjectFilter, glob_pattern
from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops import command as pypi_mirror
from pypi_index_mirror.ops import settings
from pypi_index_mirror.ops.cli import UsageError
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import Mirror, assert_consistent, upstream_page

ALL = ("--simple-format", "all")


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    return Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)


def mirrored(mirror: Mirror) -> set[str]:
    simple = mirror.layout.simple_dir
    return {p.name for p in simple.iterdir() if (p / "index.html").exists()}


def json_root_names(mirror: Mirror) -> set[str]:
    root = json.loads(mirror.layout.json_root_page.read_bytes())
    return {project["name"] for project in root["projects"]}


# --- the filter itself ------------------------------------------------------------------------


def test_patterns_match_normalized_names() -> None:
    only = ProjectFilter.of(include=["Zope.*", "num?y"], exclude=["*-extra"])
    assert only.allows("zope-interface") and only.allows("numpy")
    assert not only.allows("zope-extra") and not only.allows("django")
    assert ProjectFilter().allows("anything") and ProjectFilter().everything
    assert ProjectFilter.of(["b", "a", "a"]) == ProjectFilter.of(["a", "b"])
    for bad in ("", "a/b", "../x", "a b"):
        with pytest.raises(ValueError):
            glob_pattern(bad)


def test_only_a_narrower_filter_skips_the_listing() -> None:
    wide, narrow = ProjectFilter(), ProjectFilter.of(exclude=["numpy"])
    assert narrow.admits_only_part_of(wide) and not wide.admits_only_part_of(narrow)
    some = ProjectFilter.of(include=["d*"])
    assert some.admits_only_part_of(wide) and not ProjectFilter.of(["n*"]).admits_only_part_of(some)


# --- a list option: flag, environment, config file ----------------------------------------------


def config(argv: list[str], environ: dict[str, str] | None = None) -> settings.Config:
    return settings.config_from(argv, pypi_mirror.build_parser(), environ=environ or {})


def test_include_and_exclude_are_repeatable_lists_everywhere(tmp_path: Path) -> None:
    assert config(["--include", "Django*", "--include", "numpy"]).include == ("django*", "numpy")
    environ = {"PYPI_MIRROR_EXCLUDE": "a, b  c,,d"}
    assert config([], environ).exclude == ("a", "b", "c", "d")
    file = tmp_path / "mirror.toml"
    file.write_text('include = ["zope.*", "requests"]\nexclude = []\n')
    from_file = config(["--config", str(file)])
    assert (from_file.include, from_file.exclude) == (("zope-*", "requests"), ())
    assert config(["--config", str(file), "--include", "x"]).include == ("x",)  # flag wins whole
    assert config(["--config", str(file)], {"PYPI_MIRROR_INCLUDE": "y"}).include == ("y",)


def test_bad_lists_are_one_line_usage_errors(tmp_path: Path, mirror: Mirror) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text('include = "django*"\n')
    with pytest.raises(UsageError, match=r"include: must be an array"):
        config(["--config", str(file)])
    with pytest.raises(UsageError, match="PYPI_MIRROR_EXCLUDE"):
        config([], {"PYPI_MIRROR_EXCLUDE": "ok, a/b"})
    result = mirror.cli("--include", "a/b")
    assert result.returncode == cli_support.EXIT_USAGE
    assert "can never match a project name" in result.stderr
    assert "Traceback" not in result.stderr


# --- what gets mirrored ------------------------------------------------------------------------


def test_first_sync_fetches_only_included_projects(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run(*ALL, "--include", "D*", "--include", "n*") == 0
    assert pypi.count_pages() == 4  # two projects, two forms
    assert mirrored(mirror) == {"django", "numpy"}
    assert set(mirror.root_projects()) == {"django", "numpy"}
    assert json_root_names(mirror) == {"Django", "numpy"}
    assert load_state(mirror.state).filters == ProjectFilter.of(["d*", "n*"])


def test_changelog_entries_of_excluded_projects_are_ignored(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run("--exclude", "numpy") == 0
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    pypi.reset_log()
    assert mirror.run("--exclude", "numpy") == 0
    assert pypi.count_pages() == 1 and pypi.count_pages("django") == 1
    assert "numpy" not in mirrored(mirror)


def test_an_exclusion_added_later_removes_the_project_everywhere(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    assert mirror.run(*ALL) == 0
    pypi.reset_log()
    mirror.had_rstuf = True  # RSTUF not configured yet: the removals are owed to it
    assert mirror.run(*ALL, "--exclude", "numpy", "--exclude", "zope.*") == cli_support.EXIT_PARTIAL
    assert pypi.count_pages() == 0, "removing needs no fetch"
    assert pypi.count("list_packages_with_serial") == 0, "a narrower filter needs no listing"
    assert mirrored(mirror) == {"django", "foo-bar", "requests"}
    assert set(mirror.root_projects()) == {"django", "foo-bar", "requests"}
    assert json_root_names(mirror) == {"Django", "Foo_Bar", "requests"}
    dirty = load_state(mirror.state).outbox.dirty  # RSTUF is told to remove them
    for name in ("numpy", "zope-interface"):
        assert {f"simple/{name}/index.html", f"simple/{name}/index.v1_json"} <= dirty
    assert {"index.html", "simple/index.v1_json"} <= dirty
    assert_consistent(mirror)


def test_dropping_an_exclusion_fetches_just_those_projects(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run("--exclude", "numpy") == 0
    pypi.add_release("Django", "2.0")
    pypi.reset_log()
    assert mirror.run() == 0
    assert pypi.count("list_packages_with_serial") == 1
    assert pypi.count_pages() == 2  # numpy (newly admitted) and django (changelog), nothing else
    assert mirror.page("numpy") == upstream_page(pypi.url, "numpy")
    assert "numpy" in mirror.root_projects()
    assert load_state(mirror.state).filters == ProjectFilter()


def test_an_include_added_later_fetches_just_the_new_names(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run("--include", "django") == 0
    pypi.reset_log()
    assert mirror.run("--include", "django", "--include", "zope*") == 0
    assert pypi.count_pages() == 1 and pypi.count_pages("zope-interface") == 1
    assert set(mirror.root_projects()) == {"django", "zope-interface"}


def test_widening_without_xmlrpc_lists_from_the_json_root(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run("--no-xmlrpc", "--include", "django") == 0
    pypi.reset_log()
    assert mirror.run("--no-xmlrpc") == 0
    assert pypi.count("xmlrpc") == 0 and pypi.count("root") == 1
    assert pypi.count_pages() == 4  # the four projects the wider filter admits
    assert len(mirror.root_projects()) == 5


def test_a_pending_project_that_is_excluded_is_dropped(mirror: Mirror, pypi: FakePyPI) -> None:
    assert mirror.run() == 0
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "status", times=100, code=503)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    assert "numpy" in load_state(mirror.state).pending
    pypi.reset_log()
    assert mirror.run("--exclude", "numpy") == 0
    assert pypi.count_pages() == 0
    assert load_state(mirror.state).pending == {}


def test_full_check_removes_excluded_projects_without_fetching_them(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    assert mirror.run() == 0
    pypi.reset_log()
    assert mirror.run("--full-check", "--exclude", "requests") == 0
    assert pypi.count_pages("requests") == 0
    assert "requests" not in mirrored(mirror) and "requests" not in mirror.root_projects()
