"""--watch: a long-running process that follows the changelog and delivers without waiting.

The process is the real command line (a subprocess) where signals and exit
codes matter; the memory check drives `Watch` in this process for over a thousand
short cycles against the stand-ins.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.safety import Halt
from pypi_index_mirror.mirror.state import load_state, save_state
from pypi_index_mirror.mirror.store import digest_bytes
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops import command as pypi_mirror
from pypi_index_mirror.ops.progress import Progress
from pypi_index_mirror.ops.settings import config_from
from pypi_index_mirror.sync.run import Sync
from pypi_index_mirror.sync.watch import Watch
from pypi_index_mirror.upstream.client import PypiClient
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import ADD, FakeRstuf
from tests.mirror_helpers import REPO, Mirror, bootstrap, mirror_view, signed_mirror, upstream_page

RSTUF_FAST = ["--rstuf-poll", "0.05"]
PATIENCE = 120.0  # seconds: only so that a broken build fails instead of hanging


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(step=0.02) as fake:
        yield fake


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf) -> Mirror:
    return signed_mirror(tmp_path, pypi.url, rstuf)


def wait_for(what: str, done: Callable[[], bool], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + PATIENCE
    while not done():
        if process.poll() is not None:
            pytest.fail(f"the watch process exited {process.returncode} before {what}: "
                        f"{process.communicate()[1]}")  # fmt: skip
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {PATIENCE:.0f}s: {process.communicate()[1]}")
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=PATIENCE)
    return process.returncode, stderr


def signed_digest(rstuf: FakeRstuf, target: str) -> str | None:
    entry = rstuf.view.get(target)
    return entry["hashes"]["blake2b-256"] if entry else None


def test_watch_picks_up_an_upload_and_rstuf_signs_it_then_stops_cleanly(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf, tmp_path: Path
) -> None:
    metrics = tmp_path / "mirror.prom"
    process = mirror.popen("--watch", "1s", *RSTUF_FAST, "--metrics-file", str(metrics))
    try:
        wait_for("a first cycle", lambda: metrics.exists(), process)
        pypi.add_release("numpy", "2.0")
        page = upstream_page(pypi.url, "numpy")
        assert page is not None
        wanted = digest_bytes(page).hexdigest
        wait_for("numpy 2.0 signed", lambda: signed_digest(rstuf, "simple/numpy/index.html")
                 == wanted, process)  # fmt: skip
        pypi.add_release("requests", "9.0")  # a second change, while the watch goes on
        page = upstream_page(pypi.url, "requests")
        assert page is not None
        wanted = digest_bytes(page).hexdigest
        wait_for("requests 9.0 signed", lambda: signed_digest(
            rstuf, "simple/requests/index.html") == wanted, process)  # fmt: skip
    finally:
        code, stderr = stop(process)
    assert code == cli_support.EXIT_TERMINATED, stderr
    assert "stopped by SIGTERM" in stderr and "state saved" in stderr
    assert "Traceback" not in stderr
    assert mirror.page("numpy") == upstream_page(pypi.url, "numpy")
    state = load_state(mirror.state)
    assert state.serial == pypi.last_serial
    status = json.loads(mirror.layout.status_file.read_text())
    assert status["runs"].get("ok", 0) >= 2  # a record every cycle
    assert status["mirror"]["in_step_seen"] is not None
    text = metrics.read_text()
    assert "pypi_mirror_in_step_timestamp_seconds " in text
    assert "pypi_mirror_serial_lag 0" in text, text
    assert rstuf.view == mirror_view(mirror.layout)
    assert not os.path.exists(mirror.layout.lock_path) or _unlocked(mirror)


def _unlocked(mirror: Mirror) -> bool:
    """The lock went with the process: a single run can take it."""
    return mirror.run(*RSTUF_FAST) == 0


def test_watch_revalidates_a_silent_archive_and_rstuf_signs_it(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    state = load_state(mirror.state)
    assert state.revalidation.at is not None
    state.revalidation = dataclasses.replace(state.revalidation, at=time.time() - 8 * 86400)
    save_state(mirror.state, state)
    pypi.archive_project("django")  # no journal entry
    page = upstream_page(pypi.url, "django")
    assert page is not None
    wanted = digest_bytes(page).hexdigest
    process = mirror.popen("--watch", "1s", *RSTUF_FAST)
    try:
        wait_for("the archived page signed", lambda: signed_digest(
            rstuf, "simple/django/index.html") == wanted, process)  # fmt: skip
    finally:
        code, stderr = stop(process)
    assert code == cli_support.EXIT_TERMINATED, stderr
    assert b'content="archived"' in (mirror.page("django") or b"")


def test_a_watch_stopped_mid_delivery_loses_nothing(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.slow_requests(5, times=1, path="/api/v1/artifacts")  # the add hangs in flight
    process = mirror.popen("--watch", "1s", *RSTUF_FAST)
    target = "simple/numpy/index.html"

    def in_flight() -> bool:
        try:
            box = load_state(mirror.state).outbox
        except Exception:  # mid-replace: read again
            return False
        return any(target in entry.paths for entry in box.uncertain)

    try:
        wait_for("a first cycle", lambda: mirror.layout.status_file.exists(), process)
        pypi.add_release("numpy", "2.0")
        wait_for("the add request in flight", in_flight, process)
    finally:
        code, stderr = stop(process)
    assert code == cli_support.EXIT_TERMINATED, stderr
    assert "state saved" in stderr
    state = load_state(mirror.state)
    assert target in state.outbox.dirty  # still owed: RSTUF never answered
    assert mirror.page("numpy") == upstream_page(pypi.url, "numpy")
    assert mirror.run(*RSTUF_FAST) == 0  # the next run delivers it
    page = mirror.page("numpy")
    assert page is not None
    assert signed_digest(rstuf, target) == digest_bytes(page).hexdigest
    assert rstuf.view == mirror_view(mirror.layout)
    assert any(target in [a["path"] for a in r.body["artifacts"]] for r in rstuf.accepted
               if r.action == ADD)  # fmt: skip


def test_watch_refuses_one_run_actions(mirror: Mirror) -> None:
    done = mirror.cli("--watch", "10s", "--full-check")
    assert done.returncode == cli_support.EXIT_USAGE
    assert "--watch runs until stopped and cannot go with --full-check" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory when the machine has one: each cycle saves state.json and
    status.json durably, and thousands of fsyncs on a disk would time the test, not
    the memory."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="watch-test-") as directory:
        yield Path(directory)


def test_memory_stays_flat_over_a_thousand_cycles(
    pypi: FakePyPI, rstuf: FakeRstuf, fast_dir: Path
) -> None:
    mirror = Mirror(fast_dir / "pypi-index-mirror", fast_dir / "state.json", pypi.url)
    assert mirror.run() == 0
    bootstrap(rstuf, mirror_view(mirror.layout))
    mirror.rstuf_url = rstuf.url
    tmp_path = fast_dir
    args = mirror.args("--watch", "1s", *RSTUF_FAST, "--metrics-file", str(tmp_path / "m.prom"))
    config = config_from(args, pypi_mirror.build_parser(), {})
    halt = Halt()
    pypi_client = PypiClient(config.pypi_url, config, sleep=halt.sleep)
    rstuf_client = pypi_mirror.make_rstuf_client(config)
    progress = Progress(False, 0)
    sync = Sync(config, pypi_client, rstuf_client, progress, halt=halt)
    pypi.log_requests = False  # the stand-in's own log would grow, not the mirror

    def run(cycles: int) -> None:
        watch = Watch(sync, 0.0, cycles=cycles)
        for _ in range(cycles // 100):
            pypi.add_release("numpy", f"3.{pypi.last_serial}")  # an update every 100 cycles
            watch.cycles = watch.done + 100
            watch.follow()

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # pytest keeps every record it captures
    try:
        Watch(sync, 0.0, cycles=1).follow()  # the first cycle reads and checks the state
        run(200)  # warm up: caches, connections, the status file's figures
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        rss_before = _rss()
        run(1000)
        gc.collect()
        after = tracemalloc.take_snapshot()
        rss_after = _rss()
        tracemalloc.stop()
    finally:
        logging.getLogger().setLevel(quiet)
        pypi_client.close()
        rstuf_client.close()
    # only what this project's code allocated: the stand-ins run in this process too, and
    # keep logs of every request (and the libraries' own caches come and go)
    ours = [
        tracemalloc.Filter(True, str(REPO / "*.py")),
        tracemalloc.Filter(True, str(REPO / "pypi_index_mirror" / "*")),
        tracemalloc.Filter(False, str(REPO / "tests" / "*")),
    ]
    before, after = before.filter_traces(ours), after.filter_traces(ours)
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    top = [str(stat) for stat in after.compare_to(before, "lineno")[:8]]
    # 1,000 cycles, 10 of them with an update delivered to RSTUF: what remains is a few
    # hundred bytes a cycle at most (requests/urllib3 keep ~120 B per request themselves)
    assert growth < 64 * 1024, "\n".join(top)
    assert rss_after - rss_before < 8 * 1024 * 1024, (rss_before, rss_after)
    assert load_state(mirror.state).serial == pypi.last_serial
    assert rstuf.view == mirror_view(mirror.layout)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_cycle_that_fails_on_pypi_is_recorded_and_the_next_one_waits_longer(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    """PyPI down for the first cycles (even before the state was read): each is recorded
    with its error, the wait doubles, and the first good cycle applies the changelog."""
    config = config_from(mirror.args("--watch", "1s", *RSTUF_FAST), pypi_mirror.build_parser(), {})
    halt = Halt()
    pypi_client = PypiClient(config.pypi_url, config, sleep=halt.sleep)
    rstuf_client = pypi_mirror.make_rstuf_client(config)
    sync = Sync(config, pypi_client, rstuf_client, Progress(False, 0), halt=halt)
    waits: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    pypi.add_release("numpy", "2.0")
    attempts = 1 + 2  # FAST's --retries 2
    pypi.inject("changelog_last_serial", "status", times=2 * attempts, code=503)
    watch = Watch(sync, 1.0, cycles=3, clock=lambda: now[0], sleep=sleep)
    try:
        watch.follow()
    finally:
        pypi_client.close()
        rstuf_client.close()
    assert watch.pace.cycle_failures == 0  # the third cycle went through
    assert sum(waits) == pytest.approx(2.0 + 4.0)  # 1 s doubled after each failure
    status = json.loads(mirror.layout.status_file.read_text())
    assert status["runs"]["failed"] == 2 and status["runs"]["ok"] >= 1
    assert load_state(mirror.state).serial == pypi.last_serial
    assert mirror.page("numpy") == upstream_page(pypi.url, "numpy")
