"""A first sync's pages from one thread per process: many requests in flight, no rival for the GIL.

A first sync is hundreds of thousands of small pages, each fetched, checked
and written. Worker threads each blocked on one request contend for the GIL
at every header line libcurl hands back and every syscall of a write: with
five threads in a process, each piece of a page's work measured three times
its cost alone (``time.thread_time`` per piece). `FetchLoop` is a
`worker_pool.Engine`: one thread keeps up to ``--workers`` (its process's
share) requests in flight on a `page_transport.PageLoop` and does each
project's work itself as its answers arrive.

It runs only a project's first round of requests, the one that nearly always
settles it. The rules are not here but in `ProjectSteps` (`Sync` in
pypi_mirror.py), the same code a worker thread runs: what to request next,
how to judge an answer, when the round is done. A project that needs a retry
(a connection failure, a 5xx or 429, a page older than the listing) goes to a
worker thread, which goes on from that failure exactly as a worker that had
made the request itself would (same pauses, same number of attempts), so
nothing slow or patient ever holds up the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from pypi_index_mirror.sync.worker_pool import Source
from pypi_index_mirror.upstream.transport import PageAnswer, PageLoop, PageTransportError

T = TypeVar("T")  # an item of the pool
F = TypeVar("F")  # a project's fetch in progress
R = TypeVar("R")  # its result

POLL = 0.05  # seconds: the loop looks at the pool (stopped? room?) at least this often


class ProjectSteps(Protocol[T, F, R]):
    """The rules of one project's fetch, for a loop that makes the requests."""

    def begin(self, item: T) -> F:
        """A fetch of `item`'s pages, not yet begun."""
        ...

    def step(
        self, fetch: F, outcome: PageAnswer | PageTransportError | None
    ) -> tuple[str, str] | R | None:
        """After `outcome` (None: nothing asked yet): the next GET's (path, accept), the
        project's result, or None when it needs a retry (`go_on` does that)."""
        ...

    def go_on(self, fetch: F) -> R:
        """Finish `fetch` from where `step` left it, retrying as a worker thread does."""
        ...


class FetchLoop(Generic[T, F, R]):
    """A `worker_pool.Engine` running `steps` for every item on one thread (see module doc)."""

    def __init__(self, steps: ProjectSteps[T, F, R], new_loop: Callable[[], PageLoop]) -> None:
        self.steps = steps
        self.new_loop = new_loop  # called in the thread (the process) that runs the loop

    def __call__(self, source: Source[T, R]) -> None:
        run = _Run(self.steps, source, self.new_loop())
        try:
            run.run()
        finally:
            run.loop.close()  # stopped early: the requests in flight are dropped
            run.aside.close()


class _Run(Generic[T, F, R]):
    """One process's loop: its transfers, and the projects it handed to retry threads."""

    def __init__(self, steps: ProjectSteps[T, F, R], source: Source[T, R], loop: PageLoop) -> None:
        self.steps, self.source, self.loop = steps, source, loop
        self.aside: _Aside[F, R] = _Aside(steps.go_on, source, source.workers)

    def run(self) -> None:
        source, loop = self.source, self.loop
        exhausted = False
        while not source.stopped:
            # as many projects in progress as the threads it replaces would have
            while not exhausted and self.has_slot() and source.has_room():
                item = source.take()
                if item is None:
                    exhausted = True
                    break
                self.advance(self.steps.begin(item), None)
            if loop.in_flight:
                for fetch, outcome in loop.wait(POLL):
                    self.advance(fetch, outcome)  # type: ignore[arg-type]
            elif exhausted:
                return
            elif source.has_room():  # every slot is a project being retried
                self.aside.wait(POLL)
            else:
                source.wait_for_room()

    def has_slot(self) -> bool:
        return self.loop.in_flight + self.aside.running < self.source.workers

    def advance(self, fetch: F, outcome: PageAnswer | PageTransportError | None) -> None:
        step = self.steps.step(fetch, outcome)
        if step is None:
            self.aside.submit(fetch)
        elif isinstance(step, tuple):
            self.loop.start(*step, tag=fetch)
        else:
            self.source.give(step)


class _Aside(Generic[F, R]):
    """Worker threads, started as needed, for the projects that need retries."""

    def __init__(self, go_on: Callable[[F], R], source: Source[object, R], threads: int) -> None:
        self.go_on, self.source = go_on, source
        self._executor: ThreadPoolExecutor | None = None
        self._threads = max(1, threads)
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self.running = 0  # submitted and not yet ended

    def submit(self, fetch: F) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="retry")
        with self._lock:
            self.running += 1
        self._executor.submit(self._run, fetch)

    def wait(self, timeout: float) -> None:
        """Until a retried project ends, or `timeout` seconds pass."""
        self._ended.wait(timeout)
        self._ended.clear()

    def _run(self, fetch: F) -> None:
        try:
            self.source.give(self.go_on(fetch))
        except BaseException as exc:  # handed to the consumer, who re-raises it
            self.source.fail(exc)
        finally:
            with self._lock:
                self.running -= 1
            self._ended.set()

    def close(self) -> None:
        """Wait for every retry to end (once the run halts, each ends at its next pause)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
