"""Delivery to an RSTUF that behaves like the real one: worker processes held by unpublished
tasks, publishes on their own queue that can fail, one wait budget per run, disk while RSTUF
is behind, and POSTs whose answer was lost.

The stand-in (tests/fake_rstuf.py) runs 2 metadata worker processes, as a real RSTUF on a
2-core machine does. Where exit codes and log lines matter the command line runs as a
subprocess; where time matters the delivery runs in this process on the stand-in's
`ManualClock`, so the test counts RSTUF seconds and poll intervals, not wall-clock time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pypi_index_mirror.mirror import store as mirror_store
from pypi_index_mirror.mirror.state import Outbox, State, load_state
from pypi_index_mirror.mirror.store import MirrorLayout, digest_bytes
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops import settings
from pypi_index_mirror.rstuf import client as rstuf_client
from pypi_index_mirror.rstuf.artifacts import Artifact
from pypi_index_mirror.rstuf.outbox import RstufDelivery, WaitBudget
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import ADD, PUBLISH, REMOVE, FakeRstuf, ManualClock
from tests.mirror_helpers import (
    REPO,
    Mirror,
    bootstrap,
    mirror_view,
    signed_mirror,
    write_owed_pages,
)

POLL = ("--rstuf-poll", "0.02")


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(processes=2) as fake:
        yield fake


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf) -> Mirror:
    """A first sync (no RSTUF yet), imported into RSTUF as the bootstrap CSV would be."""
    return signed_mirror(tmp_path, pypi.url, rstuf)


def change_many(pypi: FakePyPI, count: int) -> None:
    for index in range(count):
        pypi.add_release(f"bulk{index}", "1.0", files=1)


def of_action(rstuf: FakeRstuf, action: str) -> list:
    return [request for request in rstuf.accepted if request.action == action]


def polled_states(rstuf: FakeRstuf, task_id: str) -> list[int | None]:
    return [
        r.status for r in rstuf.request_log if r.method == "GET" and f"task_id={task_id}" in r.path
    ]


def assert_all_delivered(mirror: Mirror, rstuf: FakeRstuf, but: set[str] = frozenset()) -> None:
    assert rstuf.view == mirror_view(mirror.layout)
    states = {task: state for task, state in rstuf.task_states().items() if task not in but}
    assert set(states.values()) == {"SUCCESS"}
    assert rstuf.busy_processes() == 0
    box = load_state(mirror.state).outbox
    assert not box.dirty and not box.tasks


# --- 1. more requests than worker processes ---------------------------------------------


def test_update_of_many_requests_publishes_everything_with_two_worker_processes(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    change_many(pypi, 12)  # 12 pages + the root index, 2 a request: 7 requests
    result = mirror.cli(*POLL, "--rstuf-batch", "2", "--rstuf-wait", "15")
    assert result.returncode == 0, result.stderr
    assert len(of_action(rstuf, ADD)) == 7
    assert_all_delivered(mirror, rstuf)
    assert rstuf.stats.most_busy_processes == 2


def test_many_requests_of_adds_and_removes_with_one_worker_process(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    """One process: every unpublished task blocks all the others until it is published."""
    with FakeRstuf(processes=1) as rstuf:
        mirror = Mirror(tmp_path / "m", tmp_path / "s.json", pypi.url)
        assert mirror.run() == 0
        bootstrap(rstuf, mirror_view(mirror.layout))
        mirror.rstuf_url = rstuf.url
        change_many(pypi, 5)
        for name in ("Django", "numpy", "requests"):
            pypi.remove_project(name)
        result = mirror.cli(*POLL, "--rstuf-batch", "2", "--rstuf-wait", "15")
        assert result.returncode == 0, result.stderr
        assert len(of_action(rstuf, REMOVE)) == 2 and len(of_action(rstuf, ADD)) == 3
        assert_all_delivered(mirror, rstuf)


def write_pages(layout: MirrorLayout, count: int) -> set[str]:
    """`count` project pages on disk, as targets the outbox owes RSTUF."""
    return write_owed_pages(layout, [f"simple/p{index}/index.html" for index in range(count)])


@dataclass
class Virtual:
    """A delivery in this process on the stand-in's ManualClock: RSTUF time, not wall time."""

    clock: ManualClock
    rstuf: FakeRstuf
    state: State
    delivery: RstufDelivery

    @property
    def box(self) -> Outbox:
        return self.state.outbox


@contextmanager
def virtual(
    tmp_path: Path, pages: int = 12, processes: int = 2, batch: int = 2, budget: float = 600.0
) -> Iterator[Virtual]:
    clock = ManualClock()
    layout = MirrorLayout(tmp_path / "m")
    state = State(serial=1)
    state.outbox.dirty = write_pages(layout, pages)
    with (
        FakeRstuf(processes=processes, clock=clock) as rstuf,
        rstuf_client.RstufClient(rstuf.url, poll_interval=1.0, retries=0) as client,
    ):
        delivery = RstufDelivery(
            state,
            layout,
            client,
            lambda: None,
            batch=batch,
            budget=WaitBudget(budget),
            monotonic=clock.now,
            sleep=clock.advance,
        )
        yield Virtual(clock, rstuf, state, delivery)


@pytest.mark.parametrize("processes", [1, 2])
def test_delivery_takes_a_few_poll_intervals_per_round_of_worker_processes(
    tmp_path: Path, processes: int
) -> None:
    """In RSTUF time: each round of `processes` tasks costs about one poll interval (1 s)."""
    with virtual(tmp_path, processes=processes) as run:
        started = run.clock.now()
        report = run.delivery.deliver(wait=True)
        elapsed = run.clock.now() - started
        assert report.errors == [] and not run.box.dirty and not run.box.tasks
        assert not run.box.publishes and not run.box.uncertain
        assert len(run.rstuf.view) == 12
    rounds = -(-6 // processes)  # 12 pages, 2 a request: 6 requests
    assert elapsed <= rounds + 2, f"{elapsed:.1f} s of RSTUF time"


def test_the_deliveries_of_a_run_share_one_budget(tmp_path: Path) -> None:
    with virtual(tmp_path, pages=2, budget=10.0) as run:
        run.rstuf.hang_tasks(times=1)  # never reaches a worker
        started = run.clock.now()
        first = run.delivery.deliver(wait=False)  # the run's start: one pass
        run.clock.advance(30)  # the mirror updates meanwhile: not RSTUF's time
        last = run.delivery.deliver(wait=True)
        waited = run.clock.now() - started - 30
        assert first.errors == [] and len(last.errors) == 1
        assert "not finished" in last.errors[0] and "--rstuf-wait 10s" in last.errors[0]
        assert run.delivery.budget.spent == pytest.approx(10.0, abs=1.0)
        assert waited == pytest.approx(10.0, abs=1.0)


def test_publishing_stops_for_the_run_after_repeated_failures(tmp_path: Path) -> None:
    with virtual(tmp_path, pages=2, budget=600.0) as run:
        run.rstuf.fail_tasks("FAILURE", times=100, error="disk full", actions=(PUBLISH,))
        started = run.clock.now()
        report = run.delivery.deliver(wait=True)
        publishes = of_action(run.rstuf, PUBLISH)
        assert len(publishes) == RstufDelivery.MAX_PUBLISH_FAILURES
        assert any("publishes failed" in e and "disk full" in e for e in report.errors)
        assert run.clock.now() - started < 60, "gave up instead of spending the budget"
        assert run.box.tasks, "its tasks are published next run"


def test_unfinished_publishes_followed_at_once_are_bounded(tmp_path: Path) -> None:
    # a new publish every PUBLISH_POLLS (30) polls of 1 s while none finishes
    with virtual(tmp_path, pages=2, budget=130.0) as run:
        run.rstuf.hang_tasks(times=1000, actions=(PUBLISH,))  # the publish worker is gone
        run.delivery.deliver(wait=True)
        assert len(of_action(run.rstuf, PUBLISH)) > RstufDelivery.MAX_OPEN_PUBLISHES
        assert len(run.box.publishes) == RstufDelivery.MAX_OPEN_PUBLISHES


# --- 2. the publish task is polled, and retried -----------------------------------------


def test_a_failed_publish_is_retried_in_the_same_run(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.processes = 8  # room for every task: only the publish can hold them back
    rstuf.fail_tasks("ERRORED", times=1, error="storage backend down", actions=(PUBLISH,))
    change_many(pypi, 5)
    result = mirror.cli(*POLL, "--rstuf-batch", "2", "--rstuf-wait", "15")
    assert result.returncode == 0, result.stderr
    publishes = of_action(rstuf, PUBLISH)
    assert len(publishes) >= 2
    first = rstuf.task_states()[publishes[0].task_id]
    assert first == "ERRORED" and polled_states(rstuf, publishes[0].task_id)
    assert rstuf.view == mirror_view(mirror.layout)


def test_every_publish_is_polled_until_it_succeeded(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    change_many(pypi, 5)
    assert mirror.run(*POLL, "--rstuf-batch", "2") == 0
    publishes = of_action(rstuf, PUBLISH)
    assert publishes
    for publish in publishes:
        assert rstuf.task_states()[publish.task_id] == "SUCCESS"
        assert polled_states(rstuf, publish.task_id), f"publish {publish.task_id} never polled"


def test_a_publish_still_running_at_the_end_is_kept_and_polled_next_run(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.hang_tasks(times=1, actions=(PUBLISH,))  # RSTUF never runs it (a lost message)
    change_many(pypi, 3)
    assert mirror.run(*POLL, "--rstuf-wait", "0.5") == cli_support.EXIT_PARTIAL
    (hung,) = of_action(rstuf, PUBLISH)[:1]
    assert hung.task_id in {p.task_id for p in load_state(mirror.state).outbox.publishes}
    assert mirror.run(*POLL) == 0  # polled again, then superseded by a publish that succeeded
    assert polled_states(rstuf, hung.task_id)[-1] == 200
    assert rstuf.task_states()[hung.task_id] == "PENDING"
    assert_all_delivered(mirror, rstuf, but={hung.task_id})
    assert not load_state(mirror.state).outbox.publishes


def test_tasks_left_running_after_a_successful_publish_get_another_publish(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.hollow_publishes(times=2)  # SUCCESS, yet nothing published (the publish race)
    change_many(pypi, 3)
    result = mirror.cli(*POLL, "--rstuf-wait", "15")
    assert result.returncode == 0, result.stderr
    assert len(of_action(rstuf, PUBLISH)) >= 3
    assert_all_delivered(mirror, rstuf)


# --- 3. one wait budget per run; running without RSTUF ----------------------------------


def test_the_wait_budget_is_spent_once_per_run(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.hang_tasks(times=1)  # the first run's task never reaches a worker
    pypi.add_release("numpy", "2.0")
    assert mirror.run(*POLL, "--rstuf-wait", "0.2") == cli_support.EXIT_PARTIAL
    pypi.add_release("Django", "2.0")  # the second run has old and new work
    result = mirror.cli(*POLL, "--rstuf-wait", "1")
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    assert len(re.findall(r"not finished", result.stderr)) == 1, result.stderr
    waited = re.search(r"rstuf_waited=([0-9.]+)s", result.stderr)
    assert waited and float(waited.group(1)) <= 1.5, result.stderr


def test_the_default_wait_fits_the_readme_cron_line() -> None:
    readme = (REPO / "README.md").read_text()
    (interval,) = re.findall(r"^\*/(\d+) \* \* \* \* .*pypi_mirror\.py", readme, re.M)
    default = settings.Config().rstuf_wait
    assert default <= int(interval) * 60 / 2, "a run must leave the cron interval room"
    (said,) = re.findall(r"at most `--rstuf-wait` \((\d+) s\)", readme)
    assert float(said) == default


def test_changes_owed_without_an_rstuf_url_warn_once_and_exit_partial(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    mirror.rstuf_url = None
    pypi.add_release("numpy", "2.0")
    result = mirror.cli("-q")
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "RSTUF" in warnings[0], result.stderr
    assert "simple/numpy/index.html" in load_state(mirror.state).outbox.dirty


def test_no_rstuf_records_nothing_warns_nothing_and_exits_0(mirror: Mirror, pypi: FakePyPI) -> None:
    mirror.rstuf_url = None
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    result = mirror.cli("--no-rstuf", "--grace", "0")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    box = load_state(mirror.state).outbox
    assert not box.dirty and not box.tasks
    assert not mirror.layout.project_dir("django").exists()
    numpy = mirror.layout.project_dir("numpy")
    assert len(list(numpy.iterdir())) == 2, "the page and its one prefixed copy"


def test_no_rstuf_drops_what_an_earlier_run_kept_for_rstuf(mirror: Mirror, pypi: FakePyPI) -> None:
    mirror.rstuf_url = None
    pypi.add_release("numpy", "2.0")
    assert mirror.run() == cli_support.EXIT_PARTIAL  # RSTUF meant, not configured
    assert load_state(mirror.state).outbox.dirty
    result = mirror.cli("--no-rstuf", "--grace", "0")
    assert result.returncode == 0, result.stderr
    assert "dropped 1 change(s)" in result.stderr and "--audit --repair" in result.stderr
    assert not load_state(mirror.state).outbox.dirty
    assert len(list(mirror.layout.project_dir("numpy").iterdir())) == 2


def test_no_rstuf_with_an_rstuf_url_is_a_usage_error(mirror: Mirror) -> None:
    result = mirror.cli("--no-rstuf")  # the fixture's mirror has --rstuf-url
    assert result.returncode == cli_support.EXIT_USAGE
    assert "--no-rstuf and an RSTUF URL" in result.stderr
    assert "Traceback" not in result.stderr


# --- 4. disk and duplicates while RSTUF is behind ---------------------------------------


def served_bytes(root: Path) -> int:
    """Bytes under `root`, each inode once (hard links cost nothing)."""
    seen, total = set(), 0
    for path in root.rglob("*"):
        stat = path.lstat()
        if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def test_disk_use_stays_bounded_through_a_24_run_outage(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf, capsys: pytest.CaptureFixture
) -> None:
    url, mirror.rstuf_url = mirror.rstuf_url, "http://127.0.0.1:9"  # RSTUF down
    root_dir, numpy_dir = mirror.layout.served_dir, mirror.layout.project_dir("numpy")
    before = served_bytes(root_dir)
    figures = []
    for run in range(24):
        pypi.add_release("numpy", f"2.{run}")  # numpy's page changes every run
        pypi.create_project(f"new-{run}")  # and so does the root index
        assert mirror.run("--grace", "0", "--retries", "0") == cli_support.EXIT_PARTIAL
        figures.append((served_bytes(root_dir), mirror.state.stat().st_size))
    root_copies = [p for p in root_dir.glob("*.index.html")]
    numpy_copies = [p for p in numpy_dir.glob("*.index.html")]
    # what RSTUF last confirmed (the bootstrap's) and the current one: nothing in between
    assert len(root_copies) == 2 and len(numpy_copies) == 2
    grown = figures[-1][0] - before
    with capsys.disabled():
        print(
            f"\n24-run outage: served tree {before} -> {figures[-1][0]} bytes "
            f"(+{grown}, of which {24 * 2} new projects' pages); state.json "
            f"{figures[0][1]} -> {figures[-1][1]} bytes"
        )
    assert len(load_state(mirror.state).retired) <= 4
    mirror.rstuf_url = url  # RSTUF is back: one run delivers, and the old copies go
    assert mirror.run(*POLL, "--grace", "0") == 0
    assert rstuf.view == mirror_view(mirror.layout)
    assert len(list(numpy_dir.glob("*.index.html"))) == 1
    assert len(list(root_dir.glob("*.index.html"))) == 1
    assert load_state(mirror.state).retired == {}


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Wait (in real time) for something the stand-in does on its own."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_post_retried_after_a_read_timeout_is_tracked_and_cannot_hold_a_worker(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    """The first attempt is handled after the client gave up: RSTUF starts that task too."""
    # a read timeout of 1 s holds for the other requests on a loaded machine
    rstuf.slow_requests(3.0, times=1, path="/api/v1/artifacts/")
    change_many(pypi, 3)  # 3 pages and the root index: two requests of two
    result = mirror.cli(*POLL, "--rstuf-batch", "2", "--timeout", "1", "--rstuf-wait", "15")
    assert result.returncode == 0, result.stderr
    assert "Read timed out" in result.stderr and "retry 1/" in result.stderr
    (uncertain,) = load_state(mirror.state).outbox.uncertain
    retried = of_action(rstuf, ADD)[0]
    assert uncertain.paths == [item["path"] for item in retried.body["artifacts"]]
    # the duplicate reaches a worker and holds it, unpublished
    wait_until(lambda: len(of_action(rstuf, ADD)) == 3, "the slow request is handled")
    duplicate = of_action(rstuf, ADD)[2]
    assert duplicate.body == retried.body, "the same final states: the same rows"
    wait_until(lambda: rstuf.task_states()[duplicate.task_id] == "RUNNING", "it holds a worker")
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    assert mirror.run(*POLL, "--rstuf-batch", "1") == 0  # two requests, one free worker
    assert set(rstuf.task_states().values()) == {"SUCCESS"}, "a duplicate still holds a worker"
    assert rstuf.busy_processes() == 0
    assert rstuf.view == mirror_view(mirror.layout)
    held = load_state(mirror.state).outbox.held_digests()
    assert set(uncertain.digests.items()) <= {(t, d) for t, ds in held.items() for d in ds}


def test_tasks_nobody_tracks_holding_every_worker_are_published_free(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    """Both processes held by unpublished tasks the mirror never learnt of (lost answers)."""
    with rstuf_client.RstufClient(rstuf.url) as other:
        for name in ("orphan-a", "orphan-b"):
            page = digest_bytes(name.encode())
            artifact = Artifact(
                f"simple/{name}/index.html", page.length, {page.algorithm: page.hexdigest}
            )
            other.add([artifact], publish=False)
    pypi.add_release("numpy", "2.0")
    result = mirror.cli(*POLL, "--rstuf-wait", "15")
    assert result.returncode == 0, result.stderr
    assert rstuf.busy_processes() == 0
    assert rstuf.view == mirror_view(mirror.layout) | {
        path: info for path, info in rstuf.view.items() if "orphan" in path
    }


def test_a_run_killed_between_post_and_record_leaves_its_task_tracked(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    change_many(pypi, 3)
    killed = mirror.cli(
        *POLL, "--rstuf-batch", "2", env={mirror_store.CRASH_AT_ENV: "rstuf-answered"}
    )
    assert killed.returncode < 0
    state = load_state(mirror.state)
    assert state.outbox.uncertain, "the request RSTUF accepted is known to the outbox"
    assert mirror.run(*POLL, "--rstuf-batch", "2") == 0
    assert set(rstuf.task_states().values()) == {"SUCCESS"}
    assert rstuf.view == mirror_view(mirror.layout)
