"""Run a function over a stream of items on a few threads; results in the order they finish.

`concurrent.futures` makes a Future per item and `wait(FIRST_COMPLETED)` walks
every running one per completion; a first sync hands 700,000 items through
here, so the threads take their items straight from the iterator and hand
their results over in batches.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


def map_unordered(
    function: Callable[[T], R],
    items: Iterator[T],
    workers: int,
    window: int,
    poll: Callable[[], None] | None = None,
    engine: Engine[T, R] | None = None,
) -> Iterator[R]:
    """Yield `function(item)` for every item, computed on `workers` threads, as each finishes.

    Items are taken from `items` one at a time (under a lock), and a worker
    waits while `window` results are computed but not yet consumed (a worker
    racing past that check adds one), so memory stays bounded whatever the
    consumer's pace. An exception raised by `function` (or by `items`) stops
    the workers after their current item and is re-raised here; if the
    consumer stops (an exception, ``close()``), the workers are stopped the
    same way. Either way every worker has finished when this generator ends:
    nothing runs on after the caller moves on.

    Results are handed over in a deque the consumer drains when woken, and it
    is woken once per `window // 2` results (or a worker's end), not per
    result: a wake-up is a syscall made while holding the GIL, and on a
    virtual machine one per page cost a fifth of a first sync's CPU. `poll`
    runs in the consumer's thread at least every `_Handoff.POLL` seconds
    (to notice a signal while every worker waits on a slow answer). With an
    `engine`, one thread runs it instead of `workers` threads running
    `function`: it takes items and gives results through a `Source`, with
    up to `workers` of them in progress at once.
    """
    return iter(WorkerPool(function, items, workers, window, poll=poll, engine=engine))


class Source(Generic[T, R]):
    """What an engine sees of its pool: items to take while there is room, results to give.

    An engine is one thread with many items in progress at once (a
    `page_transport.PageLoop` driving their requests, say) where the pool's
    threads would each block on one.
    """

    def __init__(self, pool: WorkerPool[T, R]) -> None:
        self._pool = pool
        self.workers = pool.workers  # how many items the engine may have in progress

    @property
    def stopped(self) -> bool:
        return self._pool.stopped

    def has_room(self) -> bool:
        """Whether the consumer can take another result now (see `map_unordered`'s window)."""
        handoff = self._pool._handoff
        return not handoff.full and not handoff.stopped

    def wait_for_room(self) -> None:
        """Wait until `has_room`, or the pool stops, or a poll interval passes."""
        self._pool._handoff.wait_once_for_room()

    def take(self) -> T | None:
        """The next item (items are never None), or None: none left, or the pool stopped."""
        item = self._pool.next_item()
        return None if item is _END else item  # type: ignore[return-value]

    def give(self, result: R) -> None:
        """One result (from any thread of the engine's)."""
        self._pool._handoff.put((True, result))

    def fail(self, error: BaseException) -> None:
        """Stop everything; the consumer raises `error`."""
        self._pool.fail(error)


class Engine(Protocol[T, R]):
    """Runs every item of a `Source` on the thread that calls it, and returns when done."""

    def __call__(self, source: Source[T, R]) -> None: ...


class WorkerPool(Generic[T, R]):
    """`map_unordered`, with room for results from elsewhere: `feeders` other threads
    `feed` results (or `fail`) into the same stream and each says when it is `done`.
    `engine`: see `map_unordered`."""

    def __init__(
        self,
        function: Callable[[T], R],
        items: Iterator[T],
        workers: int,
        window: int,
        feeders: int = 0,
        poll: Callable[[], None] | None = None,
        engine: Engine[T, R] | None = None,
    ) -> None:
        self.function, self.items, self.workers = function, items, workers
        self.feeders, self.poll, self.engine = feeders, poll, engine
        self._handoff = _Handoff(window)
        self._lock = threading.Lock()

    def feed(self, result: R) -> None:
        """From a feeder thread: one more result (waits while the consumer is behind)."""
        self._handoff.wait_for_room()
        self._handoff.put((True, result))

    def fail(self, error: BaseException) -> None:
        """From a feeder thread: stop everything; the consumer raises `error`."""
        self._handoff.stopped = True
        self._handoff.put((False, error), wake=True)

    def done(self) -> None:
        """From a feeder thread: it feeds nothing more."""
        self._handoff.put((False, _END), wake=True)

    @property
    def stopped(self) -> bool:
        return self._handoff.stopped

    def next_item(self) -> T | object:
        """The next item, or `_END`: none left, or the pool stopped (any thread)."""
        with self._lock:
            return _END if self._handoff.stopped else next(self.items, _END)

    def _work(self) -> None:
        handoff = self._handoff
        try:
            while not handoff.stopped:
                handoff.wait_for_room()
                item = self.next_item()
                if item is _END:
                    return
                handoff.put((True, self.function(item)))  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the consumer, who re-raises it
            self.fail(exc)
        finally:
            self.done()

    def _drive(self, engine: Engine[T, R]) -> None:
        try:
            engine(Source(self))
        except BaseException as exc:  # handed to the consumer, who re-raises it
            self.fail(exc)
        finally:
            self.done()

    def __iter__(self) -> Iterator[R]:
        handoff = self._handoff
        if self.engine is not None:
            threads = [threading.Thread(target=self._drive, args=(self.engine,), name="engine")]
        else:
            threads = [
                threading.Thread(target=self._work, name=f"worker-{n}") for n in range(self.workers)
            ]
        for thread in threads:
            thread.start()
        running = len(threads) + self.feeders
        try:
            while running:
                if self.poll is not None:
                    self.poll()
                for ok, value in handoff.drain():
                    if ok:
                        yield value  # type: ignore[misc]
                    elif value is _END:
                        running -= 1
                    else:
                        raise value  # type: ignore[misc]
        finally:
            handoff.stop()
            for thread in threads:
                thread.join()


class _Handoff:
    """Results from the workers to the one consumer, woken in batches; room for `window`."""

    POLL = 0.05  # seconds: the consumer looks at least this often, woken or not

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self.wake_at = max(1, self.window // 2)
        self.results: collections.deque[tuple[bool, object]] = collections.deque()
        self.ready = threading.Event()  # the consumer has something to drain
        self.room = threading.Event()  # a worker may compute one more result
        self.room.set()
        self.stopped = False

    def put(self, entry: tuple[bool, object], wake: bool = False) -> None:
        self.results.append(entry)  # deque.append is atomic
        if wake or len(self.results) >= self.wake_at:
            self.ready.set()

    @property
    def full(self) -> bool:
        return len(self.results) >= self.window

    def wait_for_room(self) -> None:
        while self.full and not self.stopped:
            self.wait_once_for_room()

    def wait_once_for_room(self) -> None:
        """While full: wake the consumer, and wait (at most POLL) for it to drain."""
        if self.full and not self.stopped:
            self.room.clear()
            self.ready.set()
            if self.full:  # the consumer may have drained meanwhile
                self.room.wait(self.POLL)

    def drain(self) -> list[tuple[bool, object]]:
        """Wait (at most POLL) for results, then take every one there is."""
        if not self.results:
            self.ready.wait(self.POLL)
        self.ready.clear()
        taken = []
        while self.results:
            taken.append(self.results.popleft())
        self.room.set()
        return taken

    def stop(self) -> None:
        self.stopped = True
        self.room.set()
