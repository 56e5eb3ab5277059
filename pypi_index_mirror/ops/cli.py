"""What both command lines share: the version, exit codes, logging and the error funnel.

``pypi_mirror.py`` and ``generate_csv.py`` map every failure to one of the exit
codes below in one place (`run_cli`), so an operator never sees a traceback and
cron's log keeps one parseable line per event.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

VERSION = "1.2.0"

EXIT_OK = 0
EXIT_FAILED = 1  # nothing past the last durable state was recorded
EXIT_USAGE = 2
EXIT_LOCKED = 3  # another run holds the mirror lock
EXIT_AUDIT_DIFFERS = 4  # --audit found the served tree and TUF's targets apart
EXIT_PARTIAL = 75  # EX_TEMPFAIL: some work kept for the next run
EXIT_INTERRUPTED = 130  # SIGINT (128 + 2)
EXIT_PIPE_CLOSED = 141  # stdout's reader went away (128 + SIGPIPE), as `cat | head` reports
EXIT_TERMINATED = 143  # SIGTERM (128 + 15)


class ToolError(Exception):
    """A failure the operator can act on; its message is the one line they see.

    `exit_code` says how the run ends; subclasses set it.
    """

    exit_code = EXIT_FAILED


class UsageError(ToolError):
    exit_code = EXIT_USAGE


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: stop cleanly, saving what is durable.

    A BaseException like KeyboardInterrupt, so ``except Exception`` in library
    code never swallows it.
    """

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signal.Signals(signum).name + (f"; {note}" if note else ""))
        self.signum = signum
        self.note = note  # what the run saved before it stopped

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else EXIT_INTERRUPTED


class _StopRequest:
    """A signal that arrived while `deferred_stops` held it back."""

    depth = 0  # nesting of deferred_stops
    signum: int | None = None


def stop_requested() -> int | None:
    """The signal waiting to stop the run (inside `deferred_stops`), or None."""
    return _StopRequest.signum


@contextmanager
def deferred_stops() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back in a section that must not be cut at any bytecode.

    Inside, a first signal is only recorded (`stop_requested` says so, and the
    section winds down at its next safe point); `Stopped` is raised when the
    section ends. A second signal raises at once: an operator pressing Ctrl-C
    again gets the kill they ask for, which loses nothing either.
    """
    _StopRequest.depth += 1
    try:
        yield
    finally:
        _StopRequest.depth -= 1
    signum = _StopRequest.signum
    if signum is not None and not _StopRequest.depth:
        _StopRequest.signum = None
        raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Stopped` in the main thread; restore the old handlers.

    `timeout`, systemd and shutdowns send SIGTERM; without this the process would
    die with no log line and no state saved.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        if _StopRequest.depth and _StopRequest.signum is None:
            _StopRequest.signum = signum  # no lock, no I/O: safe in a handler
            return
        _StopRequest.signum = None
        raise Stopped(signum)

    _StopRequest.signum = None

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_cli(log: logging.Logger, body: Callable[[], int]) -> int:
    """Run `body` and turn every way it can end into an exit code and at most one line.

    The one exception funnel of both scripts: ToolError (and its subclasses),
    local I/O errors, a signal, argparse's own exit, and a bug (no traceback
    reaches the operator, who gets it with -v).
    """
    try:
        with stop_on_signals():
            code = body()
            sys.stdout.flush()  # a reader gone shows here, not in Python's flush at exit
            return code
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except BrokenPipeError as exc:
        if not stdout_closed(exc):
            raise  # not stdout's: an I/O error like any other (below)
        # `--status | head -1`: the reader had what it wanted. Quiet, as a tool that
        # SIGPIPE ends; stdout goes to /dev/null so the flush at exit says nothing either.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except (ToolError, Stopped, KeyboardInterrupt, OSError) as exc:
        code, message = failure(exc)
        log.error("%s", message)
        return code
    except Exception as exc:  # a bug: one line for the operator, the traceback under -v
        code, message = failure(exc)
        log.error("%s", message)
        log.debug("traceback of the internal error", exc_info=True)
        return code


def failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line a run that raised `exc` ends with.

    `run_cli` logs it; the status file records it (``ops.status``), so the two agree.
    Anything unforeseen is a bug: exit 1, named by its type.
    """
    if isinstance(exc, ToolError):
        return exc.exit_code, str(exc)
    if isinstance(exc, Stopped):
        return exc.exit_code, f"stopped by {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "stopped by SIGINT"
    if isinstance(exc, BrokenPipeError) and stdout_closed(exc):
        return EXIT_PIPE_CLOSED, "standard output was closed by its reader"
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"local I/O error: {io_error_line(exc)}; {NOTHING_LOST}"
    return EXIT_FAILED, (
        f"internal error {type(exc).__name__}: {exc}; nothing past the last saved state "
        "was recorded; please report it (run with -v for the traceback)"
    )


def stdout_closed(exc: BrokenPipeError) -> bool:
    """Whether `exc` comes from standard output, a pipe whose reader went away.

    Asked of the descriptor itself (poll reports POLLERR on a pipe without a
    reader), so a broken pipe elsewhere is never taken for it.
    """
    if exc.filename is not None:
        return False
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):  # no stdout at all (closed, or not a real file)
        return False
    return any(mask & select.POLLERR for _, mask in events)


NOTHING_LOST = "nothing is lost: the next run resumes from the last saved state"

# What to do about a local I/O error, by its errno; then run again.
IO_ADVICE = {
    errno.ENOSPC: "the filesystem is full: free space or inodes on it (df -h, df -i)",
    errno.EDQUOT: "the disk quota is used up: raise it or free space",
    errno.EFBIG: "a file size limit stopped the write: raise it (ulimit -f, LimitFSIZE=)",
    errno.EROFS: "the filesystem is mounted read-only: make it writable (under systemd: "
    "ReadWritePaths=)",
    errno.EACCES: "this user may not write there: fix the owner or the permissions",
    errno.EPERM: "this user may not change it: fix the owner, the permissions or an "
    "immutable flag (lsattr)",
    errno.EEXIST: "a file stands where a directory is needed: move it away, or give "
    "another --mirror-dir or --state",
    errno.ENOTDIR: "a file stands where a directory is needed: move it away, or give "
    "another --mirror-dir or --state",
    errno.EISDIR: "a directory stands where a file is needed: move it away",
    errno.EIO: "the device reported an error: check the disk (dmesg)",
}


def io_error_line(exc: OSError) -> str:
    """What failed where, and what to do: ``PATH: CAUSE: ADVICE, then run again``.

    The path is the one the operator must act on: a rename's or link's destination
    (``filename2``, never the temp file it came from), else the file named. The
    write seams name the file they were writing when write(2) or fsync(2) give none.
    """
    path = exc.filename2 or exc.filename
    shown = os.fsdecode(os.path.abspath(path)) if isinstance(path, str | bytes) else path
    where = f"{shown}: " if path else ""
    cause = exc.strerror or str(exc)
    advice = IO_ADVICE.get(exc.errno or 0, "fix the cause")
    return f"{where}{cause}: {advice}, then run again"


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds from ``90s``, ``15m``, ``6h``, ``7d``, ``2w`` or a bare number of seconds.

    Raises ValueError naming the text; ``0`` is a valid answer (the caller
    decides what it means: revalidation off, for one).
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"not a duration: {text!r} (a number with s, m, h, d or w, e.g. 90s, 6h, 7d)"
        )
    value = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    if not math.isfinite(value):
        raise ValueError(f"not a finite duration: {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """The shortest exact spelling `parse_duration` reads back (``604800`` -> ``7d``)."""
    if seconds == 0:
        return "0"
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def number(kind: type, minimum: float, maximum: float) -> Callable[[str], float]:
    """A parser for a finite `kind` number in [minimum, maximum], refused with a clear message.

    NaN and infinity are refused: they pass a plain ``value < minimum`` test and
    then crash the code that sleeps or times out with them.
    """

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be from {format_bound(minimum)} to {format_bound(maximum)}, not {text}"
            )
        return value

    parse.bounds = (minimum, maximum)  # type: ignore[attr-defined]  # shown in --help
    parse.kind = kind  # type: ignore[attr-defined]  # a config file's value must be one
    return parse


def format_bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


PACKAGE_LOGGER = "pypi_index_mirror"  # every module logs to logging.getLogger(__name__) under it


def configure_logging(verbose: bool, quiet: bool) -> None:
    """One parseable line per event on stderr: UTC time, level, message.

    -v and -q set the level of this package's logger tree (`PACKAGE_LOGGER`);
    libraries (urllib3, python-tuf, securesystemslib, ...) say only their
    warnings: their INFO and DEBUG are per request or per key. Replaces the
    root handlers, so calling a script's main() twice logs once.
    """
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    package = logging.getLogger(PACKAGE_LOGGER)
    package.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
