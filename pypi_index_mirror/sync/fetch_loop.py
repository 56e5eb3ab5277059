"""The one fetch engine: every project page of a run, from one thread, with many requests in flight.

A first sync is hundreds of thousands of small pages, each fetched, checked
and written; an update, ``--full-check`` and ``--repair`` are the same work
on fewer of them. Threads each blocked on one request contend for the GIL at
every header line libcurl hands back and every syscall of a write: with five
threads in a process, each piece of a page's work measured three times its
cost alone (``time.thread_time`` per piece). `fetch_each` keeps up to
``--workers`` projects in progress on a `transport.PageLoop` (libcurl's multi
interface) on the thread that consumes the results, and does each project's
work itself as its answers arrive.

A retry is a timer on the loop, not a sleeping thread: a heap of (due time,
fetch), its pause chosen by the one retry policy (``http.retry``) wherever the
rules ask for it. A project waiting out a pause keeps its slot, as a thread
sleeping in it did: a struggling PyPI is not handed more projects at once.

The rules are not here but in a `ProjectSteps` (``sync.page_steps``): what to
request next, how to judge an answer, when to pause, when the project is
done. Once the steps say the run halted (circuit breaker, signal), nothing
more is asked: the transfers in flight are dropped, the pauses end at once,
and every project left comes back as the steps' `unfetched` result.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pypi_index_mirror.upstream.transport import PageAnswer, PageLoop, PageTransportError

T = TypeVar("T")  # an item to fetch
F = TypeVar("F")  # its fetch in progress
R = TypeVar("R")  # its result
R_co = TypeVar("R_co", covariant=True)

POLL = 0.05  # seconds: the loop asks the steps whether the run halted at least this often


@dataclass(frozen=True, slots=True)
class Pause:
    """A step's answer: call `step(fetch, None)` again after `seconds` (a retry's pause)."""

    seconds: float


class ProjectSteps(Protocol[T, F, R_co]):
    """The rules of one project's fetch, for a loop that makes the requests."""

    def begin(self, item: T) -> F:
        """A fetch of `item`'s pages, not yet begun."""
        ...

    def step(
        self, fetch: F, outcome: PageAnswer | PageTransportError | None
    ) -> tuple[str, str, tuple[str, ...]] | Pause | R_co:
        """After `outcome` (None: nothing asked yet, or a pause ended): the next GET's
        (path, accept, extra header lines), a `Pause` before going on, or the project's
        result."""
        ...

    def halted(self) -> bool:
        """Whether the run stopped fetching (asked between steps, at least every `POLL` s)."""
        ...

    def unfetched(self, item: T) -> R_co:
        """The result of an item the run halted before it was fetched."""
        ...

    def item_of(self, fetch: F) -> T:
        """The item `fetch` began from."""
        ...


def fetch_each(
    steps: ProjectSteps[T, F, R],
    items: Iterator[T],
    workers: int,
    new_loop: Callable[[], PageLoop],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[R]:
    """Yield the result of every item, as each project ends, with up to `workers` in progress.

    The loop runs only while the caller asks for the next result: what it does
    with one (a batch written, a state saved) happens between two turns of
    the loop, on the same thread. Closing the generator early drops the
    transfers in flight and the projects waiting to retry, yielding nothing
    more. An exception raised by the steps ends the loop the same way and
    reaches the caller.
    """
    return _Engine(steps, items, workers, new_loop(), clock, sleep).run()


class _Engine(Generic[T, F, R]):
    """One run of `fetch_each`: its transfers, its timers, and what is still to begin."""

    def __init__(
        self,
        steps: ProjectSteps[T, F, R],
        items: Iterator[T],
        workers: int,
        loop: PageLoop,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.steps, self.items, self.loop = steps, items, loop
        self.workers = max(1, workers)
        self.clock, self.sleep = clock, sleep
        self.in_progress = 0  # begun and not ended: in flight or waiting on a timer
        self.timers: list[tuple[float, int, F]] = []  # a heap of (due, order, fetch)
        self.order = itertools.count()  # equal due times: first paused, first resumed
        self.in_flight: dict[int, F] = {}  # id(fetch): a fetch need not be hashable
        self.closed = False

    def run(self) -> Iterator[R]:
        steps, loop = self.steps, self.loop
        exhausted = False
        try:
            while not steps.halted():
                while not exhausted and self.in_progress < self.workers:
                    item = next(self.items, None)
                    if item is None:
                        exhausted = True
                        break
                    self.in_progress += 1
                    result = self.advance(steps.begin(item), None)
                    if result is not None:
                        yield result[0]
                for fetch in self.due():
                    result = self.advance(fetch, None)
                    if result is not None:
                        yield result[0]
                if loop.in_flight:
                    for tag, outcome in loop.wait(self.patience()):
                        fetch = self.in_flight.pop(id(tag))
                        result = self.advance(fetch, outcome)
                        if result is not None:
                            yield result[0]
                elif self.timers:
                    self.sleep(self.patience())
                elif exhausted:
                    return
            yield from self.drop()
        finally:
            self.close()  # stopped early: the requests in flight are dropped

    def advance(self, fetch: F, outcome: PageAnswer | PageTransportError | None) -> tuple[R] | None:
        """Take `fetch`'s next step: a request started, a timer set, or its result (boxed)."""
        step = self.steps.step(fetch, outcome)
        if isinstance(step, tuple):
            path, accept, extra = step
            self.in_flight[id(fetch)] = fetch
            self.loop.start(path, accept, tag=fetch, extra=extra)
            return None
        if isinstance(step, Pause):
            due = self.clock() + max(0.0, step.seconds)
            heapq.heappush(self.timers, (due, next(self.order), fetch))
            return None
        self.in_progress -= 1
        return (step,)

    def due(self) -> list[F]:
        """The fetches whose pause has ended, taken off the heap."""
        now = self.clock()
        ended = []
        while self.timers and self.timers[0][0] <= now:
            ended.append(heapq.heappop(self.timers)[2])
        return ended

    def patience(self) -> float:
        """How long the loop may wait now: until the next timer, and never past `POLL`."""
        if not self.timers:
            return POLL
        return min(POLL, max(0.0, self.timers[0][0] - self.clock()))

    def drop(self) -> Iterator[R]:
        """The run halted: every project in progress or not begun ends unfetched."""
        steps = self.steps
        fetches = list(self.in_flight.values()) + [fetch for _, _, fetch in self.timers]
        self.close()  # the transfers in flight, dropped at once
        self.in_flight.clear()
        self.timers.clear()
        for fetch in fetches:
            self.in_progress -= 1
            yield steps.unfetched(steps.item_of(fetch))
        for item in self.items:
            yield steps.unfetched(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.close()
