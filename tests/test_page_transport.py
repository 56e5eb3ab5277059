"""The page fetch's own transport (libcurl): what requests did for it, it still does.

Proxies from ``*_PROXY`` (with their credentials) unless ``NO_PROXY`` says otherwise, the
CA bundle from ``REQUESTS_CA_BUNDLE``, ``.netrc`` credentials, gzip, keep-alive, no
redirects followed; each against a stand-in on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import gzip
import select
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pypi_index_mirror.http.environment import USER_AGENT
from pypi_index_mirror.ops import settings
from pypi_index_mirror.upstream import client as pypi_client
from pypi_index_mirror.upstream import errors as upstream_errors
from pypi_index_mirror.upstream.transport import PageAnswer
from tests.fake_pypi import FakePyPI, make_self_signed_cert
from tests.mirror_helpers import Mirror, assert_mirror_matches_upstream, upstream_listing

PAGE = (
    b'<!DOCTYPE html><html><head><meta name="pypi:repository-version" content="1.1">'
    b'</head><body><a href="x-1.0.tar.gz">x-1.0.tar.gz</a></body></html>\n<!--SERIAL 7-->'
)


@dataclass
class Seen:
    """What a capturing server saw: each request line's target and headers (lower-cased names)."""

    targets: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)


@pytest.fixture
def capture() -> Iterator[tuple[str, Seen]]:
    """A loopback server answering every GET with one simple page (gzipped if asked)."""
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.targets.append(self.path)
            seen.headers.append({name.lower(): value for name, value in self.headers.items()})
            seen.connections.add(self.client_address[1])
            zipped = "gzip" in self.headers.get("Accept-Encoding", "")
            body = gzip.compress(PAGE) if zipped else PAGE
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("X-PyPI-Last-Serial", "7")
            if zipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # poll_interval: how long shutdown() waits for the loop (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def client(url: str) -> pypi_client.PypiClient:
    return pypi_client.PypiClient(url, settings.Config(pypi_url=url, retries=0))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_pages_are_fetched_over_kept_alive_connections_gzipped(capture) -> None:
    url, seen = capture
    pypi = client(url)
    try:
        for name in ("a", "b", "c"):
            page = pypi.fetch_page(name)
            assert page.body == PAGE and page.serial == 7
    finally:
        pypi.close()
    assert seen.targets == ["/simple/a/", "/simple/b/", "/simple/c/"]
    assert len(seen.connections) == 1, "a connection per page: keep-alive lost"
    headers = seen.headers[0]
    assert "gzip" in headers["accept-encoding"]
    assert headers["user-agent"] == USER_AGENT
    assert headers["accept"] == pypi_client.HTML_ACCEPT
    assert "authorization" not in headers


def test_netrc_credentials_are_sent(capture, monkeypatch, tmp_path: Path) -> None:
    url, seen = capture
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login mirror password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    pypi = client(url)
    try:
        pypi.fetch_page("a")
    finally:
        pypi.close()
    assert seen.headers[0]["authorization"] == basic("mirror", "s3cret")


def test_a_proxy_from_the_environment_gets_the_request_and_its_credentials(
    capture, monkeypatch
) -> None:
    proxy, seen = capture
    monkeypatch.setenv("HTTP_PROXY", proxy.replace("http://", "http://me:pw@"))
    pypi = client("http://pypi.invalid")  # only the proxy is ever connected to
    try:
        assert pypi.fetch_page("a").body == PAGE
    finally:
        pypi.close()
    assert seen.targets == ["http://pypi.invalid/simple/a/"]
    assert seen.headers[0]["proxy-authorization"] == basic("me", "pw")


def test_no_proxy_bypasses_the_proxy(pypi: FakePyPI, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    mirror = client(pypi.url)
    try:
        assert mirror.fetch_page("numpy").body == pypi.page("numpy")
    finally:
        mirror.close()


def test_the_ca_bundle_from_the_environment_is_trusted_and_only_it(
    tmp_path: Path, monkeypatch
) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    with FakePyPI(certfile=cert, keyfile=key) as fake:
        fake.create_project("tls")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        mirror = client(fake.url)
        try:
            assert mirror.fetch_page("tls").body == fake.page("tls")
        finally:
            mirror.close()
        monkeypatch.delenv("REQUESTS_CA_BUNDLE")
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        mirror = client(fake.url)  # requests' default bundle does not know the stand-in
        try:
            with pytest.raises(
                upstream_errors.Transient, match=r"(?i)connection failed.*certificate"
            ):
                mirror.fetch_page("tls")
        finally:
            mirror.close()


def test_a_redirect_is_not_followed(pypi: FakePyPI) -> None:
    mirror = client(pypi.url)
    try:
        with pytest.raises(upstream_errors.UpstreamError, match="unexpected HTTP 301"):
            mirror.fetch_page("Django")  # warehouse redirects a non-normalized name
    finally:
        mirror.close()


@contextlib.contextmanager
def answering(do_get: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A loopback HTTP/1.1 server whose every GET `do_get` answers; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            do_get(self)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # poll_interval: how long shutdown() waits for the loop (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def page_headers(handler: BaseHTTPRequestHandler, **extra: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("X-PyPI-Last-Serial", "7")
    for name, value in extra.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()


def test_the_size_cap_counts_decoded_bytes() -> None:
    """A small gzip body that inflates past --max-page-bytes is refused, not inflated whole."""
    bomb = gzip.compress(b"<!DOCTYPE html>" + b" " * 5_000_000)
    assert len(bomb) < 10_000

    def do_get(handler: BaseHTTPRequestHandler) -> None:
        page_headers(handler, Content_Encoding="gzip", Content_Length=str(len(bomb)))
        handler.wfile.write(bomb)

    assert_refused_over_the_cap(do_get)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_page_is_refused_however_it_is_sent(declared: bool) -> None:
    body = PAGE + b" " * 200_000

    def do_get(handler: BaseHTTPRequestHandler) -> None:
        if declared:
            page_headers(handler, Content_Length=str(len(body)))
            handler.wfile.write(body)
            return
        page_headers(handler, Transfer_Encoding="chunked")
        for start in range(0, len(body), 16_384):
            piece = body[start : start + 16_384]
            handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    # refused on its Content-Length before a byte is read, the operator told its size
    assert_refused_over_the_cap(do_get, str(len(body)) if declared else "more")


def assert_refused_over_the_cap(
    do_get: Callable[[BaseHTTPRequestHandler], None], size: str = "more"
) -> None:
    """A page `do_get` sends is refused as `size` bytes over a --max-page-bytes of 100,000."""
    words = f"{size} bytes, over the 100000-byte limit"
    with answering(do_get) as url:
        pypi = pypi_client.PypiClient(
            url, settings.Config(pypi_url=url, retries=0, max_page_bytes=100_000)
        )
        try:
            with pytest.raises(upstream_errors.NotASimplePage, match=words):
                pypi.fetch_page("a")
        finally:
            pypi.close()


def test_https_goes_through_a_connect_proxy_tunnel(tmp_path: Path, monkeypatch) -> None:
    """An https index behind a proxy: the page comes through the CONNECT tunnel, and the
    proxy's own answer to CONNECT (its headers) is not taken for the page's."""
    cert, key = make_self_signed_cert(tmp_path)
    tunnels: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_CONNECT(self) -> None:
            tunnels.append(self.path)
            host, port = self.path.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.send_response(200, "Connection established")
            self.send_header("X-PyPI-Last-Serial", "999")  # headers the page must not take
            self.send_header("Retry-After", "5")
            self.end_headers()
            relay(self.connection, upstream)

    with FakePyPI(certfile=cert, keyfile=key) as fake:
        fake.create_project("tls")
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
        threading.Thread(target=proxy.serve_forever, args=(0.01,), daemon=True).start()
        try:
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
            mirror = client(fake.url)
            try:
                page = mirror.fetch_page("tls")
                answer = mirror.get_page("tls", json_form=False)
            finally:
                mirror.close()
        finally:
            proxy.shutdown()
            proxy.server_close()
        assert page.body == fake.page("tls")
        assert page.serial == fake.project_serial("tls") != 999
        assert isinstance(answer, PageAnswer)
        assert answer.headers.get("Retry-After") is None, "the tunnel's headers were read"
        assert tunnels == [fake.url.removeprefix("https://")]


def relay(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways between two sockets until either side closes."""
    sockets = [one, other]
    with other:
        while True:
            readable, _, _ = select.select(sockets, [], [], 10)
            if not readable:
                return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (other if source is one else one).sendall(data)


def test_an_interim_answer_s_headers_are_not_the_page_s() -> None:
    """A 103 Early Hints before the page (a CDN may send one) has headers of its own."""

    def do_get(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"HTTP/1.1 103 Early Hints\r\nRetry-After: 5\r\nLink: </x>\r\n\r\n")
        page_headers(handler, Content_Length=str(len(PAGE)))
        handler.wfile.write(PAGE)

    with answering(do_get) as url:
        pypi = client(url)
        try:
            answer = pypi.get_page("a", json_form=False)
            assert pypi.fetch_page("a").body == PAGE
        finally:
            pypi.close()
    assert isinstance(answer, PageAnswer) and answer.status == 200 and answer.body == PAGE
    assert answer.headers.get("retry-after") is None
    assert answer.headers.get("x-pypi-last-serial") == "7"


def test_libcurl_applies_no_no_proxy_rules_of_its_own(capture, monkeypatch) -> None:
    """The proxy requests' rules chose is used even where libcurl's own NO_PROXY would skip it.

    One set of rules for both transports: ``NO_PROXY=*`` would make libcurl go direct, but
    the proxy was picked by `HttpEnvironment` before the variable was set, as a caller may.
    """
    proxy, seen = capture
    monkeypatch.setenv("HTTP_PROXY", proxy)
    pypi = client("http://pypi.invalid")
    try:
        environment = pypi.environment  # read now: the proxy is chosen
        monkeypatch.setenv("NO_PROXY", "*")
        assert environment.proxy_for("http://pypi.invalid") == proxy
        assert pypi.fetch_page("a").body == PAGE
    finally:
        pypi.close()
    assert seen.targets == ["http://pypi.invalid/simple/a/"]


def test_a_first_sync_and_an_update_over_https(tmp_path: Path, monkeypatch) -> None:
    """As against pypi.org: TLS all the way, XML-RPC over requests beside the pages' libcurl
    connections in the fetch engine's loop, for a first sync and for an update."""
    cert, key = make_self_signed_cert(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # for this test's own checks too
    with FakePyPI(certfile=cert, keyfile=key) as fake:
        fake.populate(60, seed=3)
        mirror = Mirror(tmp_path / "mirror", tmp_path / "mirror" / "state.json", fake.url)
        first = mirror.cli("-v")
        assert first.returncode == 0, first.stderr
        assert_mirror_matches_upstream(mirror)
        fake.add_release(next(iter(upstream_listing(fake.url))), "99.0")
        update = mirror.cli()
        assert update.returncode == 0, update.stderr
        assert_mirror_matches_upstream(mirror)


def test_an_idle_connection_keeps_no_page_in_memory() -> None:
    """A handle waiting for its next request must not hold the last page's bytes: ten idle
    connections after the largest pages would otherwise keep tens of MB alive."""
    big = PAGE + b" " * 4_000_000

    def do_get(handler: BaseHTTPRequestHandler) -> None:
        page_headers(handler, Content_Length=str(len(big)))
        handler.wfile.write(big)

    with answering(do_get) as url:
        pypi = client(url)
        try:
            pypi.fetch_page("warm-up")  # the handle, the connection and lxml's parser made
            tracemalloc.start()
            try:
                assert pypi.fetch_page("a").body == big
                gc.collect()
                held, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        finally:
            pypi.close()
    assert held < 1_000_000, f"{held} bytes still held after the page was dropped"
