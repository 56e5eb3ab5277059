"""CPU per page and pages/s of the page transport alone: libcurl (ours) against urllib3.

    python -m tests.bench.bench_transport [--projects 20000] [--pages 10000] [--workers 1,10]

One stand-in PyPI (`tests.bench.bench_server`, own process, pages pre-rendered)
serves the pages. In this process, `--workers` threads GET `--pages` project
pages over keep-alive connections, three ways, each measured by the CPU this
process used (user and system, from getrusage: the server's is not counted):

* ``requests``: a ``requests.Session`` per thread, what pypi_mirror.py used
  first, and the reference the performance issue's figures were taken with;
* ``urllib3``: one shared ``HTTPConnectionPool``, the body read whole: the
  transport pypi_mirror.py had before (requests is built on it);
* ``PageLoop``: ours, ``upstream.transport.PageLoop`` (libcurl through pycurl), a loop of
  one per thread;
* ``fetch_page``: ``PypiClient.fetch_page``, ours with the page's checks
  (status, Content-Type, serial, the HTML parsed), what a sync pays per page
  before writing it.

Prints a table and writes ``bench-results-transport.json``. Not named test_*,
so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
import urllib3

from pypi_index_mirror.http.environment import USER_AGENT
from pypi_index_mirror.ops import settings
from pypi_index_mirror.upstream import client as pypi_client
from pypi_index_mirror.upstream.transport import PageAnswer
from tests.bench.bench_sync import running_server

Fetch = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    transport: str
    workers: int
    pages: int
    wall: float
    cpu_user: float
    cpu_system: float

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.wall

    @property
    def cpu_ms_per_page(self) -> float:
        return 1000 * (self.cpu_user + self.cpu_system) / self.pages


def requests_fetcher(url: str, workers: int) -> tuple[Fetch, Callable[[], None]]:
    local = threading.local()
    sessions: list[requests.Session] = []
    headers = {"Accept": pypi_client.HTML_ACCEPT, "User-Agent": USER_AGENT}

    def fetch(name: str) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            sessions.append(session)
        response = session.get(f"{url}/simple/{name}/", headers=headers, allow_redirects=False)
        response.headers.get("X-PyPI-Last-Serial")
        if response.status_code != 200 or not response.content:
            raise RuntimeError(f"{name}: HTTP {response.status_code}")

    def close() -> None:
        for session in sessions:
            session.close()

    return fetch, close


def urllib3_fetcher(url: str, workers: int) -> tuple[Fetch, Callable[[], None]]:
    manager = urllib3.PoolManager(maxsize=workers, block=False)
    connections = manager.connection_from_url(url)
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": pypi_client.HTML_ACCEPT,
        "Accept-Encoding": "gzip, deflate",
    }
    no_retries = urllib3.Retry(total=False, redirect=False)

    def fetch(name: str) -> None:
        response = connections.urlopen(
            "GET",
            f"/simple/{name}/",
            headers=headers,
            retries=no_retries,
            redirect=False,
            preload_content=False,
        )
        response.headers.get("X-PyPI-Last-Serial")
        if response.status != 200 or not response.read():
            raise RuntimeError(f"{name}: HTTP {response.status}")
        response.release_conn()

    return fetch, manager.clear


def client_of(url: str) -> pypi_client.PypiClient:
    """Ours as a sync makes it: the page transport takes a handle per request in flight."""
    return pypi_client.PypiClient(url, settings.Config(pypi_url=url, retries=0))


def per_thread_clients(url: str) -> tuple[Callable[[], pypi_client.PypiClient], Callable[[], None]]:
    """A client per thread (a client's loop of one is a thread's own), and their closer."""
    local = threading.local()
    made: list[pypi_client.PypiClient] = []

    def mine() -> pypi_client.PypiClient:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = client_of(url)
            made.append(client)
        return client

    return mine, lambda: [client.close() for client in made]


def page_loop_fetcher(url: str, workers: int) -> tuple[Fetch, Callable[[], None]]:
    mine, close = per_thread_clients(url)

    def fetch(name: str) -> None:
        answer = mine().get_page(name, json_form=False)
        if not isinstance(answer, PageAnswer) or answer.status != 200 or not answer.body:
            raise RuntimeError(f"{name}: {answer}")

    return fetch, close


def fetch_page_fetcher(url: str, workers: int) -> tuple[Fetch, Callable[[], None]]:
    mine, close = per_thread_clients(url)

    def fetch(name: str) -> None:
        mine().fetch_page(name)

    return fetch, close


TRANSPORTS = {
    "requests": requests_fetcher,
    "urllib3": urllib3_fetcher,
    "PageLoop": page_loop_fetcher,
    "fetch_page": fetch_page_fetcher,
}


def measure(transport: str, url: str, names: list[str], workers: int) -> Row:
    fetch, close = TRANSPORTS[transport](url, workers)
    for name in names[:workers]:  # connections open before the clock starts
        fetch(name)
    todo = iter(names)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        while not failures:
            with lock:
                name = next(todo, None)
            if name is None:
                return
            try:
                fetch(name)
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    close()
    if failures:
        raise SystemExit(f"{transport}: {failures[0]}")
    return Row(
        transport,
        workers,
        len(names),
        wall,
        after.ru_utime - before.ru_utime,
        after.ru_stime - before.ru_stime,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=10_000, help="pages fetched per row")
    parser.add_argument("--workers", default="1,10", help="comma-separated thread counts")
    parser.add_argument("--output", type=Path, default=Path("bench-results-transport.json"))
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with running_server(args.projects, seed=1, max_files=8000, prerender=True) as server:
        names = server.project_names()[: args.pages]
        for workers in (int(part) for part in args.workers.split(",")):
            for transport in TRANSPORTS:
                row = measure(transport, server.url, names, workers)
                rows.append(row)
                print(
                    f"{row.transport:<11}{row.workers:>3} workers {row.pages_per_s:>7.0f} pages/s"
                    f"  CPU {row.cpu_ms_per_page:.3f} ms/page"
                    f" (user {1000 * row.cpu_user / row.pages:.3f},"
                    f" system {1000 * row.cpu_system / row.pages:.3f})",
                    file=sys.stderr,
                )
    result = [
        {**asdict(row), "pages_per_s": row.pages_per_s, "cpu_ms_per_page": row.cpu_ms_per_page}
        for row in rows
    ]
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
