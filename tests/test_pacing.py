"""XML-RPC pacing: PyPI's one call a second on average, without pauses a small run does not need."""

from __future__ import annotations

from pypi_index_mirror.ops import settings
from pypi_index_mirror.upstream import client as pypi_client
from tests.fake_pypi import FakePyPI


class FakeTime:
    """A clock that only moves when slept on (or told to), recording every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_burst_goes_out_at_once_then_one_call_per_interval() -> None:
    time = FakeTime()
    pacing = pypi_client.XmlRpcPacing(1.0, burst=3, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        pacing.take()
    assert time.sleeps == []
    for _ in range(100):
        pacing.take()
    assert len(time.sleeps) == 100
    assert time.now - 1000.0 == 100.0, "103 calls: 3 at once, then one a second"


def test_idle_time_refills_the_bucket_but_never_beyond_the_burst() -> None:
    time = FakeTime()
    pacing = pypi_client.XmlRpcPacing(1.0, burst=3, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        pacing.take()
    time.now += 3600.0  # an hour idle
    for _ in range(3):
        pacing.take()
    assert time.sleeps == []
    pacing.take()
    assert time.sleeps == [1.0]


def test_interval_zero_never_sleeps() -> None:
    time = FakeTime()
    pacing = pypi_client.XmlRpcPacing(0.0, clock=time.clock, sleep=time.sleep)
    for _ in range(50):
        pacing.take()
    assert time.sleeps == []


def test_a_small_run_makes_its_calls_without_a_pause(pypi: FakePyPI) -> None:
    """The calls of a first sync or an update (two or three) go out at once, at the default."""
    time = FakeTime()
    config = settings.Config(pypi_url=pypi.url)
    assert config.xmlrpc_interval == 1.0
    client = pypi_client.PypiClient(pypi.url, config, sleep=time.sleep, clock=time.clock)
    try:
        last = client.changelog_last_serial()
        client.list_packages_with_serial(lambda name, serial: None)
        list(client.changelog_since(0, last))
        assert time.sleeps == []
        client.changelog_last_serial()
        assert time.sleeps == [1.0], "a fourth call at once waits for its token"
    finally:
        client.close()
