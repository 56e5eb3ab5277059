"""The stand-in RSTUF behaves like the real one where the mirror's delivery depends on it.

Everything runs on a `ManualClock`: the stand-in does nothing until the test moves time, so
the worker's timings are checked in RSTUF seconds, however loaded the machine is.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator

import pytest
import requests

from pypi_index_mirror.mirror.store import digest_bytes
from tests.fake_rstuf import ADD, PUBLISH, FakeRstuf, ManualClock, Pacing, hash_bin_role

STATES_BEFORE_ROWS = ["PENDING", "RECEIVED", "STARTED", "PRE_RUN"]


class Api:
    """Plain HTTP to the stand-in, so these tests depend on nothing of the mirror."""

    def __init__(self, fake: FakeRstuf, clock: ManualClock) -> None:
        self.fake, self.clock = fake, clock
        self.session = requests.Session()

    def add(self, paths: list[str], publish: bool = False) -> str:
        artifacts = []
        for path in paths:
            digest = digest_bytes(path.encode())
            info = {"length": digest.length, "hashes": {digest.algorithm: digest.hexdigest}}
            artifacts.append({"path": path, "info": info})
        body = {"artifacts": artifacts, "publish_artifacts": publish}
        return self._post("/api/v1/artifacts/", body)

    def remove(self, paths: list[str]) -> str:
        return self._post(
            "/api/v1/artifacts/delete", {"artifacts": paths, "publish_artifacts": False}
        )

    def publish(self) -> str:
        return self._post("/api/v1/artifacts/publish/", None)

    def _post(self, path: str, body: object) -> str:
        response = self.session.post(self.fake.url + path, json=body, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()["data"]["task_id"]

    def task(self, task_id: str) -> dict:
        response = self.session.get(
            self.fake.url + "/api/v1/task/", params={"task_id": task_id}, timeout=10
        )
        assert response.status_code == 200
        return response.json()["data"]

    def state(self, task_id: str) -> str:
        return self.task(task_id)["state"]

    def until(self, done: Callable[[], bool], limit: float = 60.0, tick: float = 0.01) -> float:
        """Move time in `tick`s until `done()`; return the RSTUF seconds that took."""
        started = self.clock.now()
        while not done():
            assert self.clock.now() - started < limit, "not reached in time"
            self.clock.advance(tick)
        return self.clock.now() - started


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rstuf(clock: ManualClock) -> Iterator[FakeRstuf]:
    with FakeRstuf(clock=clock, processes=2) as fake:
        yield fake


@pytest.fixture
def api(rstuf: FakeRstuf, clock: ManualClock) -> Iterator[Api]:
    client = Api(rstuf, clock)
    yield client
    client.session.close()


def test_an_add_passes_the_states_of_the_real_worker_in_order(api: Api) -> None:
    task_id = api.add(["simple/a/index.html"])
    seen = [api.state(task_id)]
    record = seen.append
    api.until(lambda: seen[-1] == "RUNNING" or bool(record(api.state(task_id))), tick=0.001)
    assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == [
        *STATES_BEFORE_ROWS,
        "RUNNING",
    ]
    details = api.task(task_id)["result"]["details"]
    roles = details["roles_to_publish"]
    assert isinstance(roles, str) and ast.literal_eval(roles) == [
        hash_bin_role("simple/a/index.html", 16)
    ]
    with pytest.raises(ValueError):
        json.loads(roles)  # "['bins-5']": a Python list's repr, not JSON
    api.publish()
    api.until(lambda: api.state(task_id) == "SUCCESS")


def test_unpublished_tasks_hold_the_worker_processes_and_the_rest_wait(
    api: Api, rstuf: FakeRstuf
) -> None:
    tasks = [api.add([f"simple/p{n}/index.html"]) for n in range(3)]
    api.until(lambda: api.state(tasks[1]) == "RUNNING")
    api.clock.advance(30)
    assert [api.state(t) for t in tasks] == ["RUNNING", "RUNNING", "PENDING"]
    assert rstuf.busy_processes() == 2
    publish = api.publish()  # publishes have their own queue: this one runs
    api.until(lambda: api.state(tasks[2]) == "RUNNING")
    assert api.state(publish) == "SUCCESS"
    assert [api.state(t) for t in tasks[:2]] == ["SUCCESS"] * 2
    api.publish()
    api.until(lambda: api.state(tasks[2]) == "SUCCESS")
    assert set(rstuf.view) == {f"simple/p{n}/index.html" for n in range(3)}
    assert rstuf.busy_processes() == 0 and rstuf.stats.most_busy_processes == 2


def test_a_publish_posted_before_the_rows_are_written_covers_nothing(
    api: Api, rstuf: FakeRstuf
) -> None:
    """The publish race: the naive sequence fails here as it does on a real RSTUF."""
    tasks = [api.add([f"simple/p{n}/index.html"]) for n in range(2)]
    publish = api.publish()
    api.until(lambda: api.state(publish) == "SUCCESS")
    assert api.task(publish)["result"]["details"] == {"artifact_roles": None}
    api.until(lambda: all(api.state(t) == "RUNNING" for t in tasks))
    api.clock.advance(60)
    assert [api.state(t) for t in tasks] == ["RUNNING", "RUNNING"] and rstuf.view == {}
    api.publish()  # posted after the rows were written: it covers them
    api.until(lambda: all(api.state(t) == "SUCCESS" for t in tasks))
    assert len(rstuf.view) == 2


def test_one_publish_covers_adds_and_removes_in_one_metadata_update(
    api: Api, rstuf: FakeRstuf
) -> None:
    rstuf.import_artifacts(
        {"simple/gone/index.html": {"length": 1, "hashes": {"sha256": "0" * 64}}}
    )
    tasks = [api.add(["simple/kept/index.html"]), api.remove(["simple/gone/index.html"])]
    api.until(lambda: all(api.state(t) == "RUNNING" for t in tasks))
    api.publish()
    api.until(lambda: all(api.state(t) == "SUCCESS" for t in tasks))
    assert list(rstuf.view) == ["simple/kept/index.html"]
    assert len(rstuf.published_views) == 2  # the import, then this one publish


def test_a_failed_publish_leaves_its_tasks_waiting(api: Api, rstuf: FakeRstuf) -> None:
    rstuf.fail_tasks("ERRORED", error="storage down", actions=(PUBLISH,))
    task_id = api.add(["simple/a/index.html"])
    api.until(lambda: api.state(task_id) == "RUNNING")
    publish = api.publish()
    api.until(lambda: api.state(publish) != "STARTED" and api.state(publish) != "PENDING")
    answer = api.task(publish)
    assert answer["state"] == "ERRORED" and answer["result"]["error"] == "storage down"
    api.clock.advance(30)
    assert api.state(task_id) == "RUNNING" and rstuf.view == {}


def test_an_add_whose_own_publish_fails_fails(api: Api, rstuf: FakeRstuf) -> None:
    rstuf.fail_tasks("FAILURE", error="worker restarted", actions=(PUBLISH,))
    task_id = api.add(["simple/a/index.html"], publish=True)
    api.until(lambda: api.state(task_id) == "FAILURE")
    assert "ChordError" in api.task(task_id)["result"]["message"]
    assert api.state(f"publish_artifacts-{task_id}") == "FAILURE"
    assert rstuf.busy_processes() == 0


def test_a_hollow_publish_succeeds_and_publishes_nothing(api: Api, rstuf: FakeRstuf) -> None:
    rstuf.hollow_publishes(times=1)
    task_id = api.add(["simple/a/index.html"])
    api.until(lambda: api.state(task_id) == "RUNNING")
    publish = api.publish()
    api.until(lambda: api.state(publish) == "SUCCESS")
    api.clock.advance(30)
    assert api.state(task_id) == "RUNNING" and rstuf.view == {}


def test_an_unknown_task_is_pending_and_the_bootstrap_has_an_id(api: Api) -> None:
    assert api.task("0123456789abcdef") == {"task_id": "0123456789abcdef", "state": "PENDING"}
    data = api.session.get(api.fake.url + "/api/v1/bootstrap/", timeout=10).json()["data"]
    assert data["bootstrap"] is True and data["state"] == "finished"
    assert isinstance(data["id"], str) and "task_id" not in data


@pytest.mark.parametrize(
    ("artifacts", "seen"),
    [(1, 3.1), (100, 12.5), (1000, 25.5), (5000, 63.7)],
)
def test_real_pacing_matches_a_real_rstuf(artifacts: int, seen: float) -> None:
    """An add with publish on, on an idle 2-process worker: what a real RSTUF took, +-10%."""
    clock = ManualClock()
    with FakeRstuf(clock=clock, pacing=Pacing.real()) as fake:
        api = Api(fake, clock)
        task_id = api.add([f"simple/p{n}/index.html" for n in range(artifacts)], publish=True)
        tick = max(0.05, seen / 100)  # about a hundred polls
        took = api.until(lambda: api.state(task_id) == "SUCCESS", limit=120, tick=tick)
        api.session.close()
    assert seen * 0.9 <= took <= seen * 1.1


def test_real_pacing_of_a_publish_and_what_follows_it() -> None:
    clock = ManualClock()
    with FakeRstuf(clock=clock, pacing=Pacing.real()) as fake:
        api = Api(fake, clock)
        task_id = api.add([f"simple/p{n}/index.html" for n in range(5000)])
        api.until(lambda: api.state(task_id) == "RUNNING", limit=120, tick=1.0)
        publish = api.publish()
        published = api.until(lambda: api.state(publish) == "SUCCESS", tick=0.05)
        confirmed = api.until(lambda: api.state(task_id) == "SUCCESS", tick=0.25)
        api.session.close()
    assert 1.2 <= published <= 1.5  # 1.3 s on a real RSTUF
    assert 25 <= confirmed <= 31  # 28 s


def test_accepted_requests_are_recorded_in_the_stand_ins_time(api: Api, rstuf: FakeRstuf) -> None:
    api.clock.advance(5)
    api.add(["simple/a/index.html"])
    (accepted,) = rstuf.accepted
    assert accepted.action == ADD and accepted.at == api.clock.now()
    assert rstuf.request_log[-1].at == api.clock.now()
