"""fetch_loop: the projects in progress stay within --workers, retries included."""

from __future__ import annotations

import threading
import time

from pypi_index_mirror.sync.worker_pool import map_unordered

from pypi_index_mirror.sync.fetch_loop import FetchLoop
from pypi_index_mirror.upstream.transport import PageLoop, TransportSettings

SETTINGS = TransportSettings("http://127.0.0.1:9", None, None, None, 1.0, 1.0, 1 << 20)


class EveryProjectRetried:
    """Steps whose every project needs a retry at once, each retry taking a while."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_progress = 0
        self.most = 0

    def begin(self, item: int) -> int:
        with self.lock:
            self.in_progress += 1
            self.most = max(self.most, self.in_progress)
        return item

    def step(self, fetch: int, outcome: object) -> None:
        return None  # as after a 503: a worker thread goes on

    def go_on(self, fetch: int) -> int:
        time.sleep(0.01)
        with self.lock:
            self.in_progress -= 1
        return fetch


def test_projects_being_retried_hold_their_slots() -> None:
    steps = EveryProjectRetried()
    engine = FetchLoop(steps, lambda: PageLoop(SETTINGS))
    results = map_unordered(lambda n: n, iter(range(40)), 3, window=100, engine=engine)
    assert sorted(results) == list(range(40))
    assert steps.most <= 3, "the loop took projects while every slot waited on a retry"
