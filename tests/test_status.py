"""status.json, --status (text and JSON) and --metrics-file, against the stand-in PyPI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.mirror.store import CRASH_AT_ENV, mirror_lock
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops import command as pypi_mirror
from pypi_index_mirror.ops import metrics as run_metrics
from pypi_index_mirror.ops import status as run_status
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import REPO, Mirror


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    mirror = Mirror(tmp_path / "m", tmp_path / "m" / "state.json", pypi.url)
    assert mirror.run() == 0
    return mirror


def status_of(mirror: Mirror, capsys: pytest.CaptureFixture[str]) -> dict:
    """``--status --json`` as a script reads it."""
    capsys.readouterr()
    assert pypi_mirror.main(mirror.args("--status", "--json")) == 0
    return json.loads(capsys.readouterr().out)


def epoch(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


def metrics(path: Path) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, parsed by Prometheus's own client library."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# --- --status


def test_status_reports_the_last_run_and_the_mirror_without_the_network(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    pypi.add_release("numpy", "2.0")  # an update: one page changes, its old copy retires
    mirror.had_rstuf = True  # RSTUF meant but not configured: the change waits in the outbox
    before = time.time()
    assert mirror.run() == cli_support.EXIT_PARTIAL
    after = time.time()
    pypi.reset_log()
    status = status_of(mirror, capsys)
    assert pypi.requests == [], "--status reads local files only"
    run = status["last_run"]
    assert (run["exit_code"], run["result"], run["error"]) == (75, "partial", None)
    assert int(before) <= epoch(run["started"]) <= epoch(run["ended"]) <= after
    assert run["summary"].startswith("summary added=0 updated=1 removed=0 ")
    assert run["counts"]["updated"] == 1 and run["counts"]["requests"] >= 2
    assert status["running"] is None and status["last_killed"] is None
    assert status["last_success"] == run["ended"]
    assert status["serial"] == status["upstream_serial"] == pypi.last_serial
    assert status["lag"] == 0
    assert (status["pending"], status["pending_sample"]) == (0, [])
    outbox = status["outbox"]
    assert (outbox["paths"], outbox["tasks"]) == (1, 0)
    assert int(before) <= epoch(outbox["oldest_unsent"]) <= after
    assert status["retired_copies"] == 1
    assert status["runs"] == {"ok": 1, "partial": 1}

    capsys.readouterr()
    assert pypi_mirror.main(mirror.args("--status")) == 0
    text = capsys.readouterr().out
    for needle in (
        "exit 75 (partial)",
        run["summary"],
        f"serial        {pypi.last_serial}; upstream {pypi.last_serial} as seen",
        "lag 0",
        "pending       0 projects",
        "outbox        1 path not confirmed by RSTUF (0 tasks in flight); oldest unsent change",
        "retired       1 old hash-prefixed copy in their grace",
    ):
        assert needle in text, (needle, text)


def test_the_oldest_unsent_change_keeps_its_time_across_runs(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.had_rstuf = True  # RSTUF meant but not configured: changes wait in the outbox
    pypi.add_release("numpy", "2.0")
    assert mirror.run() == cli_support.EXIT_PARTIAL
    first = run_status.load_status(mirror.layout.status_file)
    assert first is not None and first.last_run is not None
    pypi.add_release("Django", "2.0")
    assert mirror.run() == cli_support.EXIT_PARTIAL
    second = run_status.load_status(mirror.layout.status_file)
    assert second is not None and second.last_run is not None
    since = second.mirror.outbox_since
    assert since["simple/numpy/index.html"] == first.mirror.outbox_since["simple/numpy/index.html"]
    assert since["simple/django/index.html"] == second.last_run.started
    assert second.mirror.oldest_unsent == first.last_run.started
    assert status_of(mirror, capsys)["outbox"]["oldest_unsent"] == run_status.iso(
        first.last_run.started
    )


def test_a_failed_run_is_recorded_with_its_exit_code_and_line(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    good = status_of(mirror, capsys)
    pypi.stop()  # the mirror's upstream, gone (another URL would be refused as another's)
    assert mirror.run() == cli_support.EXIT_FAILED
    logged = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    status = status_of(mirror, capsys)
    run = status["last_run"]
    assert (run["exit_code"], run["result"]) == (1, "failed")
    assert "connection failed" in run["error"] and logged[-1].endswith(run["error"])
    assert status["last_success"] == good["last_success"], "a failure is no success"
    assert status["serial"] == good["serial"] and status["upstream_serial"] == good["serial"]
    assert status["runs"] == {"ok": 1, "failed": 1}


def test_a_partly_done_run_names_its_pending_projects(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "status", times=100, code=503)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    status = status_of(mirror, capsys)
    assert (status["last_run"]["exit_code"], status["last_run"]["result"]) == (75, "partial")
    assert (status["pending"], status["pending_sample"]) == (1, ["numpy"])
    assert status["last_success"] == status["last_run"]["ended"]  # 75 completed the run
    assert status["last_run"]["counts"]["failed"] == 1


def test_a_stopped_run_is_recorded(mirror: Mirror, pypi: FakePyPI) -> None:
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "slow", seconds=60)
    pypi.reset_log()
    process = mirror.popen("--timeout", "1")  # a stop waits for the requests in flight
    deadline = time.monotonic() + 60
    while pypi.count_pages("numpy") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the run is now waiting for the slow page
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == cli_support.EXIT_TERMINATED, stderr
    status = run_status.load_status(mirror.layout.status_file)
    assert status is not None and status.running is None and status.last_run is not None
    assert status.last_run.result == "terminated"
    assert status.last_run.error.startswith("stopped by SIGTERM; state saved")


def test_a_killed_run_is_shown_and_counted_by_the_next(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    pypi.add_release("numpy", "2.0")
    mirror.had_rstuf = True  # RSTUF meant but not configured: changes wait in the outbox
    # SIGKILL at the end, the batch's intent recorded: the change waits in the outbox
    result = mirror.cli(env={CRASH_AT_ENV: "state-save@run-end"})
    assert result.returncode == -signal.SIGKILL
    killed = run_status.load_status(mirror.layout.status_file)
    assert killed is not None and killed.running is not None
    capsys.readouterr()
    assert pypi_mirror.main(mirror.args("--status")) == 0
    assert f"(pid {killed.running.pid}) ended without recording how" in capsys.readouterr().out
    assert mirror.run() == cli_support.EXIT_PARTIAL
    status = status_of(mirror, capsys)
    assert status["runs"] == {"ok": 1, "partial": 1, "killed": 1}
    assert status["last_killed"]["pid"] == killed.running.pid
    assert status["last_killed"]["result"] == "killed"
    # the killed run's change waits since that run started, not since the one that found it
    assert epoch(status["outbox"]["oldest_unsent"]) <= killed.running.started + 1


def test_status_without_a_status_file_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pypi_mirror.main(["--mirror-dir", str(tmp_path / "none"), "--status"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no status file" in err and "check --mirror-dir or --config" in err
    assert not (tmp_path / "none").exists(), "--status creates nothing"


def test_a_damaged_status_file_is_reported_then_replaced_by_the_next_run(
    mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.layout.status_file.write_text('{"schema": 1, "written": "yesterday"}')
    capsys.readouterr()
    assert pypi_mirror.main(mirror.args("--status")) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is damaged (written:" in lines[0], lines
    assert mirror.run() == 0
    assert "is damaged" in capsys.readouterr().err  # a warning; the run goes on
    assert status_of(mirror, capsys)["runs"] == {"ok": 1}


def test_a_status_that_cannot_be_written_does_not_fail_the_run(
    mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.layout.status_file.unlink()
    mirror.layout.status_file.mkdir()  # renaming a file over it fails
    capsys.readouterr()
    assert mirror.run() == 0
    assert "cannot write" in capsys.readouterr().err


def test_runs_that_change_nothing_record_nothing(mirror: Mirror) -> None:
    before = mirror.layout.status_file.read_bytes()
    with mirror_lock(mirror.layout.lock_path):
        assert mirror.cli().returncode == cli_support.EXIT_LOCKED
    assert mirror.run("--dry-run") == 0
    assert mirror.layout.status_file.read_bytes() == before


# --- --metrics-file


def test_metrics_file_holds_the_status_in_prometheus_format(
    mirror: Mirror, pypi: FakePyPI, tmp_path: Path
) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    prom = directory / "pypi_mirror.prom"
    pypi.add_release("numpy", "2.0")
    mirror.had_rstuf = True  # RSTUF meant but not configured: the change waits in the outbox
    umask = os.umask(0o022)
    try:
        assert mirror.run("--metrics-file", str(prom)) == cli_support.EXIT_PARTIAL
    finally:
        os.umask(umask)
    assert sorted(p.name for p in directory.iterdir()) == ["pypi_mirror.prom"], "no temp left"
    assert prom.stat().st_mode & 0o777 == 0o644, "node_exporter runs as another user"
    text = prom.read_text()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names == {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            assert name.startswith("pypi_mirror_")
            assert name.endswith("_total") == (kind == "counter"), line
    found = metrics(prom)
    status = run_status.load_status(mirror.layout.status_file)
    assert status is not None and status.last_run is not None
    assert found[("pypi_mirror_serial", ())] == pypi.last_serial
    assert found[("pypi_mirror_upstream_serial", ())] == pypi.last_serial
    assert found[("pypi_mirror_serial_lag", ())] == 0
    assert found[("pypi_mirror_last_run_exit_code", ())] == 75
    assert found[("pypi_mirror_last_run_end_timestamp_seconds", ())] == status.last_run.ended
    assert found[("pypi_mirror_last_success_timestamp_seconds", ())] == status.last_run.ended
    assert found[("pypi_mirror_last_run_duration_seconds", ())] == pytest.approx(
        status.last_run.duration
    )
    assert found[("pypi_mirror_last_run_pages", (("change", "updated"),))] == 1
    assert found[("pypi_mirror_pages_total", (("change", "added"),))] == 5  # the first sync
    assert found[("pypi_mirror_pages_total", (("change", "updated"),))] == 1
    assert found[("pypi_mirror_runs_total", (("result", "ok"),))] == 1
    assert found[("pypi_mirror_runs_total", (("result", "partial"),))] == 1
    assert found[("pypi_mirror_pending_projects", ())] == 0
    assert found[("pypi_mirror_outbox_paths", ())] == 1
    assert found[("pypi_mirror_retired_copies", ())] == 1
    assert found[("pypi_mirror_info", (("version", cli_support.VERSION),))] == 1
    assert ("pypi_mirror_outbox_oldest_unsent_timestamp_seconds", ()) in found

    dead = Mirror(mirror.root, mirror.state, "http://127.0.0.1:9")
    assert dead.run("--metrics-file", str(prom)) == cli_support.EXIT_FAILED
    found = metrics(prom)
    assert found[("pypi_mirror_last_run_exit_code", ())] == 1
    assert found[("pypi_mirror_runs_total", (("result", "failed"),))] == 1
    assert found[("pypi_mirror_last_success_timestamp_seconds", ())] == status.last_run.ended


def test_a_metrics_file_in_a_missing_directory_is_a_usage_error(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no" / "m.prom"
    assert mirror.run("--metrics-file", str(target)) == cli_support.EXIT_USAGE
    assert "no such directory" in capsys.readouterr().err


def test_status_of_a_mirror_without_rstuf_says_rstuf_is_not_used(
    mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert pypi_mirror.main(mirror.args("--status")) == 0  # the fixture runs --no-rstuf
    out = capsys.readouterr().out
    assert "outbox        not used: this mirror runs without RSTUF (--no-rstuf)" in out
    assert "RSTUF has every change" not in out
    assert status_of(mirror, capsys)["rstuf_used"] is False
    mirror.had_rstuf = True  # RSTUF meant, nothing owed: the outbox is empty, RSTUF in step
    assert mirror.run() == 0
    assert pypi_mirror.main(mirror.args("--status")) == 0
    assert "outbox        empty: RSTUF has every change" in capsys.readouterr().out
    assert status_of(mirror, capsys)["rstuf_used"] is True


@pytest.mark.parametrize("json_form", [False, True])
def test_status_into_a_pipe_closed_early_ends_quietly(mirror: Mirror, json_form: bool) -> None:
    """`--status | head -1`: the reader left before the output was written. No message, and
    141 (128 + SIGPIPE) as a tool that SIGPIPE ends reports, never a "Broken pipe" error."""
    args = mirror.args("--status", *(["--json"] if json_form else []))
    process = subprocess.Popen(
        [sys.executable, str(REPO / "pypi_mirror.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # before the interpreter has even started: no reader at all
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=60) == cli_support.EXIT_PIPE_CLOSED
    assert stderr == ""


def test_a_run_refused_before_the_lock_is_recorded(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage error found once the mirror is known: status.json records it, taken under the
    mirror's lock, with the figures the last run left; no success."""
    before = status_of(mirror, capsys)
    target = tmp_path / "textfile"
    target.mkdir()
    assert mirror.run("--metrics-file", str(target)) == cli_support.EXIT_USAGE
    status = status_of(mirror, capsys)
    assert status["last_run"]["exit_code"] == cli_support.EXIT_USAGE
    assert status["last_run"]["result"] == "usage" and status["running"] is None
    assert f"--metrics-file {target}: is a directory" in status["last_run"]["error"]
    assert " exit=2" in status["last_run"]["summary"]
    assert status["runs"] == {"ok": 1, "usage": 1}
    assert status["last_success"] == before["last_success"]
    assert status["serial"] == before["serial"] and status["pending"] == before["pending"]


def test_a_refusal_before_the_lock_never_overwrites_a_running_runs_status(
    mirror: Mirror, tmp_path: Path
) -> None:
    target = tmp_path / "textfile"
    target.mkdir()
    before = mirror.layout.status_file.read_bytes()
    with mirror_lock(mirror.layout.lock_path):  # another run holds the mirror
        result = mirror.cli("--metrics-file", str(target))
    assert result.returncode == cli_support.EXIT_USAGE, result.stderr
    assert mirror.layout.status_file.read_bytes() == before


def test_a_missing_mirror_directory_is_recorded_in_the_metrics_without_creating_it(
    tmp_path: Path, pypi: FakePyPI
) -> None:
    """The state says synced, the mirror directory is gone: the refusal comes before the lock,
    and only the metrics can say so (a status file would need the directory)."""
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    assert mirror.run() == 0
    shutil.rmtree(mirror.root)
    prom = tmp_path / "mirror.prom"
    result = mirror.cli("--metrics-file", str(prom))
    assert result.returncode == cli_support.EXIT_FAILED, result.stderr
    assert not mirror.root.exists()
    found = metrics(prom)
    assert found[("pypi_mirror_last_run_exit_code", ())] == cli_support.EXIT_FAILED
    assert found[("pypi_mirror_runs_total", (("result", "failed"),))] == 1
    assert ("pypi_mirror_last_success_timestamp_seconds", ()) not in found


def test_a_metrics_file_that_is_a_directory_is_refused_before_the_run(
    mirror: Mirror, pypi: FakePyPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "textfile"
    target.mkdir()
    pypi.add_release("numpy", "2.0")
    before = mirror.page("numpy")
    capsys.readouterr()
    assert mirror.run("--metrics-file", str(target)) == cli_support.EXIT_USAGE
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"--metrics-file {target}: is a directory" in errors[0]
    assert mirror.page("numpy") == before  # refused before anything ran
    assert list(target.iterdir()) == []


def test_metrics_escape_what_the_format_requires() -> None:
    status = run_status.Status(runs={'we"ird\\result\n': 1})
    found = {
        sample.labels.get("result"): sample.value
        for family in text_string_to_metric_families(run_metrics.render_metrics(status))
        for sample in family.samples
        if family.name == "pypi_mirror_runs"
    }
    assert found == {'we"ird\\result\n': 1}
    assert "pypi_mirror_serial " not in run_metrics.render_metrics(status), "unknown: no sample"


# --- the record itself


def test_render_text_names_a_run_in_progress_and_a_killed_one() -> None:
    running = run_status.Status(written=1000.0, running=run_status.RunRecord(990.0, pid=4242))
    text = run_status.render_text(running, now=1060.0, alive=lambda pid: True)
    assert "running       pid 4242, since 1970-01-01T00:16:30Z (1m 10s ago)" in text
    assert "last run      none recorded its end yet" in text
    assert "last success  never" in text
    text = run_status.render_text(running, now=1060.0, alive=lambda pid: False)
    assert "killed        the run of 1970-01-01T00:16:30Z (pid 4242) ended without" in text


AGES = [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (5 * 3600 + 120, "5h 2m"), (3 * 86400, "3d 0h")]


@pytest.mark.parametrize(("seconds", "text"), AGES)
def test_age(seconds: float, text: str) -> None:
    assert run_status.age(seconds) == text


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ([], "not a JSON object"),
        ({"schema": 2}, "unknown schema 2"),
        ({"schema": 1, "written": "x"}, "written"),
        ({"schema": 1, "mirror": {"serial": "12"}}, "mirror.serial"),
        ({"schema": 1, "runs": {"ok": 1.5}}, "runs.ok"),
        ({"schema": 1, "last_run": {"pid": 1}}, "last_run"),
        ({"schema": 1, "surprise": 1}, "unknown field surprise"),
    ],
)
def test_a_status_document_is_checked_field_by_field(doc: object, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        run_status.status_from_json(doc)


def test_the_status_round_trips_through_json() -> None:
    recorder_state = State(serial=7)
    recorder_state.outbox.dirty.add("index.html")
    figures = run_status.figures_of(recorder_state, run_status.MirrorFigures(), new_since=5.0)
    status = run_status.Status(
        written=9.0,
        last_run=run_status.RunRecord(1.0, 2, ended=3.0, exit_code=0, counts={"added": 1}),
        runs={"ok": 1},
        mirror=figures,
    )
    again = run_status.status_from_json(json.loads(json.dumps(status.to_json())))
    assert again == status
    assert again.mirror.oldest_unsent == 5.0 and again.mirror.serial == 7


# --- honest reports after an interruption


def test_a_first_sync_stopped_by_sigterm_reports_what_is_left_everywhere_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last progress line, the stop line, the summary and --status all say how many
    projects are left; none says "100% ... done" or "serial None"."""
    with FakePyPI() as pypi:
        names = [f"a-fast-{n}" for n in range(8)] + [f"m-slow-{n}" for n in range(4)]
        names += [f"z-left-{n}" for n in range(12)]
        for name in names:
            pypi.create_project(name)
        for n in range(4):
            pypi.inject(f"m-slow-{n}", "slow", seconds=60)
        mirror = Mirror(tmp_path / "m", tmp_path / "m" / "state.json", pypi.url)
        process = mirror.popen("--timeout", "1", "--progress-interval", "0.05")
        deadline = time.monotonic() + 60
        while pypi.count_pages("m-slow-3") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # every fetch slot now waits on a slow page
        time.sleep(0.3)  # a progress line or more
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == cli_support.EXIT_TERMINATED, stderr
    lines = stderr.splitlines()
    fetching = [line for line in lines if " INFO fetching: " in line]
    assert fetching, stderr
    assert "(100%)" not in fetching[-1] and not fetching[-1].endswith("done"), fetching[-1]
    not_fetched = int(re.search(r", stopped, (\d+) not fetched$", fetching[-1]).group(1))
    assert not_fetched >= 12
    (stop,) = [line for line in lines if " ERROR stopped by SIGTERM" in line]
    assert "serial None" not in stop
    left = int(re.search(r"the first sync unfinished, (\d+) project\(s\) still to fetch", stop)[1])
    assert left >= not_fetched
    assert f" pending={left} " in lines[-1]
    assert status_of(mirror, capsys)["pending"] == left
