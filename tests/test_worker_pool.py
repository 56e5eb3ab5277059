"""map_unordered: every item once, bounded memory, and no worker left running afterwards."""

from __future__ import annotations

import threading
import time

import pytest

from pypi_index_mirror.sync.worker_pool import map_unordered


def test_every_item_once() -> None:
    results = list(map_unordered(lambda n: n * n, iter(range(1000)), workers=8, window=4))
    assert sorted(results) == [n * n for n in range(1000)]


def test_about_window_results_wait_for_the_consumer() -> None:
    """At most `window` results, one more per worker racing past the check, and one in
    progress per worker: never the whole stream while the consumer is slow."""
    started: list[int] = []
    lock = threading.Lock()

    def record(n: int) -> int:
        with lock:
            started.append(n)
        return n

    results = map_unordered(record, iter(range(200)), workers=4, window=5)
    for consumed, _ in enumerate(results, start=1):
        time.sleep(0.001)
        with lock:
            assert len(started) <= consumed + 5 + 2 * 4


def test_an_exception_stops_the_workers_and_reaches_the_consumer() -> None:
    calls: list[int] = []

    def fail_at_ten(n: int) -> int:
        calls.append(n)
        if n == 10:
            raise OSError("disk full")
        return n

    before = threading.active_count()
    with pytest.raises(OSError, match="disk full"):
        list(map_unordered(fail_at_ten, iter(range(100_000)), workers=4, window=8))
    assert len(calls) < 100, "the workers went on after the failure"
    assert threading.active_count() == before


def test_a_consumer_that_stops_early_stops_the_workers() -> None:
    before = threading.active_count()
    results = map_unordered(lambda n: n, iter(range(100_000)), workers=4, window=8)
    assert next(results) is not None
    results.close()
    assert threading.active_count() == before


def test_an_engine_runs_every_item_on_one_thread_within_the_window() -> None:
    """An engine takes items while the consumer has room, gives results from any thread."""
    seen_threads: set[int] = set()

    def engine(source) -> None:  # type: ignore[no-untyped-def]
        while (item := source.take()) is not None:
            seen_threads.add(threading.get_ident())
            while not source.has_room():
                source.wait_for_room()
            # the window, and the batch the consumer drained and is still handing out
            assert item <= len(consumed) + 2 * 8, "ran past the window"
            source.give(item * 2)

    consumed: list[int] = []
    for result in map_unordered(lambda n: n, iter(range(500)), 4, window=8, engine=engine):
        consumed.append(result)
        time.sleep(0.0005)
    assert sorted(consumed) == [n * 2 for n in range(500)]
    assert len(seen_threads) == 1


def test_an_engines_exception_reaches_the_consumer_and_leaves_no_thread() -> None:
    def engine(source) -> None:  # type: ignore[no-untyped-def]
        source.give(source.take())
        raise OSError("disk full")

    before = threading.active_count()
    with pytest.raises(OSError, match="disk full"):
        list(map_unordered(lambda n: n, iter(range(10)), 4, window=8, engine=engine))
    assert threading.active_count() == before
