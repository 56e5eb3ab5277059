"""Work spread over every core, results in order: shared by ``generate_csv.py`` and the audit.

Two pieces, so that each script does not grow its own pool:

- `make_executor`: a process pool whose workers ignore Ctrl-C (the parent
  handles it), die with their parent, and never inherit its open files; or a
  thread pool, for work that releases the GIL.
- `ordered_map`: submit calls with a bounded window and yield their results
  in submission order, so memory stays flat however many items there are
  and output is deterministic.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

EXECUTORS = ("processes", "threads")
# Exit code of a worker process whose parent died: "failed", as both scripts use it.
_ORPHAN_EXIT = 1

Item = TypeVar("Item", bound=tuple)
Result = TypeVar("Result")


def usable_cpus() -> int:
    """CPUs this process may run on (a container or taskset may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    """Worker-process initializer: leave Ctrl-C to the parent, and die with it.

    Without the first, every worker prints its own KeyboardInterrupt
    traceback; without the second, workers of a parent killed by SIGKILL (or
    the OOM killer) would wait for work forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns once the parent process has gone
    os._exit(_ORPHAN_EXIT)


def make_executor(kind: str, workers: int, preload: Sequence[str] = ()) -> Executor:
    """A pool of `workers` processes or threads (`kind`: one of EXECUTORS).

    `preload`: the modules the work runs in, imported once by the fork server
    that process workers are forked from, not again by each worker (python-tuf
    and the package: 0.1 s a worker)."""
    if kind == "threads":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="worker")
    if kind == "processes":
        # Workers come from a fork server, not fork(2) of this process, so they
        # never inherit the open file that holds the mirror lock: were this
        # process killed, a lingering worker would keep the mirror locked
        # against every sync. Costs ~0.15 s once per run.
        context = multiprocessing.get_context("forkserver")
        if preload:  # read when the fork server starts: a later pool's list adds nothing
            context.set_forkserver_preload(list(preload))
        return ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker
        )
    raise ValueError(f"unknown executor {kind!r}")


def ordered_map(
    executor: Executor,
    function: Callable[..., Result],
    items: Iterable[Item],
    window: int,
) -> Iterator[tuple[Item, Result]]:
    """Yield ``(item, function(*item))`` for each item, in the order of `items`.

    At most `window` calls are submitted and not yet yielded; `items` is read
    lazily, so it may itself be a generator fed by another ordered_map. An
    exception raised by a call is raised here, when its turn comes; the calls
    not yet started are then cancelled.
    """
    in_flight: deque[tuple[Item, Future[Any]]] = deque()
    try:
        for item in items:
            in_flight.append((item, executor.submit(function, *item)))
            if len(in_flight) >= window:
                done, future = in_flight.popleft()
                yield done, future.result()
        while in_flight:
            done, future = in_flight.popleft()
            yield done, future.result()
    finally:
        for _, future in in_flight:
            future.cancel()
