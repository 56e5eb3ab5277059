"""The operator cannot break it: each mistake of running a mirror by hand or from cron.

Numbered as the cases of issue 10 they come from: (1) a mirror directory lost under
its state, (2) a state of another mirror or upstream, (3) recovery from a lost state,
(4) a first sync in which pages fail, (5) honest exits and clean stops, (6) options
that must be refused, (7) an upstream failing as a whole, (8) ``--dry-run``. The
command line runs as a subprocess (or through ``pypi_mirror.main``) against the
stand-in PyPI; the decisions behind them are tested without a server at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.mirror import safety
from pypi_index_mirror.mirror.safety import CircuitBreaker, MirrorFacts, MirrorMismatch, StateAhead
from pypi_index_mirror.mirror.state import PendingProject, State, load_state, save_state
from pypi_index_mirror.mirror.store import MirrorLayout, mirror_lock
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops import command as pypi_mirror
from pypi_index_mirror.ops import settings
from pypi_index_mirror.rstuf import bootstrap_csv as generate_csv
from pypi_index_mirror.sync import dry_run
from tests.conftest import PROJECTS
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import FAST, REPO, Mirror, assert_mirror_matches_upstream

FAILURE_LIMIT = settings.DEFAULTS.failure_limit
WORKERS = 4  # tests.mirror_helpers.FAST


RECORDS = (".lock", "status.json")  # the last run's pid and how it ended: written by any run


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes, but the records of the last run."""
    if not root.exists():
        return {}
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in RECORDS
    }


def summary_of(stderr: str) -> dict[str, str]:
    """The run's last line, which must be its summary, as {key: value} (bare words: '')."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert " INFO summary " in last, stderr
    words = last.split(" summary ", 1)[1].split()
    return dict(word.partition("=")[::2] for word in words)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 with exactly one ERROR line carrying `words`, then the summary line."""
    assert result.returncode == cli_support.EXIT_FAILED, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert summary_of(result.stderr)["exit"] == "1"
    return errors[0]


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    """A synced mirror whose state file lives outside the mirror directory."""
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    assert mirror.run() == 0
    return mirror


def every_target(mirror: Mirror) -> set[str]:
    return set(mirror.targets())


# --- (1) the mirror directory deleted, its state kept --------------------------------------

LOSSES = {
    "mirror-dir": lambda layout: shutil.rmtree(layout.root),
    "served-tree": lambda layout: shutil.rmtree(layout.served_dir),
    "root-index": lambda layout: layout.root_page.unlink(),
    "project-pages": lambda layout: shutil.rmtree(layout.simple_dir),
}


@pytest.mark.parametrize("loss", LOSSES)
def test_a_mirror_that_lost_its_pages_is_refused_then_rebuilt_by_full_check(
    mirror: Mirror, pypi: FakePyPI, loss: str
) -> None:
    """Seen: 'changelog 1134->1134: 0 projects to refresh', exit 0, an empty mirror."""
    mirror.had_rstuf = True  # RSTUF not configured yet: what is fetched again is owed to it
    LOSSES[loss](mirror.layout)
    pypi.add_release("numpy", "2.0")
    before, state_before = tree(mirror.root), mirror.state.read_bytes()
    pypi.reset_log()
    line = refused(mirror.cli(), "--full-check", "--mirror-dir", "synced at serial")
    assert str(mirror.root.resolve()) in line
    assert tree(mirror.root) == before and mirror.state.read_bytes() == state_before
    assert mirror.root.exists() == (loss != "mirror-dir"), "the refusal created the directory"
    assert pypi.count_pages() == 0
    assert mirror.run("--full-check") == cli_support.EXIT_PARTIAL  # RSTUF still owed
    assert_mirror_matches_upstream(mirror)
    owed = load_state(mirror.state).outbox.dirty
    pages = every_target(mirror)
    lost = {"root-index": {"index.html"}, "project-pages": pages - {"index.html"}}.get(loss, pages)
    assert lost <= owed, "every page fetched again is registered with RSTUF"
    assert mirror.run() == cli_support.EXIT_PARTIAL


def test_a_first_sync_whose_directory_vanished_is_refused(tmp_path: Path, pypi: FakePyPI) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    pypi.inject("numpy", "status", times=100, code=503)
    assert mirror.run() == cli_support.EXIT_PARTIAL  # a first sync under way
    shutil.rmtree(mirror.root)
    refused(mirror.cli(), "does not exist", "first sync", f"delete {mirror.state}")
    assert not mirror.root.exists()


# --- (2) a state of another mirror or another upstream ---------------------------------------


def test_the_state_of_another_mirror_is_refused(
    mirror: Mirror, pypi: FakePyPI, tmp_path: Path
) -> None:
    other = Mirror(tmp_path / "other", tmp_path / "other.json", pypi.url)
    assert other.run() == 0
    pypi.add_release("numpy", "2.0")
    before, states = tree(other.root), (mirror.state.read_bytes(), other.state.read_bytes())
    pypi.reset_log()
    crossed = Mirror(other.root, mirror.state, pypi.url)  # --state of m, --mirror-dir other
    refused(crossed.cli(), "is the state of mirror", str(mirror.root.resolve()), "--state")
    assert tree(other.root) == before
    assert (mirror.state.read_bytes(), other.state.read_bytes()) == states
    assert pypi.count_pages() == 0


def test_a_foreign_state_is_refused_even_where_the_paths_match(
    mirror: Mirror, pypi: FakePyPI, tmp_path: Path
) -> None:
    """Another mirror now sits where this state's mirror was: the marker tells them apart."""
    shutil.rmtree(mirror.root)
    assert Mirror(mirror.root, tmp_path / "new.json", pypi.url).run() == 0
    refused(mirror.cli(), "is the state of mirror")


def test_the_state_of_another_upstream_is_refused(mirror: Mirror) -> None:
    with FakePyPI() as other:
        for index in range(30):  # its serials pass the first's: only the URL tells
            other.add_release(f"elsewhere{index}", "1.0", files=1)
        moved = Mirror(mirror.root, mirror.state, other.url)
        before, state_before = tree(mirror.root), mirror.state.read_bytes()
        line = refused(moved.cli(), "belongs to a mirror of", mirror.pypi_url, "--full-check")
        assert f"--pypi-url {mirror.pypi_url}" in line
        assert tree(mirror.root) == before and mirror.state.read_bytes() == state_before
        assert other.count_pages() == 0
        result = moved.cli("--full-check")  # the deliberate move to another upstream
        assert result.returncode == 0, result.stderr
        assert_mirror_matches_upstream(moved)
        state = load_state(mirror.state)
        assert state.upstream == other.url and state.serial == other.last_serial
        assert moved.cli().returncode == 0


def test_a_move_to_an_upstream_behind_the_old_one_takes_its_serial(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    """Serials are per upstream: a move (--full-check) ends at the new one's, even a lower
    one, never at the old one's (the next run would refuse it as ahead of upstream)."""
    with FakePyPI() as other:
        other.add_release("elsewhere", "1.0", files=1)
        assert other.last_serial < pypi.last_serial
        moved = Mirror(mirror.root, mirror.state, other.url)
        result = moved.cli("--full-check")
        assert result.returncode == 0, result.stderr
        assert_mirror_matches_upstream(moved)
        assert load_state(mirror.state).serial == other.last_serial
        assert moved.cli().returncode == 0


@pytest.mark.parametrize("serial", [99_999, "last+1"])
def test_a_state_serial_ahead_of_upstream_is_refused(
    mirror: Mirror, pypi: FakePyPI, serial: object
) -> None:
    """Seen: 'changelog 7019->7019: 0 projects', exit 0 for ever, then changes skipped."""
    pypi.add_release("numpy", "2.0")
    state = load_state(mirror.state)
    state.serial = pypi.last_serial + 1 if serial == "last+1" else serial  # type: ignore[assignment]
    save_state(mirror.state, state)
    before, state_before = tree(mirror.root), mirror.state.read_bytes()
    pypi.reset_log()
    line = refused(mirror.cli(), "ahead of", f"ends at {pypi.last_serial}", "--full-check")
    assert str(state.serial) in line
    assert tree(mirror.root) == before and mirror.state.read_bytes() == state_before
    assert pypi.count_pages() == 0 and pypi.count("changelog_since_serial") == 0


def test_a_state_from_release_1_0_is_migrated_once(mirror: Mirror, pypi: FakePyPI) -> None:
    """Schema 1 had no identity: accepted, given one, written as schema 2; nothing bricked."""
    document = json.loads(mirror.state.read_bytes())
    for key in ("mirror_id", "mirror_dir", "upstream", "first_sync"):
        del document[key]
    document["schema"] = 1
    mirror.state.write_text(json.dumps(document))
    mirror.layout.marker_file.unlink()
    pypi.add_release("numpy", "2.0")
    result = mirror.cli()
    assert result.returncode == 0, result.stderr
    assert "written by release 1.0" in result.stderr
    assert_mirror_matches_upstream(mirror)
    migrated = json.loads(mirror.state.read_bytes())
    assert migrated["schema"] == 2 and migrated["upstream"] == pypi.url
    assert migrated["mirror_dir"] == str(mirror.root.resolve())
    assert mirror.layout.marker_file.read_text().strip() == migrated["mirror_id"]
    result = mirror.cli()
    assert result.returncode == 0 and "release 1.0" not in result.stderr


def cli_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line with the default mirror directory and state, run in `directory`.

    Without RSTUF (``--no-rstuf``): these tests are about where the mirror and its state are.
    """
    return subprocess.run(
        [sys.executable, str(REPO / "pypi_mirror.py"), *FAST, "--no-rstuf", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=directory,
    )


def test_the_state_defaults_to_the_working_directory_beside_the_mirror(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    """The design's layout: ./state.json at the top level, ./pypi-index-mirror/ beside it."""
    result = cli_in(tmp_path, "--pypi-url", pypi.url)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pypi-index-mirror", "state.json"]
    assert load_state(tmp_path / "state.json").serial == pypi.last_serial
    assert not (tmp_path / "pypi-index-mirror" / "state.json").exists()


def test_a_deleted_mirror_directory_is_refused_not_synced_again(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    """``rm -rf pypi-index-mirror`` leaves ./state.json: the run refuses, never a first sync."""
    assert cli_in(tmp_path, "--pypi-url", pypi.url).returncode == 0
    shutil.rmtree(tmp_path / "pypi-index-mirror")
    pypi.add_release("numpy", "2.0")
    state_before = (tmp_path / "state.json").read_bytes()
    pypi.reset_log()
    result = cli_in(tmp_path, "--pypi-url", pypi.url)
    refused(result, "does not exist", "synced at serial", "--full-check")
    assert not (tmp_path / "pypi-index-mirror").exists()
    assert (tmp_path / "state.json").read_bytes() == state_before
    assert pypi.count_pages() == 0


def previous_default_mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    """A mirror synced as release 1.1 laid it out: state.json inside the mirror directory."""
    root = tmp_path / "pypi-index-mirror"
    old = Mirror(root, root / "state.json", pypi.url)
    assert old.run() == 0
    return old


def test_the_previous_default_state_in_the_mirror_directory_is_moved_once(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    old = previous_default_mirror(tmp_path, pypi)
    document = old.state.read_bytes()
    pypi.add_release("numpy", "2.0")
    result = cli_in(tmp_path, "--pypi-url", pypi.url, "-q")  # as cron runs it: still said
    assert result.returncode == 0, result.stderr
    moved = [line for line in result.stderr.splitlines() if "the state now lives at" in line]
    assert len(moved) == 1, result.stderr
    new = tmp_path / "state.json"
    assert f"now lives at {new}, the default (moved from {old.state}" in moved[0]
    assert "1.1" not in result.stderr and "release" not in result.stderr
    assert not old.state.exists()
    assert load_state(tmp_path / "state.json").mirror_id == json.loads(document)["mirror_id"]
    assert_mirror_matches_upstream(Mirror(old.root, tmp_path / "state.json", pypi.url))
    again = cli_in(tmp_path, "--pypi-url", pypi.url)
    assert again.returncode == 0 and "now lives" not in again.stderr and "state" not in again.stderr


def test_a_dry_run_reads_the_previous_default_state_where_it_is(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    old = previous_default_mirror(tmp_path, pypi)
    pypi.add_release("numpy", "2.0")
    result = cli_in(tmp_path, "--pypi-url", pypi.url, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "fetch numpy" in result.stdout
    assert "the next run moves it to" in result.stderr
    assert old.state.exists() and not (tmp_path / "state.json").exists()


def test_generate_csv_moves_the_previous_default_state_too(
    tmp_path: Path, pypi: FakePyPI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    old = previous_default_mirror(tmp_path, pypi)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert generate_csv.main(["--output", "a.csv"]) == 0
    assert f"the state now lives at {tmp_path / 'state.json'}" in capsys.readouterr().err
    assert not old.state.exists() and (tmp_path / "state.json").exists()
    assert len((tmp_path / "a.csv").read_text().splitlines()) == len(PROJECTS) + 1


def test_two_state_files_are_refused_with_the_mv_to_run(tmp_path: Path, pypi: FakePyPI) -> None:
    old = previous_default_mirror(tmp_path, pypi)
    stray = Mirror(tmp_path / "stray", tmp_path / "state.json", pypi.url)  # another mirror's
    assert stray.run() == 0
    pypi.add_release("numpy", "2.0")
    before, states = tree(old.root), (old.state.read_bytes(), stray.state.read_bytes())
    result = cli_in(tmp_path, "--pypi-url", pypi.url)
    line = refused(result, "two state files", "(this mirror)", "previous default")
    assert tree(old.root) == before and (old.state.read_bytes(), stray.state.read_bytes()) == states
    use_mirrors = line.split("To use the mirror directory's: ", 1)[1].split(";", 1)[0]
    new = tmp_path / "state.json"
    assert use_mirrors == f"mv {new} {new}.old && mv {old.state} {new}"
    subprocess.run(use_mirrors, shell=True, check=True)
    result = cli_in(tmp_path, "--pypi-url", pypi.url)
    assert result.returncode == 0, result.stderr
    assert_mirror_matches_upstream(Mirror(old.root, tmp_path / "state.json", pypi.url))


def test_a_move_cut_between_copy_and_unlink_is_finished(tmp_path: Path, pypi: FakePyPI) -> None:
    """Across filesystems the state is copied, then unlinked: two equal files are one state."""
    old = previous_default_mirror(tmp_path, pypi)
    shutil.copy2(old.state, tmp_path / "state.json")
    result = cli_in(tmp_path, "--pypi-url", pypi.url)
    assert result.returncode == 0, result.stderr
    assert not old.state.exists() and (tmp_path / "state.json").exists()


def test_a_missing_state_names_the_state_at_the_other_default(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    assert cli_in(tmp_path, "--pypi-url", pypi.url).returncode == 0
    result = cli_in(tmp_path, "--pypi-url", pypi.url, "--state", "elsewhere.json")
    refused(result, "no state file elsewhere.json", f"{tmp_path / 'state.json'} is one")
    assert f"--state {tmp_path / 'state.json'}" in result.stderr
    csv = subprocess.run(
        [sys.executable, str(REPO / "generate_csv.py"), "--state", "elsewhere.json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert csv.returncode == 1
    assert f"give --state {tmp_path / 'state.json'}" in csv.stderr


@pytest.mark.parametrize("default", [False, True])
def test_a_state_inside_the_served_tree_is_refused(
    tmp_path: Path, pypi: FakePyPI, default: bool
) -> None:
    assert cli_in(tmp_path, "--pypi-url", pypi.url).returncode == 0
    served = tmp_path / "pypi-index-mirror" / "pypi_mirror"
    if default:  # run from inside the served tree, the mirror named from there
        result = cli_in(served, "--pypi-url", pypi.url, "--mirror-dir", "..")
        words = ["the default state file", "is inside the served tree", "--state"]
    else:
        result = cli_in(tmp_path, "--pypi-url", pypi.url, "--state", f"{served}/state.json")
        words = [f"--state {served}/state.json is inside the served tree", "download"]
    assert result.returncode == cli_support.EXIT_USAGE, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and all(word in errors[0] for word in words), result.stderr
    assert not (served / "state.json").exists()


def test_a_moved_mirror_takes_its_state_along(tmp_path: Path, pypi: FakePyPI) -> None:
    """A mirror directory moved (renamed) beside its state keeps working: the id matches."""
    assert cli_in(tmp_path, "--pypi-url", pypi.url).returncode == 0
    (tmp_path / "pypi-index-mirror").rename(tmp_path / "moved")
    pypi.add_release("numpy", "2.0")
    result = cli_in(tmp_path, "--pypi-url", pypi.url, "--mirror-dir", "moved")
    assert result.returncode == 0, result.stderr
    assert "moved from" in result.stderr
    moved = load_state(tmp_path / "state.json")
    assert moved.mirror_dir == str((tmp_path / "moved").resolve())


# --- (3) state.json lost ----------------------------------------------------------------------


def test_a_mirror_without_its_state_is_refused_until_full_check(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    """A lost state loses the outbox: the run says how to recover instead of going on."""
    mirror.had_rstuf = True  # RSTUF not configured yet: the repairs are owed to it
    marker = mirror.layout.marker_file.read_text()
    mirror.state.unlink()
    pypi.add_release("numpy", "2.0")
    before = tree(mirror.root)
    refused(mirror.cli(), "no state file", "--full-check", "--audit --repair")
    assert tree(mirror.root) == before and not mirror.state.exists()
    result = mirror.cli("--full-check")
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr  # RSTUF still owed
    assert "--audit --repair" in result.stderr  # the next step of the recovery
    assert_mirror_matches_upstream(mirror)
    assert mirror.layout.marker_file.read_text() == marker, "still the same mirror"
    assert "simple/numpy/index.html" in load_state(mirror.state).outbox.dirty


def test_readme_recovery_and_exit_codes_match_the_tool() -> None:
    readme = (REPO / "README.md").read_text()
    recovery = readme.split("## Recovery", 1)[1].split("\n## ", 1)[0]
    assert "--full-check" in recovery and "--audit --repair" in recovery
    codes = readme.split("## Exit codes", 1)[1].split("\n#", 1)[0]
    for name in dir(cli_support):
        if name.startswith("EXIT_"):
            assert f"| {getattr(cli_support, name)} |" in codes, name


# --- (4) a first sync in which pages fail -------------------------------------------------


def run_csv(mirror: Mirror, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "generate_csv.py"),
            "--mirror-dir",
            str(mirror.root),
            "--state",
            str(mirror.state),
            "--output",
            str(tmp_path / "artifacts.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_first_sync_in_which_every_page_fails_is_not_finished(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    """Seen: serial set, full_sync_in_progress false, an empty root, a 1-row CSV, exit 0."""
    for name in PROJECTS:  # a CDN error page, 200, with no serial header
        pypi.inject(name, "not_simple", times=100)
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    result = mirror.cli()
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    assert "first sync is not finished" in result.stderr
    state = load_state(mirror.state)
    assert state.serial is None and state.full_sync_in_progress
    assert not mirror.layout.root_page.exists(), "an empty root index was published"
    assert summary_of(result.stderr)["pending"] == str(len(PROJECTS))
    csv = run_csv(mirror, tmp_path)
    assert csv.returncode == 1 and "first sync" in csv.stderr
    pypi.clear_faults()
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    assert run_csv(mirror, tmp_path).returncode == 0


def test_a_first_sync_is_finished_only_when_every_page_is_there(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    pypi.inject("numpy", "status", times=100, code=503)
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    state = load_state(mirror.state)
    assert state.serial is None and state.full_sync_in_progress
    assert list(state.pending) == ["numpy"]
    assert "numpy" not in mirror.root_projects(), "the root lists only pages that exist"
    assert len(mirror.root_projects()) == len(PROJECTS) - 1
    assert run_csv(mirror, tmp_path).returncode == 1
    pypi.clear_faults()
    pypi.reset_log()
    assert mirror.run() == 0
    assert pypi.count_pages() == 1, "the pages already there are not fetched again"
    assert_mirror_matches_upstream(mirror)
    assert not load_state(mirror.state).outbox.dirty, "a first sync registers nothing"
    assert run_csv(mirror, tmp_path).returncode == 0


# --- (5) every run ends with its summary; signals stop it cleanly -----------------------------


def test_every_exit_ends_with_the_summary_line(mirror: Mirror, pypi: FakePyPI) -> None:
    usage = mirror.cli("--workers", "0")
    assert usage.returncode == 2
    assert summary_of(usage.stderr)["exit"] == "2"
    assert summary_of(usage.stderr)["pending"] == "?"
    with mirror_lock(mirror.layout.lock_path):
        locked = mirror.cli()
    assert locked.returncode == 3
    assert summary_of(locked.stderr)["exit"] == "3"
    assert summary_of(locked.stderr)["pending"] == "0", "counted from the state file"
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "status", times=100, code=503)
    partial = mirror.cli()
    assert partial.returncode == 75
    fields = summary_of(partial.stderr)
    assert (fields["exit"], fields["pending"], fields["outbox"]) == ("75", "1", "0")
    mirror.state.write_text("{")
    failed = mirror.cli()
    assert failed.returncode == 1 and summary_of(failed.stderr)["exit"] == "1"
    help_text = mirror.cli("--help")
    assert help_text.returncode == 0 and " summary " not in help_text.stderr
    for code in ("130", "143"):
        assert code in help_text.stdout


def wait_for(condition, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("signum", "code", "phase"),
    [
        (signal.SIGTERM, cli_support.EXIT_TERMINATED, "first sync"),
        (signal.SIGINT, cli_support.EXIT_INTERRUPTED, "update"),
    ],
)
def test_a_signal_stops_the_run_cleanly(tmp_path: Path, signum: int, code: int, phase: str) -> None:
    """Seen: SIGINT printed a traceback; SIGTERM ended the run with no log line at all."""
    with FakePyPI() as pypi:
        pypi.populate(120, seed=3, max_files=2)
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        names = pypi.project_names()
        if phase == "update":
            assert mirror.run() == 0
            for name in names:
                pypi.add_release(name, "9.0", files=1)
        for name in names:
            pypi.inject(name, "slow", times=1, seconds=0.05)
        pypi.reset_log()
        process = mirror.popen("--workers", "2")
        wait_for(lambda: pypi.count_pages() >= 6, "six pages fetched")
        asked = pypi.count_pages()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == code, stderr
        stopped = [line for line in stderr.splitlines() if " ERROR " in line]
        assert len(stopped) == 1, stderr
        assert f"stopped by {signal.Signals(signum).name}" in stopped[0]
        assert "state saved" in stopped[0]
        fields = summary_of(stderr)
        assert fields["exit"] == str(code)
        # queued fetches are cancelled, not worked off: the 2 running end, nothing new starts
        assert pypi.count_pages() - asked <= 2 * 2 + 2, "the queue was worked off"
        state = load_state(mirror.state)
        assert fields["pending"] != "0"
        if phase == "update":
            assert state.serial == pypi.last_serial  # the rest is pending with its serial
            assert int(fields["pending"]) == len(state.pending) > 0
        else:
            assert state.serial is None and state.full_sync_in_progress
        assert not any(mirror.layout.staging_dir.glob("*"))
        pypi.clear_faults()
        pypi.reset_log()
        assert mirror.run() == 0
        assert pypi.count_pages() < len(names), "the pages written were not fetched again"
        assert_mirror_matches_upstream(mirror)


@pytest.mark.parametrize(
    ("target", "options"),
    [("changelog_since_serial", ()), ("root", ("--no-xmlrpc",))],
)
def test_a_signal_while_pypi_holds_its_answer_stops_the_run_at_once(
    tmp_path: Path, target: str, options: tuple[str, ...]
) -> None:
    """The changelog (XML-RPC) and the JSON root stream over libcurl, returning to Python at
    least once a second: SIGTERM while PyPI holds the answer for a minute ends the run in
    seconds, with the serial and the tree as they were."""
    with FakePyPI() as pypi:
        pypi.populate(5, seed=3, max_files=2)
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run(*options) == 0
        pypi.add_release(pypi.project_names()[0], "9.0", files=1)
        before, serial = mirror.targets(), load_state(mirror.state).serial
        pypi.inject(target, "slow", times=1, seconds=60)
        pypi.reset_log()
        process = mirror.popen(*options)
        wait_for(lambda: pypi.count(target) >= 1, f"the {target} request")
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        _, stderr = process.communicate(timeout=90)
        assert time.monotonic() - stopped < 5, "the run waited for PyPI's answer"
        assert process.returncode == cli_support.EXIT_TERMINATED, stderr
        assert "stopped by SIGTERM" in stderr
        assert load_state(mirror.state).serial == serial and mirror.targets() == before
        pypi.clear_faults()
        assert mirror.run(*options) == 0
        assert_mirror_matches_upstream(mirror)


def test_no_traceback_for_an_internal_error(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    def broken() -> int:
        raise RuntimeError("a bug")

    assert cli_support.run_cli(logging.getLogger("t"), broken) == cli_support.EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err


# --- (6) options that passed validation and then crashed -----------------------------------

BAD_OPTIONS = [
    ("--timeout", "0"),
    ("--timeout", "nan"),
    ("--timeout", "inf"),
    ("--xmlrpc-interval", "inf"),
    ("--backoff", "nan"),
    ("--grace", "nan"),
    ("--rstuf-wait", "nan"),
    ("--rstuf-poll", "0"),
    ("--workers", "10000"),
    ("--workers", "33"),
    ("--retries", "-1"),
    ("--failure-limit", "-1"),
    ("--max-page-bytes", "1e6"),
    ("--pypi-url", "127.0.0.1:8080"),
    ("--pypi-url", "http://127.0.0.1:8080/simple/"),
    ("--pypi-url", "https://pypi.org/pypi"),
    ("--pypi-url", "http://"),
    ("--rstuf-url", "localhost:8081"),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_OPTIONS])
def test_a_bad_option_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", "http://127.0.0.1:9")
    capsys.readouterr()
    assert pypi_mirror.main(mirror.args(option, value)) == 2
    stderr = capsys.readouterr().err
    assert f"argument {option}" in stderr
    assert summary_of(stderr)["exit"] == "2"
    assert not mirror.root.exists() and not mirror.state.exists()
    if value.endswith(("/simple/", "/pypi")):
        assert "base URL" in stderr  # the common mistake is named


def test_a_bad_option_on_the_real_command_line(tmp_path: Path) -> None:
    """Seen: `--timeout 0` a ValueError traceback, `--timeout inf` an OverflowError."""
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", "http://127.0.0.1:9")
    for value in ("0", "inf"):
        result = mirror.cli("--timeout", value)
        assert result.returncode == 2, result.stderr
        assert "argument --timeout: must be" in result.stderr
        assert summary_of(result.stderr)["exit"] == "2"


def test_bad_values_from_the_environment_and_config_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "mirror.toml"
    config.write_text("timeout = nan\n")  # TOML has nan and inf
    for extra_env, args in (
        ({"PYPI_MIRROR_TIMEOUT": "inf"}, []),
        ({}, ["--config", str(config)]),
    ):
        result = subprocess.run(
            [sys.executable, str(REPO / "pypi_mirror.py"), "--mirror-dir", "m", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, **extra_env},
        )
        assert result.returncode == 2, result.stderr
        assert "finite" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_help_shows_every_range() -> None:
    text = " ".join(pypi_mirror.build_parser().format_help().split())
    for needed in ("1-32", "0.05-3600", "0-100000", "--failure-limit", "130", "143"):
        assert needed in text, needed


# --- (7) an upstream failing as a whole ----------------------------------------------------


@pytest.fixture
def big(tmp_path: Path) -> Iterator[tuple[FakePyPI, Mirror]]:
    with FakePyPI() as pypi:
        pypi.populate(100, seed=5, max_files=2)
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        yield pypi, mirror


def test_every_page_503_stops_the_update_after_few_requests(
    big: tuple[FakePyPI, Mirror],
) -> None:
    """Seen: an update of 34 projects took 81 s and 206 log lines, every page 503."""
    pypi, mirror = big
    names = pypi.project_names()
    for name in names:
        pypi.add_release(name, "9.0", files=1)
        pypi.inject(name, "status", times=1000, code=503)
    pypi.reset_log()
    result = mirror.cli()
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    requests = pypi.count_pages()
    assert requests <= FAILURE_LIMIT + WORKERS, f"{requests} page requests"
    assert len(result.stderr.splitlines()) < 50
    breaker = [line for line in result.stderr.splitlines() if "failing as a whole" in line]
    assert len(breaker) == 1 and "--failure-limit" in breaker[0], result.stderr
    state = load_state(mirror.state)
    assert set(state.pending) == set(names), "the rest is kept pending"
    assert state.serial == pypi.last_serial
    assert summary_of(result.stderr)["pending"] == str(len(names))
    pypi.clear_faults()
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    assert not load_state(mirror.state).pending


def test_every_page_404_stops_a_first_sync_after_few_requests(tmp_path: Path) -> None:
    """Seen: every page 404 while XML-RPC works: ~150 of 1,005 pages in 5 minutes."""
    with FakePyPI() as pypi:
        pypi.populate(100, seed=6, max_files=2)
        for name in pypi.project_names():
            pypi.inject(name, "status", times=1000, code=404)
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        result = mirror.cli()
        assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
        assert pypi.count_pages() <= FAILURE_LIMIT + WORKERS
        assert "failing as a whole" in result.stderr
        state = load_state(mirror.state)
        assert state.serial is None and state.full_sync_in_progress
        assert len(state.pending) < 20, "a first sync does not list its listing as pending"
        assert summary_of(result.stderr)["pending"] == "100"
        pypi.clear_faults()
        assert mirror.run() == 0
        assert_mirror_matches_upstream(mirror)


def test_one_failing_project_does_not_trip_the_breaker(big: tuple[FakePyPI, Mirror]) -> None:
    pypi, mirror = big
    for name in pypi.project_names()[:40]:
        pypi.add_release(name, "9.0", files=1)
    pypi.inject(pypi.project_names()[0], "status", times=1000, code=503)
    assert mirror.run("--retries", "20", "--backoff", "0") == cli_support.EXIT_PARTIAL
    assert len(load_state(mirror.state).pending) == 1


# --- (8) --dry-run -------------------------------------------------------------------------


def test_dry_run_of_an_update_plans_from_the_changelog(mirror: Mirror, pypi: FakePyPI) -> None:
    """Seen: it fetched every page, printed an outbox-only plan and created the lock file."""
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    pypi.create_project("Brand.New")
    state = load_state(mirror.state)
    state.outbox.dirty.add("simple/requests/index.html")  # owed from an earlier run
    save_state(mirror.state, state)
    mirror.had_rstuf = True  # a mirror with RSTUF (not configured for this dry run)
    mirror.layout.lock_path.unlink()
    shutil.rmtree(mirror.layout.staging_dir)
    before, state_before = tree(mirror.root), mirror.state.read_bytes()
    pypi.reset_log()
    result = mirror.cli("--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"plan update fetch=3 rstuf=5 serial={state.serial}->{pypi.last_serial}",
        "fetch brand-new",
        "fetch django",
        "fetch numpy",
        "rstuf-add index.html",
        "rstuf-add simple/brand-new/index.html",
        "rstuf-remove simple/django/index.html",
        "rstuf-add simple/numpy/index.html",
        "rstuf-add simple/requests/index.html",
    ]
    assert pypi.count_pages() == 0
    fields = summary_of(result.stderr)
    assert "dry-run" in fields and fields["would_fetch"] == "3"
    assert tree(mirror.root) == before and mirror.state.read_bytes() == state_before
    assert not mirror.layout.lock_path.exists() and not mirror.layout.staging_dir.exists()


def test_dry_run_of_a_first_sync_counts_from_the_listing(tmp_path: Path, pypi: FakePyPI) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    result = mirror.cli("--dry-run")
    assert result.returncode == 0, result.stderr
    listed = len(PROJECTS)
    assert result.stdout.splitlines() == [
        f"plan first-sync fetch={listed} listed={listed} serial={pypi.last_serial}"
    ]
    assert pypi.count_pages() == 0
    assert not mirror.root.exists() and not mirror.state.exists()
    assert summary_of(result.stderr)["would_fetch"] == str(listed)


def test_dry_run_refuses_what_the_run_would_refuse(mirror: Mirror) -> None:
    shutil.rmtree(mirror.layout.served_dir)
    refused(mirror.cli("--dry-run"), "--full-check")


def test_dry_run_does_not_read_a_mirror_a_sync_is_changing(mirror: Mirror) -> None:
    with mirror_lock(mirror.layout.lock_path):
        assert mirror.cli("--dry-run").returncode == cli_support.EXIT_LOCKED


# --- the decisions, without a server ---------------------------------------------------------

HERE = Path("/srv/m")
ID, OTHER_ID = "a" * 32, "b" * 32
UP = "https://pypi.org"


def facts(**changes: object) -> MirrorFacts:
    values = dict(
        directory=HERE,
        exists=True,
        marker=ID,
        served_tree=True,
        root_index=True,
        root_lists_projects=True,
        project_pages=True,
    )
    values.update(changes)
    return MirrorFacts(**values)  # type: ignore[arg-type]


def synced_state(**changes: object) -> State:
    state = State(serial=10, mirror_id=ID, mirror_dir=str(HERE), upstream=UP)
    state.read_schema = 2
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def check(state: State, found: MirrorFacts, full_check: bool = False) -> safety.Verdict:
    return safety.check_identity(state, found, UP, full_check, HERE / "state.json", OTHER_ID)


REFUSALS = {
    "foreign marker": (synced_state(), facts(marker=OTHER_ID), "is the state of mirror"),
    "other upstream": (synced_state(upstream="https://x.org"), facts(), "belongs to a mirror of"),
    "no directory": (synced_state(), facts(exists=False, marker=None), "does not exist"),
    "no marker": (synced_state(), facts(marker=None), "no marker file"),
    "no served tree": (synced_state(), facts(served_tree=False, root_index=False), "served"),
    "no root index": (synced_state(), facts(root_index=False), "no root index"),
    "no pages": (synced_state(), facts(project_pages=False), "holds no page"),
    "no state": (State(), facts(marker=None), "no state file"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_identity_refusals(case: str) -> None:
    state, found, words = REFUSALS[case]
    with pytest.raises(MirrorMismatch, match=words):
        check(state, found)
    if case != "foreign marker":  # --full-check repairs all but a foreign state
        assert check(state, found, full_check=True).warnings


def test_identity_accepts_and_records() -> None:
    assert check(synced_state(), facts()) == safety.Verdict(ID, False, False)
    fresh = check(State(), facts(exists=False, marker=None, root_index=False, project_pages=False))
    assert (fresh.mirror_id, fresh.write_marker) == (OTHER_ID, True)
    old = State(serial=10)
    old.read_schema = 1
    migrated = check(old, facts(marker=None))
    assert migrated.write_marker and "release 1.0" in migrated.notes[0]
    moved = check(synced_state(mirror_dir="/old/place"), facts())
    assert "moved from /old/place" in moved.notes[0]
    empty_root = facts(root_lists_projects=False, project_pages=False)
    assert check(synced_state(), empty_root).mirror_id == ID  # an empty index is fine
    assert safety.canonical_url("HTTPS://PyPI.org/") == UP


def test_serial_check() -> None:
    safety.check_serial(None, 5, UP, Path("s"))
    safety.check_serial(5, 5, UP, Path("s"))
    with pytest.raises(StateAhead, match="ahead"):
        safety.check_serial(6, 5, UP, Path("s"))


def test_circuit_breaker_trips_once_on_a_run_of_failures() -> None:
    breaker = CircuitBreaker(3)
    assert [breaker.record(False) for _ in range(2)] == [False, False]
    assert not breaker.record(True)  # a success resets the run
    assert [breaker.record(False) for _ in range(4)] == [False, False, True, False]
    never = CircuitBreaker(0)
    assert not any(never.record(False) for _ in range(1000))


def test_dry_run_plan_lines() -> None:
    to_fetch = {"a": PendingProject("A", 5, True), "gone": PendingProject("gone", 6, False)}
    owed = ["simple/gone/index.html", "simple/b/index.html"]
    outbox = dry_run.outbox_actions(owed, lambda path: "/b/" in path)
    assert outbox == {"simple/gone/index.html": "remove", "simple/b/index.html": "add"}
    lines = dry_run.update_plan(1, 6, to_fetch, outbox, False)
    assert lines == [
        "plan update fetch=2 rstuf=3 serial=1->6",
        "fetch a",
        "fetch gone",
        "rstuf-add simple/a/index.html",
        "rstuf-add simple/b/index.html",
        "rstuf-remove simple/gone/index.html",
    ]
    assert dry_run.full_sync_plan("first-sync", 3, 4, 9, {}) == [
        "plan first-sync fetch=3 listed=4 serial=9"
    ]


def test_the_marker_is_outside_the_served_tree_and_checked(tmp_path: Path) -> None:
    layout = MirrorLayout(tmp_path)
    assert layout.served_dir not in layout.marker_file.parents
    assert safety.read_marker(layout) is None
    safety.write_marker(layout, ID)
    assert safety.read_marker(layout) == ID
    layout.marker_file.write_text("garbage")
    with pytest.raises(MirrorMismatch, match="damaged"):
        safety.read_marker(layout)
