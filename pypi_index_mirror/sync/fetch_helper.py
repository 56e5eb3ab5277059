"""A second process for a clean first sync: it fetches and writes every other project.

One Python process runs its Python on one core (the GIL), and a first sync of
700,000 pages is CPU-bound wherever PyPI answers fast. `HelperSplit` forks
once, before any thread starts, and the two processes share the stream: each
claims the next item from a counter in shared memory when one of its workers
is free (so a process whose workers are stuck on slow answers does not hold
back the rest), runs it through the same function on its own threads (its
own connections) and writes the pages itself, exactly as the parent's
workers do. What it learned goes back over a pipe as the same
results, which the parent merges with its own: the state, the batches, the
root index and every decision stay in the parent. Its log records go over
the same pipe and are emitted by the parent's handlers, so they keep the
run's format and never cut into the progress bar.

The helper dies with the parent (``PR_SET_PDEATHSIG``), so a killed run
leaves nothing running on; it ignores SIGINT and SIGTERM, which the parent
handles (and then kills the helper: its writes, like the parent's, are safe
to cut at any point). A helper that dies early fails the run: its share is
not known to be done. Linux only (fork, prctl); elsewhere `available` says no.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Generic, TypeVar

from pypi_index_mirror.ops.cli import ToolError
from pypi_index_mirror.sync.worker_pool import Engine, WorkerPool, map_unordered

T = TypeVar("T")
R = TypeVar("R")

PR_SET_PDEATHSIG = 1
FLUSH_EVERY = 0.05  # seconds: the helper sends what it has at least this often
LOCK_TIMEOUT = 60.0  # seconds: see Claimed
_DONE, _ERROR, _LOG = "done", "error", "log"


class HelperFailed(ToolError):
    """The helper process ended before finishing its share."""


def available() -> bool:
    """Whether this platform can run a helper that surely dies with its parent."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class HelperSplit(Generic[T, R]):
    """`function` over `items`, split between this process and one forked helper.

    Fork happens in the constructor: build it while this process runs no other
    thread. Iterate it once for every result, both halves, in finishing order.
    `portable` turns a result into one that pickles (exceptions whose
    constructor takes other arguments than their message do not); `on_fork`
    runs in the helper first (drop connections it must not share). `poll`
    runs in the parent's consuming thread every few hundredths of a second;
    once `halted` says this run stops fetching, the helper is told (SIGUSR1)
    and runs `halt_helper`, so its results for what is left come back as
    this process's do (not fetched), not cut off. `engine`: each process runs
    its share through it (see `worker_pool.map_unordered`).
    """

    def __init__(
        self,
        function: Callable[[T], R],
        items: Iterator[T],
        workers: int,
        window: int,
        portable: Callable[[R], R],
        on_fork: Callable[[], None],
        report_requests: Callable[[], int],
        poll: Callable[[], None] = lambda: None,
        halted: Callable[[], bool] = lambda: False,
        halt_helper: Callable[[], None] = lambda: None,
        engine: Engine[T, R] | None = None,
    ) -> None:
        if threading.active_count() != 1:
            raise RuntimeError("HelperSplit must fork before any other thread starts")
        self.function, self.window, self.engine = function, window, engine
        self._poll, self._halted, self._told = poll, halted, False
        self.helper_workers = workers // 2
        self.own_workers = workers - self.helper_workers
        self.helper_requests = 0
        import multiprocessing  # only here: a sixth of the start-up, for the one run that forks

        cursor = multiprocessing.RawValue("q", 0)  # the next item's position, shared
        lock = multiprocessing.Lock()
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the helper: never returns
            os.close(read_end)
            mine = Claimed(items, cursor, lock)
            self._helper(mine, write_end, portable, on_fork, report_requests, halt_helper)
        os.close(write_end)
        self._pipe = os.fdopen(read_end, "rb")
        self._pool = WorkerPool(
            function,
            Claimed(items, cursor, lock),
            self.own_workers,
            window,
            feeders=1,
            poll=self._poll_parent,
            engine=engine,
        )
        self._reaped = False
        self._status = 0
        self._reader = threading.Thread(target=self._read, name="helper-reader", daemon=True)
        self._reader.start()

    # the parent

    def __iter__(self) -> Iterator[R]:
        """Every result, this process's and the helper's, as they come."""
        try:
            yield from self._pool
        finally:
            self.close()

    def _poll_parent(self) -> None:
        self._poll()
        if not self._told and self._halted():
            self._told = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGUSR1)

    def _read(self) -> None:
        """Feed the helper's results into the pool, as its own workers' are; then its end."""
        try:
            while not self._pool.stopped:
                # one unpickler a message: the helper's pickler forgets its memo after
                # each, and a longer-lived unpickler would resolve references to old ones
                message = pickle.load(self._pipe)
                if isinstance(message, tuple) and len(message) == 2 and message[0] == _LOG:
                    logging.getLogger(message[1].name).handle(message[1])
                    continue
                if isinstance(message, tuple) and len(message) == 2 and message[0] == _DONE:
                    self.helper_requests = message[1]
                    self._pool.done()
                    return
                if isinstance(message, tuple) and len(message) == 2 and message[0] == _ERROR:
                    self._pool.fail(message[1])
                    return
                self._pool.feed(message)  # type: ignore[arg-type]
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            # the pipe closed without a word: the helper died (it is reaped by close)
            with contextlib.suppress(ChildProcessError):
                _, self._status = os.waitpid(self.pid, 0)
                self._reaped = True
            self._pool.fail(
                HelperFailed(
                    "the helper process fetching half of the first sync ended early "
                    f"({describe_status(self._status)}); nothing is lost: rerun to resume"
                )
            )

    def close(self) -> None:
        """Stop the helper if it still runs (the parent failed or was stopped) and reap it."""
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._reader.join(timeout=10)  # the pipe's far end is closed: it reads to the end
        if not self._reaped:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
                self._reaped = True
        self._pipe.close()

    # the helper

    def _helper(
        self,
        items: Iterator[T],
        write_end: int,
        portable: Callable[[R], R],
        on_fork: Callable[[], None],
        report_requests: Callable[[], int],
        halt_helper: Callable[[], None],
    ) -> None:
        parent = os.getppid()
        code = 1
        told: list[int] = []  # SIGUSR1 seen: the parent stops fetching

        def halt_when_told() -> None:
            if told:
                told.clear()
                halt_helper()

        try:
            die_with_parent(parent)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGUSR1, lambda signum, frame: told.append(signum))
            on_fork()
            with os.fdopen(write_end, "wb", buffering=1 << 16) as pipe:
                send = _Sender(pipe)
                logging.getLogger().handlers[:] = [_ForwardingHandler(send)]
                try:
                    last_flush = time.monotonic()
                    for result in map_unordered(
                        self.function,
                        items,
                        self.helper_workers,
                        self.window,
                        halt_when_told,
                        self.engine,
                    ):
                        due = time.monotonic() - last_flush > FLUSH_EVERY
                        send(portable(result), flush=due)
                        if due:
                            last_flush = time.monotonic()
                    send((_DONE, report_requests()))
                    code = 0
                except BaseException as exc:  # the parent re-raises it
                    send((_ERROR, portable_error(exc)))
        finally:
            os._exit(code)


class _Sender:
    """Pickles messages onto the helper's end of the pipe, one at a time (workers log too)."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._pickler = pickle.Pickler(pipe, protocol=pickle.HIGHEST_PROTOCOL)
        self._lock = threading.Lock()

    def __call__(self, message: object, flush: bool = False) -> None:
        with self._lock:
            self._pickler.dump(message)
            self._pickler.clear_memo()  # each message stands alone (see HelperSplit._read)
            if flush:
                self._pipe.flush()


class _ForwardingHandler(logging.Handler):
    """The helper's log records, sent to the parent to be handled there (see module doc)."""

    def __init__(self, send: _Sender) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg, record.args = record.getMessage(), None  # args may not pickle
            record.exc_info = record.exc_text = None
            self._send((_LOG, record), flush=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)


class Claimed(Iterator[T]):
    """The items of `items` this process claims from a shared position counter.

    Both processes enumerate the same items in the same order; a claim takes
    the counter's value (under a lock shared across the fork) and skips to
    that item. Not thread-safe: `map_unordered` calls it under its own lock.
    """

    def __init__(self, items: Iterator[T], cursor: Any, lock: Any) -> None:
        self._items, self._cursor, self._lock = items, cursor, lock
        self._position = 0  # of the next item `_items` yields

    def __next__(self) -> T:
        # held for a few instructions: a timeout means the other process died holding it
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            raise HelperFailed("the helper process stopped while claiming a project; rerun")
        try:
            claim = self._cursor.value
            self._cursor.value = claim + 1
        finally:
            self._lock.release()
        for _ in islice(self._items, claim - self._position):
            pass  # the other process's
        self._position = claim + 1
        return next(self._items)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)


def portable_error(exc: BaseException) -> BaseException:
    """`exc`, or an exception of a base type with its message when `exc` does not pickle."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        base = OSError if isinstance(exc, OSError) else ToolError
        return base(str(exc))


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
