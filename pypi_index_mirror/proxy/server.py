"""The HTTP face of the proxy: a threaded server that answers only with verified pages.

One thread per client connection (``ThreadingHTTPServer``), keep-alive
(HTTP/1.1) with ``TCP_NODELAY`` (without it a keep-alive client waits about
40 ms per answer: Nagle's algorithm meets delayed ACKs). Each request is routed
(`routing.route`), its page obtained from the `Verifier`, and answered with
the verified bytes, or with an HTTP error whose reason phrase and body are the
refusal's one line, logged as a warning. pip shows the reason phrase
(``pip -vv``: "Could not fetch URL …: 404 Client Error: <reason>").

Pages carry ``Vary: Accept`` (the same URL answers HTML or JSON), an ``ETag``
that is the page's signed blake2b-256 (a matching ``If-None-Match`` gets a
304) and ``Cache-Control: no-cache``: a client may keep a page but asks again,
so it never uses one longer than the metadata that signed it.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from urllib import parse

from pypi_index_mirror.ops.cli import VERSION
from pypi_index_mirror.proxy.routing import NotServed, Page, Redirect, route
from pypi_index_mirror.proxy.verifier import NotSigned, Refusal, Verifier, one_line

log = logging.getLogger(__name__)


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of /, /simple/ and /simple/<project>/; anything else is a 404 or 405."""

    protocol_version = "HTTP/1.1"
    server_version = f"pypi-mirror-proxy/{VERSION}"
    sys_version = ""
    timeout = 120  # seconds an idle keep-alive connection keeps its thread
    server: ProxyServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        started = self.server.verifier.config.monotonic()
        path = parse.urlsplit(self.path).path
        answer = route(path, self.headers.get("Accept"))
        try:
            if isinstance(answer, Redirect):
                self._redirect(answer.location, answer.status, answer.vary)
            elif isinstance(answer, NotServed):
                self._refuse(NotSigned(answer.reason), body, quiet=True)
            else:
                self._page(answer, started, body)
        except OSError:  # the client went away: nothing to answer
            self.close_connection = True
        except Exception as exc:  # a bug: one line for the client, the traceback in the log
            log.exception("internal error answering %s", path[:200])
            internal = Refusal(f"internal error {type(exc).__name__} in the proxy; see its log")
            internal.status = 500
            self.close_connection = True
            self._refuse(internal, body, quiet=True)

    def _page(self, page: Page, started: float, body: bool) -> None:
        targets = [candidate.target for candidate in page.candidates]
        try:
            info = self.server.verifier.target_info(targets, started)
            if info is None and page.otherwise:
                self._redirect(page.otherwise, 302, page.vary)
                return
            if info is None:
                raise self.server.verifier.not_signed(targets)
            verified = self.server.verifier.download(info)
        except Refusal as refusal:
            self._refuse(refusal, body)
            return
        content_type = next(c.content_type for c in page.candidates if c.target == info.path)
        etag = f'"{verified.digest}"'
        if etag in (t.strip() for t in self.headers.get("If-None-Match", "").split(",")):
            self.send_response(304)
            self._common_headers(etag, page.vary)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(verified.data)))
        self._common_headers(etag, page.vary)
        self.send_header("X-TUF-Target", verified.target)
        self.end_headers()
        if body:
            self.wfile.write(verified.data)

    def _common_headers(self, etag: str, vary: bool) -> None:
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "no-cache")
        if vary:
            self.send_header("Vary", "Accept")

    def _redirect(self, location: str, status: int, vary: bool) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        if vary:
            self.send_header("Vary", "Accept")
        self.end_headers()

    def _refuse(self, refusal: Refusal, body: bool, quiet: bool = False) -> None:
        reason = str(refusal)
        # an unknown project is an everyday answer (pip asks every index it is given)
        level = (
            logging.DEBUG if quiet else logging.INFO if refusal.status == 404 else logging.WARNING
        )
        what = f"{self.command} {getattr(self, 'path', '')[:200]}"
        log.log(level, "refused %s: %d %s", what, refusal.status, reason)
        payload = (reason + "\n").encode("ascii")
        self.send_response(refusal.status, reason)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if refusal.retry_after is not None:
            self.send_header("Retry-After", str(int(refusal.retry_after)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a bad request line, an unknown method) on one line too."""
        reason = one_line(message or self.responses.get(code, ("error",))[0])
        refusal = Refusal(reason)
        refusal.status = code
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._refuse(refusal, body=self.command != "HEAD", quiet=True)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # 16+ pip/uv processes connect at once

    def __init__(self, address: tuple[str, int], verifier: Verifier) -> None:
        self.verifier = verifier
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ProxyHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def running(verifier: Verifier, host: str = "127.0.0.1", port: int = 0) -> Iterator[ProxyServer]:
    """Serve from a background thread (tests, the benchmark); yields the server (`.url`)."""
    server = ProxyServer((host, port), verifier)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
