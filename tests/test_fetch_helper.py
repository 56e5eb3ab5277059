"""The helper process of a first sync: the same mirror, each page fetched once, and nothing
left running or half-recorded when either process dies."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.sync import fetch_helper
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import Mirror, assert_consistent, assert_mirror_matches_upstream

PROJECTS = 120


@pytest.fixture
def upstream() -> Iterator[FakePyPI]:
    with FakePyPI() as pypi:
        pypi.populate(PROJECTS, seed=3, max_files=3)
        yield pypi


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def started_with_helper(mirror: Mirror, pypi: FakePyPI) -> tuple[object, int]:
    """A first sync whose every page hangs 3 s (it cannot end meanwhile), and its helper's pid."""
    for name in pypi.project_names():
        pypi.inject(name, "slow", times=1, seconds=3)
    process = mirror.popen("--processes", "2")
    wait_for(lambda: process.poll() is not None or children(process.pid))
    assert process.poll() is None, process.communicate()
    (helper,) = children(process.pid)
    return process, helper


def test_two_processes_mirror_every_page_once(tmp_path: Path, upstream: FakePyPI) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    result = mirror.cli("--processes", "2", "-v")
    assert result.returncode == 0, result.stderr
    assert "helper process" in result.stderr
    assert f"added={PROJECTS} " in result.stderr and f"requests={PROJECTS + 2} " in result.stderr
    assert {name: upstream.count_pages(name) for name in upstream.project_names()} == dict.fromkeys(
        upstream.project_names(), 1
    )
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def test_two_processes_retry_their_failures_once_each(tmp_path: Path, upstream: FakePyPI) -> None:
    """Each process's page loop hands a failed request to a worker thread of its own, which
    retries it: every page is mirrored, each failing one requested exactly twice."""
    failing = upstream.project_names()[::10]
    for name in failing:
        upstream.inject(name, "status", times=1, code=503)
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    result = mirror.cli("--processes", "2", "-v")
    assert result.returncode == 0, result.stderr
    assert "helper process" in result.stderr
    counts = {name: upstream.count_pages(name) for name in upstream.project_names()}
    assert {name for name, count in counts.items() if count != 1} == set(failing)
    assert all(counts[name] == 2 for name in failing)
    assert f"requests={PROJECTS + len(failing) + 2} " in result.stderr
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def test_the_helper_dies_with_a_killed_run(tmp_path: Path, upstream: FakePyPI) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    process, helper = started_with_helper(mirror, upstream)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    wait_for(lambda: not alive(helper))


def test_a_stopped_run_stops_its_helper(tmp_path: Path, upstream: FakePyPI) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    process, helper = started_with_helper(mirror, upstream)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == cli_support.EXIT_TERMINATED, stderr
    assert not alive(helper)


def test_a_stopped_run_ends_its_helper_s_retry_pauses(tmp_path: Path, upstream: FakePyPI) -> None:
    """The helper ignores SIGTERM and pauses on its own halt: the parent's poll of the signal
    (`Sync.poll_stop`) is what tells it, so no page is asked again after the signal."""
    for name in upstream.project_names():
        upstream.inject(name, "rate_limit", times=5, seconds=2)  # a 2 s pause after each
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    process = mirror.popen("--processes", "2", "--workers", "4", "--failure-limit", "0", "-v")
    wait_for(lambda: upstream.count_pages() >= 4)  # each worker of both asked, now pausing 2 s
    asked = upstream.count_pages()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == cli_support.EXIT_TERMINATED, stderr
    assert "helper process" in stderr, "no helper was forked"
    assert upstream.count_pages() == asked, "a retry was made after the signal"


def test_a_helper_that_dies_fails_the_run_and_the_rerun_completes(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", upstream.url)
    process, helper = started_with_helper(mirror, upstream)
    os.kill(helper, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == cli_support.EXIT_FAILED
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "helper process" in errors[0] and "rerun" in errors[0], stderr
    upstream.clear_faults()
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    assert_consistent(mirror)


def split_over(function, items: list) -> fetch_helper.HelperSplit:
    """`function` over `items` in this process and a forked helper, 2 workers each."""
    return fetch_helper.HelperSplit(
        function,
        iter(items),
        workers=4,
        window=16,
        portable=lambda result: result,
        on_fork=lambda: None,
        report_requests=lambda: 0,
    )


def shared_references(item: tuple[int, str]) -> tuple[int, str, list[str]]:
    """A result that refers to one string twice, as a Fetched does when a project's display
    name is its normalized name (pickled once, then as a back-reference)."""
    number, name = item
    return number, name, [name, name.upper()]


def test_every_result_crosses_the_pipe_intact() -> None:
    """Seen: projects kept pending under another project's display name (a stale pickle memo)."""
    items = [(number, f"project-{number}") for number in range(2_000)]
    results = sorted(split_over(shared_references, items))
    assert results == [shared_references(item) for item in items]


def logs_each(item: tuple[int, str]) -> int:
    logging.getLogger(cli_support.PACKAGE_LOGGER).warning("fetched %s", item[1])
    return item[0]


def test_the_helpers_log_lines_reach_the_parents_handlers(caplog: pytest.LogCaptureFixture) -> None:
    """Its records go through the parent's handlers (the progress bar's among them), not
    through copies of them the fork left in the helper."""
    items = [(number, f"project-{number}") for number in range(400)]
    with caplog.at_level(logging.WARNING):
        assert sorted(split_over(logs_each, items)) == list(range(400))
    assert sorted(record.getMessage() for record in caplog.records) == sorted(
        f"fetched {name}" for _, name in items
    )
