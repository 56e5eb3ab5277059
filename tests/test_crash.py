"""SIGKILL campaign: a run killed at any point loses nothing and leaves nothing half done.

Each case kills ``pypi_mirror.py`` (a real subprocess) once, either at a named moment
(``PYPI_MIRROR_CRASH_AT``, see ``mirror_store.crash_point``) or after a seeded random
delay (tried again, sooner, from the same start until the kill lands before the run
ends), then reruns it to completion against the same upstream and checks:

- the served tree is byte-identical to a clean first sync of that upstream (``--grace 0``),
  but for superseded hash-prefixed copies ``state.json`` still tracks for deletion (kept
  until RSTUF confirms the new page): no other leftover, no empty directory;
- no temp file remains, in the served tree, in ``.staging`` or beside ``state.json``;
- ``state.json`` parses, its serial is PyPI's last serial, nothing is pending;
- the stand-in RSTUF's published view equals the mirror's pages (length and hash), and
  every artifact ever sent to it is a page version the mirror really served.

Two journeys share one upstream: a first sync (RSTUF not involved) and an update that
starts with changes still owed to RSTUF from a run made while RSTUF was down.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pypi_index_mirror.mirror import store as mirror_store
from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.store import MirrorLayout, normalize_name, project_target
from pypi_index_mirror.ops import cli as cli_support
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import ADD, FakeRstuf
from tests.mirror_helpers import (
    REPO,
    Mirror,
    View,
    assert_consistent,
    assert_mirror_matches_upstream,
    bootstrap,
    mirror_view,
)

SEED = int(os.environ.get("CRASH_SEED", "6"))
RANDOM_KILLS = 7  # per journey
KILL_TRIES = 6  # random delays tried per case before the kill must have landed mid-run
RUN_ARGS = ("--grace", "0", "--rstuf-poll", "0.02")
FIXED_CLOCK = 1_760_000_000  # the same upstream bytes on every run of the suite


def served_files(layout: MirrorLayout, retired: Iterable[str] = ()) -> dict[str, bytes]:
    """Every file served, by relative path, leaving out the `retired` copies still in grace."""
    found = {}
    for path in layout.served_dir.rglob("*"):
        relative = path.relative_to(layout.served_dir).as_posix()
        if path.is_file() and relative not in retired:
            found[relative] = path.read_bytes()
        elif path.is_dir():
            assert any(path.iterdir()), f"empty directory left: {relative}"
    return found


def mutate_a(pypi: FakePyPI, names: list[str]) -> None:
    """Changes made while RSTUF is down: they wait in the outbox."""
    pypi.add_release(names[0], "2.0", files=2)
    pypi.add_release(names[1], "2.0", files=1)
    pypi.remove_project(names[2])
    pypi.create_project("Crash.Created-A")
    pypi.add_release("crash_second_a", "0.1", files=3)
    pypi.add_release(names[3], "7.0", files=1)
    pypi.yank_release(names[3], "7.0", reason="bad")
    pypi.rename_project(names[4], "Renamed-A")


def mutate_b(pypi: FakePyPI, names: list[str]) -> None:
    """Changes the killed update applies."""
    pypi.add_release(names[0], "3.0", files=1)  # changed again, still owed from A
    for name in names[5:9]:
        pypi.add_release(name, "9.0", files=2)
    pypi.remove_project("crash_second_a")  # created in A, gone in B
    pypi.add_release(names[2], "5.0", files=1)  # removed in A, back in B
    pypi.remove_file(names[9], pypi.filenames(names[9])[0])
    pypi.remove_project(names[10])
    for index in range(6):
        pypi.add_release(f"crash-new-{index}", "1.0", files=2)


@dataclass
class World:
    """One upstream, the mirror states along the journey, and the reference."""

    pypi: FakePyPI
    names: list[str]  # the populated projects, in listing order
    after_a: Path  # mirror + state after the A update (outbox owed to RSTUF)
    view0: View  # what RSTUF was bootstrapped with
    allowed: set[tuple[str, int, str]]  # every page version the mirror ever served
    reference: dict[str, bytes]  # served tree of a clean sync of the final upstream
    tally: dict[str, int] = field(
        default_factory=lambda: {"tried": 0, "survived": 0, "random": 0, "mid-run": 0}
    )


def versions(view: View) -> set[tuple[str, int, str]]:
    return {(p, i["length"], i["hashes"]["blake2b-256"]) for p, i in view.items()}


def snapshot(source: Path, target: Path) -> None:
    """Copy a mirror keeping its hard links (a prefixed copy is the page's own inode)."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("crash")
    with FakePyPI(clock=lambda: FIXED_CLOCK) as pypi:
        pypi.populate(30, seed=SEED, max_files=6, archived_share=0, quarantined_share=0)
        names = pypi.project_names()
        first = Mirror(base / "a" / "m", base / "a" / "state.json", pypi.url)
        assert first.run(*RUN_ARGS) == 0
        view0 = mirror_view(first.layout)
        mutate_a(pypi, names)
        first.rstuf_url = "http://127.0.0.1:9"  # RSTUF down: changes stay in the outbox
        assert first.run(*RUN_ARGS, "--retries", "0") == cli_support.EXIT_PARTIAL
        assert_mirror_matches_upstream(first)
        assert load_state(first.state).outbox.dirty
        view_a = mirror_view(first.layout)
        mutate_b(pypi, names)
        reference = Mirror(base / "ref" / "m", base / "ref" / "state.json", pypi.url)
        assert reference.run(*RUN_ARGS) == 0
        assert_mirror_matches_upstream(reference)
        allowed = versions(view0) | versions(view_a) | versions(mirror_view(reference.layout))
        reference_tree = served_files(reference.layout)
        world = World(pypi, names, base / "a", view0, allowed, reference_tree)
        yield world
        tally = world.tally
        print(
            f"\ncrash campaign: {tally['survived']}/{tally['tried']} kills survived; "
            f"{tally['mid-run']}/{tally['random']} random kills landed mid-run"
        )


@dataclass
class Case:
    """One mirror being killed and resumed, with its own stand-in RSTUF (or none).

    `restart` puts the mirror (and RSTUF) back where the case started, for a
    random kill that came after the run had already finished.
    """

    world: World
    mirror: Mirror
    rstuf: FakeRstuf | None
    restart: Callable[[Case], None]

    def popen(self, env: dict[str, str], *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*self.mirror_command(), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )

    def mirror_command(self) -> list[str]:
        script = str(REPO / "pypi_mirror.py")
        return [sys.executable, script, *self.mirror.args(*RUN_ARGS)]

    def requests_seen(self) -> int:
        rstuf_requests = len(self.rstuf.request_log) if self.rstuf else 0
        return len(self.world.pypi.requests) + rstuf_requests

    def kill_at_point(self, point: str) -> None:
        """Run with the crash hook armed; it must die by SIGKILL at that point."""
        process = self.popen({mirror_store.CRASH_AT_ENV: point}, "--workers", "1")
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, f"{point} not reached:\n{stderr}"

    def kill_randomly(
        self, rng: random.Random, window: float, started: Callable[[Case], bool] | None = None
    ) -> None:
        """Kill at a random delay up to `window` after `started` turns true (default: the
        run's first request reached a stand-in), and make sure the kill landed mid-run.

        A run that ends before its kill tested nothing: the case is restarted and
        tried again with a delay drawn below the time that run took.
        """
        for _ in range(KILL_TRIES):
            ran_for = self.kill_once(rng, rng.uniform(0, window), started)
            self.world.tally["random"] += 1
            if ran_for is None:
                self.world.tally["mid-run"] += 1
                return
            window = min(window, ran_for)
            self.restart(self)
        pytest.fail(f"no kill in {KILL_TRIES} tries landed before the run ended")

    def kill_once(
        self, rng: random.Random, delay: float, started: Callable[[Case], bool] | None
    ) -> float | None:
        """SIGKILL the run `delay` seconds after it started; None if it died by the kill,
        else how long it ran (it finished first: its exit status must say it succeeded)."""
        for name in rng.sample(self.world.names, 8):
            self.world.pypi.inject(name, "slow", times=1, seconds=0.03)
        seen = self.requests_seen()
        process = self.popen({})
        deadline = time.monotonic() + 20
        while not (started(self) if started else self.requests_seen() > seen):
            assert process.poll() is None, "the run ended before it started"
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.001)
        began = time.monotonic()
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        self.world.pypi.clear_faults()
        if process.returncode == -signal.SIGKILL:
            return None
        assert process.returncode in (0, cli_support.EXIT_PARTIAL), stderr
        return time.monotonic() - began

    def resume_and_check(self) -> None:
        """Rerun to completion, then check every promise of the campaign."""
        self.world.pypi.clear_faults()
        assert self.mirror.run(*RUN_ARGS) == 0
        layout = self.mirror.layout
        state = load_state(self.mirror.state)
        # byte-identical to a clean sync, but for old copies still tracked for deletion
        assert served_files(layout, state.retired) == self.world.reference
        assert_consistent(self.mirror)
        assert not any(layout.staging_dir.glob("*")), "temp files left in .staging"
        assert sorted(p.name for p in self.mirror.state.parent.iterdir()) == ["m", "state.json"]
        assert state.serial == self.world.pypi.last_serial
        assert not state.pending and not state.full_sync_in_progress and not state.root_stale
        assert not state.outbox.dirty and not state.outbox.tasks
        if self.rstuf is not None:
            assert self.rstuf.view == mirror_view(layout)
            for request in self.rstuf.accepted:
                if request.action != ADD:
                    continue
                for item in request.body["artifacts"]:
                    sent = (item["path"], item["info"]["length"], item["info"]["hashes"])
                    version = (sent[0], sent[1], sent[2]["blake2b-256"])
                    assert version in self.world.allowed, f"sent a page never served: {sent}"
        self.world.tally["survived"] += 1


def start_afresh(case: Case) -> None:
    """Back to no mirror at all (a first sync starts from nothing)."""
    shutil.rmtree(case.mirror.root, ignore_errors=True)
    case.mirror.state.unlink(missing_ok=True)


@pytest.fixture
def first_sync(world: World, tmp_path: Path) -> Case:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", world.pypi.url)
    return Case(world, mirror, None, start_afresh)


@pytest.fixture
def update(world: World, tmp_path: Path) -> Iterator[Case]:
    """A copy of the mirror as the RSTUF-less A run left it, and a freshly bootstrapped RSTUF."""
    target = tmp_path / "case"
    with contextlib.ExitStack() as stack:

        def back_to_after_a(case: Case) -> None:
            shutil.rmtree(target, ignore_errors=True)
            snapshot(world.after_a, target)
            rstuf = stack.enter_context(FakeRstuf(step=0.01))
            bootstrap(rstuf, world.view0)
            case.rstuf, case.mirror.rstuf_url = rstuf, rstuf.url

        mirror = Mirror(target / "m", target / "state.json", world.pypi.url)
        case = Case(world, mirror, None, back_to_after_a)
        back_to_after_a(case)
        yield case


Page = int | str | None  # the index-th populated project, a project's name, "root", or none


def crash_spec(world: World, moment: str, page: Page) -> str:
    """``PYPI_MIRROR_CRASH_AT`` for `moment`, at `page` when it names one."""
    if page is None:
        return moment
    if page == "root":
        return f"{moment}@index.html"
    name = world.names[page] if isinstance(page, int) else page
    return f"{moment}@{project_target(normalize_name(name))}"


# The moments of a first sync, in order: the state saved as it starts, pages written (the
# first listed, one further on), the root index, the state saved at the end.
FIRST_SYNC_POINTS: list[tuple[str, Page]] = [
    ("state-save@full-sync-started", None),
    ("page-temp", 0),
    ("page-renamed", 28),
    ("state-save@root-intent", None),
    ("page-temp", "root"),
    ("page-renamed", "root"),
    ("state-save@run-end", None),
]
# The moments of the update: the changes owed from the A run are delivered first (the add
# of the project A created), then B's pages are written (one changed again, a new one, the
# one A removed back), the root index, and B's changes are delivered (an add, a removal).
UPDATE_POINTS: list[tuple[str, Page]] = [
    ("rstuf-answered", "Crash.Created-A"),
    ("state-save@delivered", None),
    ("state-save@batch-intent", None),
    ("page-temp", 0),
    ("page-renamed", "crash-new-5"),
    ("page-renamed", 2),
    ("state-save@root-intent", None),
    ("page-renamed", "root"),
    ("state-save@run-end", None),
    ("rstuf-answered", "crash-new-0"),
    ("rstuf-answered", 10),
]


def point_id(point: tuple[str, Page]) -> str:
    moment, page = point
    return moment if page is None else f"{moment}@{page}"


@pytest.mark.parametrize(
    ("moment", "page"), FIRST_SYNC_POINTS, ids=map(point_id, FIRST_SYNC_POINTS)
)
def test_first_sync_killed_at_a_named_moment(first_sync: Case, moment: str, page: Page) -> None:
    first_sync.world.tally["tried"] += 1
    first_sync.kill_at_point(crash_spec(first_sync.world, moment, page))
    first_sync.resume_and_check()


@pytest.mark.parametrize(("moment", "page"), UPDATE_POINTS, ids=map(point_id, UPDATE_POINTS))
def test_update_killed_at_a_named_moment(update: Case, moment: str, page: Page) -> None:
    update.world.tally["tried"] += 1
    update.kill_at_point(crash_spec(update.world, moment, page))
    update.resume_and_check()


@pytest.mark.parametrize("attempt", range(RANDOM_KILLS))
def test_first_sync_killed_at_a_random_moment(first_sync: Case, attempt: int) -> None:
    rng = random.Random(SEED * 1000 + attempt)
    first_sync.world.tally["tried"] += 1
    if attempt % 2:  # from the first request: XML-RPC, fetching, writing, the end
        first_sync.kill_randomly(rng, window=0.2)
    else:  # from the first page written: pages are written in batches after their fetch
        writing = lambda case: case.mirror.layout.simple_dir.exists()  # noqa: E731
        first_sync.kill_randomly(rng, window=0.03, started=writing)
    first_sync.resume_and_check()


@pytest.mark.parametrize("attempt", range(RANDOM_KILLS))
def test_update_killed_at_a_random_moment(update: Case, attempt: int) -> None:
    rng = random.Random(SEED * 2000 + attempt)
    update.world.tally["tried"] += 1
    update.kill_randomly(rng, window=0.5)
    update.resume_and_check()


def test_temp_files_of_a_killed_state_save_are_cleared(first_sync: Case) -> None:
    """A kill inside save_state leaves its temp file beside state.json: the next run clears it
    (found by a random kill), and only it: the state's directory may hold anything."""
    directory = first_sync.mirror.state.parent
    directory.mkdir(parents=True, exist_ok=True)
    leftover = directory / ".state.json.tmp-k1ll3d"
    leftover.write_bytes(b'{"schema": 1, "ser')
    unrelated = [directory / ".tmp-someone-else", directory / "notes.txt"]
    for path in unrelated:
        path.write_text("keep me")
    assert first_sync.mirror.run(*RUN_ARGS) == 0
    assert not leftover.exists()
    assert all(path.read_text() == "keep me" for path in unrelated)


HOOK = """
from pypi_index_mirror.mirror.store import crash_point
for moment, subjects in [("state-save", ("run-end",)), ("page-temp", ("simple/a/index.html",))]:
    crash_point(moment, subjects)
    print(moment, *subjects, flush=True)
"""


@pytest.mark.parametrize(
    ("spec", "survived"),
    [
        ("state-save", []),  # no subject: the first time the moment comes
        ("page-temp@simple/a/index.html", ["state-save run-end"]),  # that subject only
    ],
)
def test_crash_hook_kills_at_the_moment_it_names(spec: str, survived: list[str]) -> None:
    env = {**os.environ, mirror_store.CRASH_AT_ENV: spec}
    done = subprocess.run(
        [sys.executable, "-c", HOOK],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.splitlines() == survived


@pytest.mark.parametrize(
    "spec", [None, "page-renamed", "state-save@batch-intent", "page-temp@simple/b/index.html"]
)
def test_crash_hook_spares_every_other_moment(
    monkeypatch: pytest.MonkeyPatch, spec: str | None
) -> None:
    """In this process: were it to fire, the test run itself would die."""
    if spec is None:
        monkeypatch.delenv(mirror_store.CRASH_AT_ENV, raising=False)
    else:
        monkeypatch.setenv(mirror_store.CRASH_AT_ENV, spec)
    mirror_store.crash_point("state-save", ("run-end",))
    mirror_store.crash_point("page-temp", ("simple/a/index.html",))
    mirror_store.crash_point("rstuf-answered", ["simple/a/index.html", "index.html"])
