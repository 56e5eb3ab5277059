"""The one fetch engine (fetch_loop): retries as timers on the loop, no thread, a prompt halt,
and every kind of run (first sync, update, full check) fetched by it alike."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.sync.fetch_loop import Pause, fetch_each
from pypi_index_mirror.upstream.transport import PageLoop, TransportSettings
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import Mirror, assert_consistent, assert_mirror_matches_upstream

SETTINGS = TransportSettings("http://127.0.0.1:9", None, None, None, 1.0, 1.0, 1 << 20)
PROJECTS = 120


class EveryProjectPaused:
    """Steps whose every project pauses once before it ends, asking nothing of the network."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.seconds = seconds
        self.in_progress = 0
        self.most = 0
        self.paused: set[int] = set()

    def begin(self, item: int) -> int:
        self.in_progress += 1
        self.most = max(self.most, self.in_progress)
        return item

    def step(self, fetch: int, outcome: object) -> Pause | int:
        if fetch not in self.paused:
            self.paused.add(fetch)
            return Pause(self.seconds)  # as after a 503: the same request after a pause
        self.in_progress -= 1
        return fetch

    def halted(self) -> bool:
        return False

    def unfetched(self, item: int) -> int:
        return -item

    def item_of(self, fetch: int) -> int:
        return fetch


def test_projects_waiting_on_a_retry_hold_their_slots() -> None:
    steps = EveryProjectPaused()
    results = fetch_each(steps, iter(range(40)), 3, lambda: PageLoop(SETTINGS))
    assert sorted(results) == list(range(40))
    assert steps.most <= 3, "the loop took projects while every slot waited on a retry"


def test_a_pause_lasts_its_seconds_and_ends_without_a_request() -> None:
    steps = EveryProjectPaused(seconds=0.3)
    started = time.monotonic()
    assert sorted(fetch_each(steps, iter(range(3)), 3, lambda: PageLoop(SETTINGS))) == [0, 1, 2]
    assert 0.3 <= time.monotonic() - started < 3.0  # the three pauses ran side by side


def test_a_halt_ends_every_pause_and_project_at_once() -> None:
    class HaltedDuringThePause(EveryProjectPaused):
        def halted(self) -> bool:
            return len(self.paused) >= 2  # both projects in progress wait on a 60 s pause

    steps = HaltedDuringThePause(seconds=60)
    started = time.monotonic()
    results = list(fetch_each(steps, iter(range(1, 6)), 2, lambda: PageLoop(SETTINGS)))
    assert time.monotonic() - started < 5
    assert sorted(results) == [-5, -4, -3, -2, -1], "every project comes back unfetched"


# --- through the command line --------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[FakePyPI]:
    with FakePyPI() as pypi:
        pypi.populate(PROJECTS, seed=3, max_files=3)
        yield pypi


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_a_first_sync_fetches_every_page_once(tmp_path: Path, upstream: FakePyPI) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    result = mirror.cli("-v")
    assert result.returncode == 0, result.stderr
    assert f"added={PROJECTS} " in result.stderr and f"requests={PROJECTS + 2} " in result.stderr
    assert {name: upstream.count_pages(name) for name in upstream.project_names()} == dict.fromkeys(
        upstream.project_names(), 1
    )
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def test_a_retry_after_a_503_waits_its_retry_after_on_the_loop_without_a_thread(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    """A 503 with Retry-After: 1 is asked again after a second, by the loop's timer: the
    process runs one thread from start to end (with no progress timer: --progress-interval
    0), and every other project goes on meanwhile."""
    failing = upstream.project_names()[::10]
    for name in failing:
        upstream.inject(name, "status", times=1, code=503, retry_after=1)
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    started = time.monotonic()
    # a backoff would take 15 s or more
    process = mirror.popen("-v", "--backoff", "30", "--progress-interval", "0")
    most = 0
    while process.poll() is None:
        try:
            most = max(most, threads_of(process.pid))
        except (FileNotFoundError, ProcessLookupError, AssertionError):
            break  # ended meanwhile
        time.sleep(0.005)
    _, stderr = process.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stderr
    assert most == 1, f"the sync ran {most} threads"
    assert 1.0 <= elapsed < 10, "the retry did not wait its Retry-After, or waited a backoff"
    assert "HTTP 503; retry 1/2 in 1.0s" in stderr
    counts = {name: upstream.count_pages(name) for name in upstream.project_names()}
    assert {name for name, count in counts.items() if count != 1} == set(failing)
    assert all(counts[name] == 2 for name in failing)
    assert f"requests={PROJECTS + len(failing) + 2} " in stderr
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def test_a_signal_during_a_retry_pause_ends_the_run_at_once(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    """Every project waits out a 60 s Retry-After: SIGTERM ends the run within seconds, asks
    no page again, and keeps every project for the next run, which completes."""
    for name in upstream.project_names():
        upstream.inject(name, "rate_limit", times=1, seconds=60)
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    process = mirror.popen("--workers", "4", "--failure-limit", "0", "-v")
    deadline = time.monotonic() + 30
    while upstream.count_pages() < 4:  # every slot asked, and now pauses 60 s
        assert time.monotonic() < deadline and process.poll() is None, "the sync did not start"
        time.sleep(0.02)
    time.sleep(0.2)
    asked = upstream.count_pages()
    process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped < 5, "the run waited out its retry pauses"
    assert process.returncode == cli_support.EXIT_TERMINATED, stderr
    assert upstream.count_pages() == asked, "a page was asked after the signal"
    assert "stopped by SIGTERM" in stderr
    upstream.clear_faults()
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


@pytest.mark.parametrize("form", ["html", "all"])
def test_an_update_with_faults_on_many_pages_finishes_exact(
    tmp_path: Path, upstream: FakePyPI, form: str
) -> None:
    """An update's pages go through the same loop: each fault is retried on a timer, every
    page read from disk first, every change applied by the batch; the mirror ends exact."""
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    assert mirror.run("--simple-format", form) == 0
    names = upstream.project_names()
    changed = names[::3]
    for name in changed:
        upstream.add_release(name, "99.0")
    faults = [
        ("status", {"code": 503}),
        ("status", {"code": 503, "retry_after": 0}),
        ("rate_limit", {"seconds": 0}),
        ("reset", {}),
        ("truncate", {}),
        ("stale", {}),
        ("slow", {"seconds": 0.2}),
    ]
    faulty = set()
    for number, name in enumerate(changed):
        kind, params = faults[number % len(faults)]
        upstream.inject(name, kind, times=1, **params)
        if kind != "slow":
            faulty.add(name)
    upstream.reset_log()
    assert mirror.run("--simple-format", form) == 0
    forms = 2 if form == "all" else 1
    asked = {name for name in names if upstream.count_pages(name)}
    assert asked == set(changed), "an update asks for the changed projects only"
    assert all(upstream.count_pages(name) > forms for name in changed if name in faulty)
    assert not load_state(mirror.state).pending
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def test_a_full_check_with_faults_finishes_exact(tmp_path: Path, upstream: FakePyPI) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    assert mirror.run() == 0
    names = upstream.project_names()
    for number, name in enumerate(names[::7]):
        upstream.inject(name, ("status", "reset", "stale")[number % 3], times=1)
    assert mirror.run("--full-check") == 0
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def test_the_removed_processes_option_is_accepted_with_one_warning(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    """Old cron lines and config files keep working: --processes is ignored, said once."""
    config = tmp_path / "mirror.toml"
    config.write_text("processes = 2\n")
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    result = mirror.cli("--processes", "2", "--config", str(config))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "--processes" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0] and "ignored" in warnings[0]
    assert_mirror_matches_upstream(mirror)
    help_text = mirror.cli("--help").stdout
    assert "--processes" not in help_text
