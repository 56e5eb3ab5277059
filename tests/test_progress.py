"""Progress: a bar on a terminal that log lines never garble; timed log lines without one; -v."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops.progress import Phase, Progress
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import FakeRstuf
from tests.mirror_helpers import REPO, Mirror, bootstrap, mirror_view

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR) ")


def visible_lines(output: str) -> list[str]:
    """What a terminal shows of each line: the text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in output.replace("\r\n", "\n").split("\n")]


def assert_log_lines_start_their_own_line(output: str) -> list[str]:
    """Every log line starts at column 0 (after the bar was cleared), never after a bar."""
    output = output.replace("\r\n", "\n")  # a terminal's line discipline adds the \r
    logged = [line for line in output.split("\n") if re.search(r"Z (INFO|WARNING|ERROR) ", line)]
    assert logged, output
    for line in logged:
        shown = line.rsplit("\r", 1)[-1]
        assert TIMESTAMP.match(shown), f"garbled: {line!r}"
        cleared = line.rsplit("\r", 1)[0].rsplit("\r", 1)[-1] if "\r" in line else ""
        assert cleared.strip() == "", f"bar text left before a log line: {line!r}"
    return logged


# --- the pieces


def test_a_progress_line_has_counts_rate_failures_elapsed_and_eta() -> None:
    phase = Phase("fetching", total=10, unit="pages", started=100.0, done=4, failed=1)
    assert phase.line(102.0) == ("fetching: 4/10 pages (40%), 2.0/s, 1 failed, 2s elapsed, ETA 3s")
    assert phase.line(102.0, "done").endswith("2s elapsed, done")
    stalled = Phase("delivering", total=3, unit="paths", started=0.0)
    assert stalled.line(60.0) == (
        "delivering: 0/3 paths (0%), 0.0/s, 0 failed, 60s elapsed, ETA unknown"
    )


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30  # generous: a loaded machine may run the timer late
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 30 s"
        time.sleep(0.005)


def test_without_a_terminal_a_line_is_logged_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=cli_support.PACKAGE_LOGGER)
    progress = Progress(bar=False, interval=0.01)
    progress.start(100, "fetching")
    progress.advance(3)
    progress.advance(failed=True)
    wait_for(lambda: caplog.records, "progress line")
    progress.finish()
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("fetching: 4/100 pages (4%), ") and ", 1 failed, " in lines[0]
    assert lines[-1].endswith(", done")
    caplog.clear()
    time.sleep(0.05)
    assert caplog.records == [], "the timer stops with its phase"


def test_a_short_phase_or_interval_0_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=cli_support.PACKAGE_LOGGER)
    for interval in (0, 3600):
        progress = Progress(bar=False, interval=interval)
        progress.start(5, "fetching")
        progress.advance(5)
        progress.finish()
        progress.close()
    assert caplog.records == []


def test_a_phase_cut_short_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=cli_support.PACKAGE_LOGGER)
    progress = Progress(bar=False, interval=0.01)
    progress.start(5, "delivering", unit="paths")
    progress.update_to(2)
    wait_for(lambda: caplog.records, "progress line")
    progress.close()  # the run ended with the phase open
    assert caplog.records[-1].getMessage().startswith("delivering: 2/5 paths (40%)")
    assert caplog.records[-1].getMessage().endswith(", unfinished")


def test_the_bar_shows_rate_eta_counts_and_failures_with_logs_above_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_support.configure_logging(False, False)  # a handler on sys.stderr, as in a run
    log = logging.getLogger(cli_support.PACKAGE_LOGGER)
    progress = Progress(bar=True)
    progress.start(50, "fetching")
    for index in range(50):
        progress.advance(failed=index % 20 == 0)
        if index in (10, 30):
            log.warning("numpy: HTTP 503; kept pending for the next run")
    progress.finish()
    log.info("after the bar")
    err = capsys.readouterr().err
    assert "fetching: 100%" in err and "50/50" in err and "pages/s" in err
    assert "3 failed" in err
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, ", err), "elapsed<remaining (the ETA)"
    logged = assert_log_lines_start_their_own_line(err)
    assert sum("kept pending" in line for line in logged) == 2


# --- the command line


def run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run pypi_mirror.py with stderr on a pseudo-terminal of 120 columns; its code and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, str(REPO / "pypi_mirror.py"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=cwd,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        code = process.wait(timeout=60)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_the_bar_and_the_log_lines_share_the_screen_cleanly(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    pypi.populate(200, seed=3)
    pypi.inject("numpy", "status", times=100, code=503)  # retries, then a warning
    mirror = Mirror(tmp_path / "m", tmp_path / "m" / "state.json", pypi.url)
    code, output = run_on_a_terminal(mirror.args("--workers", "2"), tmp_path)
    assert code == cli_support.EXIT_PARTIAL, output
    assert "fetching:" in output and "pages/s" in output and "1 failed" in output
    assert re.search(r"\d+/205 ", output), output
    logged = assert_log_lines_start_their_own_line(output)
    assert any("kept pending" in line for line in logged)
    assert any(re.search(r"; retry \d+/\d+ in ", line) for line in logged)
    assert visible_lines(output)[-2].split(" INFO ")[1].startswith("summary ")


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(step=0.15) as fake:  # each task takes ~0.3 s: delivering is a long phase
        yield fake


def test_without_a_terminal_long_phases_log_progress_lines(
    tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "m" / "state.json", pypi.url)
    assert mirror.run() == 0
    bootstrap(rstuf, mirror_view(mirror.layout))
    mirror.rstuf_url = rstuf.url
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    pypi.inject("numpy", "slow", seconds=0.5)  # fetching lasts half a second
    result = mirror.cli("--progress-interval", "0.05", "--rstuf-poll", "0.05")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    fetching = [line for line in lines if " INFO fetching: " in line]
    assert fetching and all("/2 pages (" in line for line in fetching), lines
    assert fetching[-1].endswith(", done")
    delivering = [line for line in lines if " INFO delivering: " in line]
    assert delivering and delivering[-1].endswith(", done"), lines
    assert re.search(r"delivering: 2/2 paths \(100%\)", delivering[-1])


def test_verbose_logs_each_page_fetched(mirror_dir: Path, pypi: FakePyPI) -> None:
    mirror = Mirror(mirror_dir, mirror_dir / "state.json", pypi.url)
    result = mirror.cli("-v")
    assert result.returncode == 0, result.stderr
    pages = re.findall(r" DEBUG page (\S+): HTTP 200, serial (\d+), (\d+) bytes", result.stderr)
    assert sorted(name for name, _, _ in pages) == [
        "django",
        "foo-bar",
        "numpy",
        "requests",
        "zope-interface",
    ]
    for name, serial, size in pages:
        assert int(serial) == pypi.project_serial(name)
        assert int(size) == mirror.layout.project_page(name).stat().st_size
    assert " DEBUG XML-RPC changelog_last_serial: HTTP 200, " in result.stderr
    quiet = mirror.cli()
    assert " DEBUG " not in quiet.stderr


@pytest.fixture
def mirror_dir(tmp_path: Path) -> Path:
    return tmp_path / "m"
