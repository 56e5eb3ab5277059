"""The benchmark's stand-in PyPI, run in its own process (its own GIL, its own core).

    python -m tests.bench.bench_server --projects N [--seed S] [--max-files F] [--prerender]
                                       [--latency MS]

Prints its URL as the one line on stdout, then serves until SIGTERM. It is
`tests.fake_pypi.FakePyPI` (same pages, same XML-RPC, same JSON API) with two
additions a benchmark needs and the tests do not:

* ``--prerender`` renders every project's PEP 691 JSON and JSON API body up
  front, so the first request for them (bandersnatch's) costs the server no
  rendering: both mirrors then read pre-rendered bytes, and the stand-in is
  not what limits either of them.
* ``GET /_bench/counts`` answers ``{"page": n, "page:json": n, "root:json": n,
  "xmlrpc:changelog_since_serial": n, ...}``: every request since start (or
  ``POST /_bench/reset``), counted by kind (``:json`` where the answer was
  PEP 691 JSON) and XML-RPC method, without keeping a per-request log.
* ``--latency MS`` (or ``POST /_bench/latency?ms=MS`` while it runs) holds
  every answer MS milliseconds before sending it, as a network round trip
  would: the connection's thread waits on an event, using no CPU, so as many
  requests can be in flight as there are connections (one thread each).
  Control requests (``/_bench/...``) are never delayed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import json
import sys
import threading
import time
from collections.abc import Sequence

from tests.fake_pypi import (
    MIME_V1_JSON,
    XMLRPC_OFF_MODES,
    FakePyPI,
    Reply,
    Request,
    negotiate,
    serve_until_stopped,
)

COUNTS_PATH = "/_bench/counts"
RESET_PATH = "/_bench/reset"
LATENCY_PATH = "/_bench/latency"


class BenchPyPI(FakePyPI):
    """A FakePyPI that counts requests by kind instead of logging each one."""

    def __init__(self, latency: float = 0.0, **kwargs: object) -> None:
        super().__init__(log_requests=False, **kwargs)  # type: ignore[arg-type]
        self._counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self.latency = latency  # seconds each answer is held, like a round trip

    def respond(self, request: Request) -> Reply:
        if request.path == COUNTS_PATH:
            with self._counts_lock:
                body = json.dumps(dict(self._counts), sort_keys=True).encode()
            return Reply(200, [("Content-Type", "application/json")], body)
        if request.path == RESET_PATH and request.method == "POST":
            with self._counts_lock:
                self._counts.clear()
            return Reply(200, [("Content-Type", "application/json")], b"{}")
        if request.path == LATENCY_PATH and request.method == "POST":
            self.latency = float(request.query.get("ms", "0")) / 1000
            return Reply(200, [("Content-Type", "application/json")], b"{}")
        kind, method, reply, _fault = self._route(request)
        key = f"xmlrpc:{method}" if method else kind
        if kind in ("page", "root") and negotiate(request.accept) == MIME_V1_JSON:
            key += ":json"
        with self._counts_lock:
            self._counts[key] += 1
        if self.latency:
            # A copy: the prerendered Reply objects of the stand-in may be shared.
            reply = dataclasses.replace(reply, delay=reply.delay + self.latency)
        return reply

    def prerender(self) -> None:
        """Render every JSON form now, so no request pays for rendering later."""
        with self._lock:
            for project in self._projects.values():
                if project.current is not None:
                    self._simple_json(project.current)
                    self._api_json(project.current)
        root = self._current_root()
        self._root_json(root)
        gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_server")
    parser.add_argument("--projects", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-files", type=int, default=8000)
    parser.add_argument("--prerender", action="store_true")
    parser.add_argument("--xmlrpc-off", choices=XMLRPC_OFF_MODES)
    parser.add_argument("--latency", type=float, default=0.0, metavar="MS",
                        help="hold every answer MS ms (a network round trip)")  # fmt: skip
    args = parser.parse_args(argv)
    fake = BenchPyPI(latency=args.latency / 1000)
    started = time.perf_counter()
    fake.populate(args.projects, seed=args.seed, max_files=args.max_files)
    if args.prerender:
        fake.prerender()
    if args.xmlrpc_off:
        fake.switch_off_xmlrpc(args.xmlrpc_off)
    built = time.perf_counter() - started

    serve_until_stopped(fake, lambda: f"bench server: {args.projects} projects in {built:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
