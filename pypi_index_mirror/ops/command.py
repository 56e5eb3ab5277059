"""The command line of ``pypi_mirror.py`` (and ``python -m pypi_index_mirror``, ``pypi-mirror``).

`main` parses the settings, runs once and ends every run with its summary
line; `run` handles what is not a sync (``--status``) and records a failure
that came before the mirror lock; `run_sync` builds the run's clients from the
one HTTP environment and hands them to a `Sync` (or a `Watch`, or an `Audit`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pypi_index_mirror.http.environment import HttpEnvironment, read_environment
from pypi_index_mirror.mirror.safety import Halt
from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.store import MirrorLayout, MirrorLocked, mirror_lock
from pypi_index_mirror.ops import settings
from pypi_index_mirror.ops.cli import (
    EXIT_LOCKED,
    EXIT_OK,
    UsageError,
    configure_logging,
    failure,
    run_cli,
)
from pypi_index_mirror.ops.options import REMOVED_OPTIONS
from pypi_index_mirror.ops.progress import Progress
from pypi_index_mirror.ops.recorder import StatusRecorder
from pypi_index_mirror.ops.settings import Config, config_from
from pypi_index_mirror.ops.status import show_status
from pypi_index_mirror.sync.context import Summary, summary_log
from pypi_index_mirror.sync.run import Sync
from pypi_index_mirror.sync.watch import Watch
from pypi_index_mirror.upstream.client import PypiClient

if TYPE_CHECKING:
    from pypi_index_mirror.rstuf.client import RstufClient

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Mirror PyPI's simple index and keep RSTUF in step. The first run syncs every "
    "project; later runs apply PyPI's changelog since the serial in the state file."
)
EPILOG = (
    "The RSTUF token is read only from the environment (RSTUF_API_TOKEN). "
    "Exit codes: 0 done (--audit: the tree and TUF's targets agree); 1 failed (state not "
    "advanced past what is on disk; a local I/O error names the file, the cause and the fix, "
    "then run again; --audit: metadata unreachable, badly signed or expired; "
    "RSTUF answered 401 or 403, or its URL is no RSTUF API: changes wait in the outbox); "
    "2 usage error; 3 another run holds the mirror lock; 4 --audit found differences; 75 "
    "partly done (pages or RSTUF changes kept for the next run, also when changes are owed "
    "to RSTUF and no RSTUF URL is set: --no-rstuf runs without RSTUF; or RSTUF answered "
    "deletes with not_found_artifacts: run --audit); 130 stopped by SIGINT; 141 standard "
    "output's reader went away (--status | head -1; quiet); 143 stopped by SIGTERM."
)


def build_parser() -> argparse.ArgumentParser:
    return settings.build_parser("pypi_mirror.py", DESCRIPTION, EPILOG)


def make_rstuf_client(
    config: Config, environment: HttpEnvironment | None = None
) -> RstufClient:
    from pypi_index_mirror.rstuf.client import RstufClient  # with requests: only for RSTUF

    environment = environment if environment is not None else read_environment(config)
    return RstufClient(
        config.rstuf_url or "",
        token=config.rstuf_token,
        environment=environment,
        timeout=environment.limits.timeout,
        retries=config.retries,
        backoff=config.backoff,
        poll_interval=config.rstuf_poll,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse settings, run once, return the exit code.

    Every run ends with the summary line, whatever its exit; --help, --version
    and --status, which are not runs, print none.
    """
    configure_logging(False, False)
    started = time.monotonic()
    summary = Summary()
    parsed: list[Config] = []  # the settings, once they are known

    def body() -> int:
        config = config_from(argv, build_parser())
        parsed.append(config)
        return run(config, summary)

    code = run_cli(log, body)
    if parsed and (parsed[0].status or (parsed[0].audit and not parsed[0].repair)):
        return code  # not a sync (an audit prints its own summary line, on stdout)
    if summary.started or code != EXIT_OK:
        summary.exit = code
        if not summary.started:
            summary.elapsed = time.monotonic() - started
        if summary.pending is None and parsed:
            count_owed_work(summary, parsed[0].state_file)
        summary_log.info("%s", summary.line())
    return code


def count_owed_work(summary: Summary, state_file: Path) -> None:
    """Pending and outbox counts for a run that never read its state (a locked mirror)."""
    with contextlib.suppress(Exception):  # a summary must never fail the run it reports
        if state_file.exists():
            state = load_state(state_file)
            summary.pending, summary.outbox = len(state.pending), len(state.outbox)
            summary.serial_before = summary.serial_after = state.serial


def run(config: Config, summary: Summary | None = None) -> int:
    configure_logging(config.verbose, config.quiet)
    for removed in REMOVED_OPTIONS:
        if removed.key in config.removed_options:
            log.warning("%s", removed.warning)
    if config.mirror_dir.exists() and not config.mirror_dir.is_dir():
        raise UsageError(
            f"--mirror-dir {config.mirror_dir} is not a directory: give the mirror's "
            "directory (a new one is created)"
        )
    if config.status:
        return show_status(MirrorLayout(config.mirror_dir).status_file, config.status_json)
    summary = summary if summary is not None else Summary()
    started = time.time()
    syncs: list[Sync] = []
    try:
        return run_sync(config, summary, syncs.append)
    except BaseException as exc:
        if not (syncs and syncs[0].status.begun):  # else recorded under the lock already
            record_failure_before_lock(config, summary, exc, started)
        raise


def run_sync(config: Config, summary: Summary, made: Callable[[Sync], None]) -> int:
    """A sync, or an audit, with its clients; `made` is told the Sync once it exists."""
    if config.metrics_file is not None and not config.metrics_file.parent.is_dir():
        raise UsageError(f"--metrics-file {config.metrics_file}: no such directory")
    if config.metrics_file is not None and config.metrics_file.is_dir():
        raise UsageError(
            f"--metrics-file {config.metrics_file}: is a directory; name a file in it, "
            f"e.g. {config.metrics_file / 'pypi_mirror.prom'}"
        )
    summary_log.setLevel(logging.INFO)  # cron keeps one line per run, even under -q
    halt = Halt()  # ends the retry pauses of the fetch threads when the run stops fetching
    environment = read_environment(config)  # once: every client of the run gets this one
    pypi = PypiClient(config.pypi_url, config, sleep=halt.sleep, environment=environment)
    try:
        rstuf = make_rstuf_client(config, environment) if config.rstuf_url else None
    except ValueError as exc:
        pypi.close()
        raise UsageError(str(exc)) from None
    progress = Progress(config.progress, config.progress_interval)
    try:
        sync = Sync(config, pypi, rstuf, progress, summary=summary, halt=halt)
        made(sync)
        if config.watch:
            return Watch(sync, config.watch).run()
        if config.audit:
            # imported here: an update (most runs) needs neither the audit nor its repair
            from pypi_index_mirror.audit.repair import run_audit

            return run_audit(sync)
        return sync.run()
    finally:
        progress.close()
        pypi.close()
        if rstuf is not None:
            rstuf.close()


def record_failure_before_lock(
    config: Config, summary: Summary, exc: BaseException, started: float
) -> None:
    """Record in status.json and the metrics a run that failed before it held the lock.

    A refusal before the lock (a missing mirror directory, a usage error found
    once the mirror is known) is a failed run all the same, and monitoring
    must see it. status.json is written only under the mirror's lock, taken
    here for that: if another run holds it (the lock conflict itself, or a run
    that started meanwhile), that run's record stands and nothing is written.
    Without a mirror directory only the metrics are written: creating the
    directory for a status file would turn a missing mirror into an empty one.
    Dry runs and plain audits record nothing, as always; writing never changes
    how the run ends.
    """
    if config.dry_run or (config.audit and not config.repair):
        return
    code, error = failure(exc)
    if code == EXIT_LOCKED:
        return
    layout = MirrorLayout(config.mirror_dir)
    metrics = config.metrics_file
    if metrics is not None and (metrics.is_dir() or not metrics.parent.is_dir()):
        metrics = None  # that file may be what failed
    recorder = StatusRecorder(
        layout.status_file, layout.staging_dir, metrics, rstuf_used=not config.no_rstuf
    )
    summary.exit = code
    if not summary.started:
        summary.elapsed = time.time() - started
    if summary.pending is None:
        count_owed_work(summary, config.state_file)
    with contextlib.suppress(Exception):  # a record must never change how the run ends
        if layout.root.is_dir():
            try:
                with mirror_lock(layout.lock_path):
                    recorder.begin(started)
                    recorder.end(code, error, summary, None)
                return
            except MirrorLocked:
                return  # another run holds the mirror: its record stands
            except OSError:
                pass  # the lock cannot be taken here: the metrics alone, below
        if metrics is not None:
            recorder.metrics_only(code, error, summary, started)


if __name__ == "__main__":
    sys.exit(main())
