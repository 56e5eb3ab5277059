"""Run a function over a stream of items on a few threads; results in the order they finish.

`concurrent.futures` makes a Future per item and `wait(FIRST_COMPLETED)` walks
every running one per completion; a first sync hands 700,000 items through
here, so the threads take their items straight from the iterator and put
their results on one queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


def map_unordered(
    function: Callable[[T], R], items: Iterator[T], workers: int, window: int
) -> Iterator[R]:
    """Yield `function(item)` for every item, computed on `workers` threads, as each finishes.

    Items are taken from `items` one at a time (under a lock), and at most
    `window` results are computed but not yet consumed, so memory stays
    bounded whatever the consumer's pace. An exception raised by `function`
    (or by `items`) stops the workers after their current item and is
    re-raised here; if the consumer stops (an exception, ``close()``), the
    workers are stopped the same way. Either way every worker has finished
    when this generator ends: nothing runs on after the caller moves on.
    """
    lock = threading.Lock()
    room = threading.Semaphore(window)
    stop = threading.Event()
    results: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()

    def work() -> None:
        try:
            while True:
                room.acquire()
                with lock:
                    item = _END if stop.is_set() else next(items, _END)
                if item is _END:
                    room.release()  # the room it took, for the next worker to see the end
                    return
                results.put((True, function(item)))  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the consumer, who re-raises it
            stop.set()
            results.put((False, exc))
        finally:
            results.put((False, _END))

    threads = [
        threading.Thread(target=work, name=f"worker-{n}", daemon=True) for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            ok, value = results.get()
            if ok:
                room.release()
                yield value  # type: ignore[misc]
            elif value is _END:
                running -= 1
            else:
                raise value  # type: ignore[misc]
    finally:
        stop.set()
        for _ in threads:
            room.release()  # wake any worker waiting for room, so it sees `stop`
        for thread in threads:
            thread.join()
