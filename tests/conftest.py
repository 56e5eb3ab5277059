"""Test-wide guards: nothing in the suite may reach beyond loopback.

Two layers. This process's Python sockets refuse to connect anywhere but loopback
(`loopback_only`). Everything else that speaks HTTP, in this process or in a child (libcurl,
requests, urllib3, the command line run as a subprocess, pip and uv)
reads the proxy variables set here: every host but loopback goes through a "proxy" on a
loopback port that is bound and never listens, so such a request is refused at once, with
no connection and no name lookup leaving the machine (a client resolves a name only when it
goes straight to the host). Not covered: a program that ignores the proxy variables and
opens its own sockets (nginx in ``test_serving`` listens on loopback only and connects to
nothing).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.seaweed import Seaweed

# Anything that falls back to a default URL goes to a closed loopback port, never pypi.org.
os.environ["PYPI_URL"] = "http://127.0.0.1:9"
os.environ.pop("RSTUF_API_URL", None)
os.environ.pop("RSTUF_API_TOKEN", None)

# The suite starts Python (the command line, pip, stand-ins) hundreds of times. Where the
# environment forbids bytecode files (PYTHONDONTWRITEBYTECODE), each start compiled the
# package from source again (a quarter of those tests' CPU): the children write and read
# theirs under a temporary directory instead (PYTHONPYCACHEPREFIX), never in the tree.
# Set once, by the first process (under pytest-xdist the workers inherit it).
if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="pytest-pycache-")
    atexit.register(shutil.rmtree, os.environ["PYTHONPYCACHEPREFIX"], ignore_errors=True)

# Bound, never listening: a connection to it is refused. Held open for the whole session so
# that no other socket takes the port.
_NOWHERE = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_NOWHERE.bind(("127.0.0.1", 0))
DEAD_PROXY = f"http://127.0.0.1:{_NOWHERE.getsockname()[1]}"
LOOPBACK_HOSTS = "127.0.0.1,localhost,::1"
for _name in ("http_proxy", "https_proxy", "all_proxy"):  # both cases: libcurl reads lower
    os.environ[_name] = os.environ[_name.upper()] = DEAD_PROXY
os.environ["no_proxy"] = os.environ["NO_PROXY"] = LOOPBACK_HOSTS

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_loopback(address: object) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            if host == "localhost":
                return
        raise RuntimeError(f"test tried to reach {host!r}: only loopback is allowed")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check_loopback(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check_loopback(address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def loopback_only() -> None:
    """Refuse any connection this process makes to a non-loopback address."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
    _NOWHERE.close()


PROJECTS = ("Django", "numpy", "zope.interface", "Foo_Bar", "requests")


@pytest.fixture
def pypi() -> Iterator[object]:
    """A stand-in PyPI with a few projects (names with caps, '.', '_'), two files each."""
    from tests.fake_pypi import FakePyPI

    with FakePyPI() as fake:
        for name in PROJECTS:
            fake.add_release(name, "1.0", files=2)
        yield fake


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A real S3 store (tests/seaweed.py), started at most once a session: defined here,
    once, since a session fixture that two test modules each import is two fixtures (and
    two stores). Imported when first asked for: boto3 takes 0.3 s to load."""
    from tests.seaweed import running_store

    with running_store(tmp_path_factory.mktemp("seaweed")) as store:
        yield store


@pytest.fixture
def aws_env(seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing at the store, in this process (and for children)."""
    from tests.seaweed import point_aws_at

    return point_aws_at(seaweed, monkeypatch)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A skipped test fails: the project's rule is that CI runs every test (install what
    a test needs in requirements-dev.txt instead of skipping it)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, which no test may be: {report.longrepr}"
