"""One HTTP environment, read once, honoured alike by every client of a run.

The proxy rules are held to requests' own verdicts (``get_environ_proxies``), then each
client is pointed through one `HttpEnvironment` at a loopback forward proxy or, where
``NO_PROXY`` says so, straight at the host: project pages (libcurl), XML-RPC and the
JSON root (requests), RSTUF (requests) and the audit's TUF metadata (urllib3).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from pypi_index_mirror.audit import metadata as tuf_metadata
from pypi_index_mirror.http.environment import (
    USER_AGENT,
    HttpEnvironment,
    read_environment,
)
from pypi_index_mirror.ops import settings
from pypi_index_mirror.rstuf.client import RstufClient
from pypi_index_mirror.upstream import client as pypi_client
from pypi_index_mirror.upstream import errors as upstream_errors
from tests.fake_pypi import make_self_signed_cert
from tests.mirror_helpers import REPO

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No proxy variable, no CA bundle, no .netrc: each test sets what it means."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return monkeypatch


# --- the rules, as requests applies them --------------------------------------------------

CASES = [
    ({"HTTP_PROXY": "http://p:1"}, "http://pypi.org/simple/"),
    ({"HTTP_PROXY": "http://p:1"}, "https://pypi.org/simple/"),
    ({"HTTPS_PROXY": "http://p:1"}, "https://pypi.org/simple/"),
    ({"ALL_PROXY": "http://p:1"}, "https://pypi.org/simple/"),
    ({"ALL_PROXY": "http://a:1", "HTTPS_PROXY": "http://s:1"}, "https://pypi.org/"),
    ({"HTTP_PROXY": "http://upper:1", "http_proxy": "http://lower:1"}, "http://pypi.org/"),
    ({"HTTP_PROXY": "p:3128"}, "http://pypi.org/"),  # no scheme: http
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "pypi.org"}, "http://pypi.org/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "pypi.org"}, "http://files.pypi.org/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": ".org"}, "http://pypi.org/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "python.org"}, "http://pypi.org/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "PyPI.org"}, "http://pypi.org/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "*"}, "http://pypi.org/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": " a.org , pypi.org "}, "http://pypi.org/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "pypi.org:8080"}, "http://pypi.org:8080/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "pypi.org:8080"}, "http://pypi.org:9090/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, "http://10.1.2.3:8080/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, "http://11.0.0.1/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1"}, "http://127.0.0.1:8/"),
    ({"HTTP_PROXY": "http://p:1", "no_proxy": "localhost"}, "http://localhost:8/"),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "::1"}, "http://[::1]:8/"),
    ({"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}, "http://pypi.org/"),  # httpoxy
]


@pytest.mark.parametrize(("variables", "url"), CASES)
def test_the_proxy_chosen_is_the_one_requests_would_choose(
    bare_environment: pytest.MonkeyPatch, variables: dict[str, str], url: str
) -> None:
    for name, value in variables.items():
        bare_environment.setenv(name, value)
    expected = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    if expected:
        expected = requests.utils.prepend_scheme_if_needed(expected, "http")
    assert read_environment().proxy_for(url) == expected


def test_the_environment_is_read_once(bare_environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What a client was handed stays what it was: the variables are not read again."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pypi.example login mirror password s3cret\n")
    bare_environment.setenv("NETRC", str(netrc))
    bare_environment.setenv("HTTPS_PROXY", "http://me:pr0xy-pw@proxy.example:3128")
    bare_environment.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    environment = read_environment()
    for name in ("NETRC", "HTTPS_PROXY", "REQUESTS_CA_BUNDLE"):
        bare_environment.delenv(name)
    netrc.unlink()
    assert environment.proxy_for("https://pypi.example/") == "http://me:pr0xy-pw@proxy.example:3128"
    assert "s3cret" not in repr(environment) and "pr0xy-pw" not in repr(environment)
    assert environment.ca_bundle == "/etc/ssl/bundle.pem"
    assert environment.netrc_auth("https://pypi.example/simple/") == ("mirror", "s3cret")
    assert environment.netrc_auth("https://other.example/") is None
    assert read_environment().ca_bundle == requests.utils.DEFAULT_CA_BUNDLE_PATH  # certifi's


def test_a_netrc_file_requests_would_ignore_is_ignored(
    bare_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pypi.example login\n")  # no password: malformed
    bare_environment.setenv("NETRC", str(netrc))
    assert requests.utils.get_netrc_auth("https://pypi.example/") is None
    assert read_environment().netrc_auth("https://pypi.example/") is None


# --- every client through one environment -------------------------------------------------

PAGE = (
    b'<!DOCTYPE html><html><head><meta name="pypi:repository-version" content="1.1">'
    b'</head><body><a href="a-1.0.tar.gz">a-1.0.tar.gz</a></body></html>'
)
XMLRPC_ANSWER = (
    b"<?xml version='1.0'?><methodResponse><params><param><value><int>42</int></value>"
    b"</param></params></methodResponse>"
)
JSON_ROOT = json.dumps(
    {
        "meta": {"api-version": "1.0", "_last-serial": 42},
        "projects": [{"name": "a", "_last-serial": 42}],
    }
).encode()
BOOTSTRAP = json.dumps({"data": {"bootstrap": True}}).encode()
TIMESTAMP = b'{"signed": {"_type": "timestamp"}}'


@dataclass
class Seen:
    """What a loopback server saw: each request's method, target and headers."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        return [target for _, target, _ in self.requests]


@contextlib.contextmanager
def answering_everything(tls: tuple[Path, Path] | None = None) -> Iterator[tuple[str, Seen]]:
    """A loopback HTTP/1.1 server that answers each client's one request, whether it is
    asked as the host itself or as a forward proxy (a target in absolute form); https with
    `tls`'s (certificate, key)."""
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            seen.requests.append((self.command, self.path, headers))
            path = urlsplit(self.path).path
            extra = {"X-PyPI-Last-Serial": "42"}
            if path == "/pypi":
                body, kind = XMLRPC_ANSWER, "text/xml"
            elif path == "/simple/":
                body, kind = JSON_ROOT, pypi_client.JSON_TYPE
            elif path.startswith("/simple/"):
                body, kind = PAGE, "text/html"
            elif path == "/api/v1/bootstrap/":
                body, kind = BOOTSTRAP, "application/json"
            else:
                body, kind = TIMESTAMP, "application/json"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    # poll_interval: how long shutdown() waits for the loop (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def fetch_page(base: str, environment: HttpEnvironment) -> str:
    pypi = pypi_client.PypiClient(base, CONFIG, environment=environment)
    try:
        assert pypi.fetch_page("a").body == PAGE
    finally:
        pypi.close()
    return "/simple/a/"


def call_xmlrpc(base: str, environment: HttpEnvironment) -> str:
    pypi = pypi_client.PypiClient(base, CONFIG, environment=environment)
    try:
        assert pypi.changelog_last_serial() == 42
    finally:
        pypi.close()
    return "/pypi"


def read_json_root(base: str, environment: HttpEnvironment) -> str:
    pypi = pypi_client.PypiClient(base, CONFIG, environment=environment)
    listed: list[tuple[object, object]] = []
    try:
        assert pypi.list_projects_json(lambda *pair: listed.append(pair)) == 42
    finally:
        pypi.close()
    assert listed == [("a", 42)]
    return "/simple/"


def ask_rstuf(base: str, environment: HttpEnvironment) -> str:
    with RstufClient(base, token="t0ken", retries=0, environment=environment) as rstuf:
        assert rstuf.bootstrapped() is True
    return "/api/v1/bootstrap/"


def fetch_tuf_metadata(base: str, environment: HttpEnvironment) -> str:
    config = tuf_metadata.AuditConfig(  # no retries, as CONFIG gives the other clients
        metadata_url=base + "/metadata/", trusted_root=Path("-"), retries=CONFIG.retries
    )
    fetcher = tuf_metadata.MetadataFetcher(config, environment=environment)
    try:
        assert fetcher.download_bytes(base + "/metadata/timestamp.json", 1000) == TIMESTAMP
    finally:
        fetcher.close()
    return "/metadata/timestamp.json"


CONFIG = settings.Config(pypi_url="http://127.0.0.1:9", retries=0)
CLIENTS: dict[str, Callable[[str, HttpEnvironment], str]] = {
    "pages-libcurl": fetch_page,
    "xmlrpc-requests": call_xmlrpc,
    "json-root-requests": read_json_root,
    "rstuf-requests": ask_rstuf,
    "tuf-metadata-urllib3": fetch_tuf_metadata,
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
def test_every_client_goes_through_the_environment_s_proxy(
    bare_environment: pytest.MonkeyPatch, client: Callable[[str, HttpEnvironment], str]
) -> None:
    """The proxy, its credentials and the User-Agent: the same for all, from one environment."""
    with answering_everything() as (proxy, seen):
        environment = read_environment(
            CONFIG, {"HTTP_PROXY": proxy.replace("http://", "http://me:p%40ss@")}
        )
        path = client("http://index.invalid", environment)  # only the proxy is connected to
    [(_, target, headers)] = seen.requests
    assert target == "http://index.invalid" + path
    assert headers["proxy-authorization"] == basic("me", "p@ss")
    assert headers["user-agent"] == USER_AGENT


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
def test_no_proxy_sends_every_client_straight_to_the_host(
    bare_environment: pytest.MonkeyPatch, client: Callable[[str, HttpEnvironment], str]
) -> None:
    with answering_everything() as (proxy, through_proxy), answering_everything() as (host, seen):
        environment = read_environment(
            CONFIG, {"HTTP_PROXY": proxy, "ALL_PROXY": proxy, "NO_PROXY": "example.org,127.0.0.1"}
        )
        path = client(host, environment)
    assert through_proxy.requests == []
    assert seen.targets == [path]
    assert "proxy-authorization" not in seen.requests[0][2]


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
def test_every_client_trusts_the_environment_s_ca_bundle_and_only_it(
    bare_environment: pytest.MonkeyPatch,
    client: Callable[[str, HttpEnvironment], str],
    tmp_path: Path,
) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    with answering_everything(tls=(cert, key)) as (host, seen):
        client(host, read_environment(CONFIG, {"REQUESTS_CA_BUNDLE": str(cert)}))
        assert len(seen.requests) == 1
        with pytest.raises(Exception, match=r"(?i)certificate"):  # certifi's does not know it
            client(host, read_environment(CONFIG, {}))
        assert len(seen.requests) == 1


def test_rstuf_s_token_is_not_replaced_by_netrc_credentials(tmp_path: Path) -> None:
    """requests would send .netrc's Basic credentials instead of the Bearer token; without a
    token, they are sent (a front that wants them)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login mirror password s3cret\n")
    environment = read_environment(CONFIG, {"NETRC": str(netrc)})
    with answering_everything() as (host, seen):
        with RstufClient(host, token="t0ken", retries=0, environment=environment) as rstuf:
            rstuf.bootstrapped()
        with RstufClient(host, retries=0, environment=environment) as rstuf:
            rstuf.bootstrapped()
    assert [headers["authorization"] for _, _, headers in seen.requests] == [
        "Bearer t0ken",
        basic("mirror", "s3cret"),
    ]


# --- the test suite's own guard (tests/conftest.py) reaches libcurl and child processes -------

NOWHERE = "http://192.0.2.1"  # TEST-NET-1 (RFC 5737): routed nowhere, should the guard fail


def refused_by_the_guard(message: str) -> bool:
    """Whether `message` (libcurl's or requests' words) says the guard's proxy refused."""
    port = os.environ["HTTP_PROXY"].rpartition(":")[2]
    named = f"127.0.0.1:{port}" in message or f"port={port}" in message
    return named and "proxy" in message.lower()


def test_the_guard_refuses_python_sockets_beyond_loopback_in_this_process() -> None:
    """In the process that runs the test: under pytest-xdist, a worker, not the parent.
    (Without the guard, the connection fails otherwise or times out: no RuntimeError.)"""
    for connect in (socket.socket.connect, socket.socket.connect_ex):
        with socket.socket() as sock, pytest.raises(RuntimeError, match="only loopback"):
            sock.settimeout(2)
            connect(sock, ("192.0.2.1", 80))


def test_the_guard_sends_libcurl_in_this_process_to_its_dead_proxy() -> None:
    """Python's socket guard cannot see libcurl's sockets; the proxy variables can."""
    pypi = pypi_client.PypiClient(NOWHERE, settings.Config(pypi_url=NOWHERE, retries=0))
    try:
        with pytest.raises(upstream_errors.Transient) as refused:
            pypi.fetch_page("numpy")
    finally:
        pypi.close()
    assert refused_by_the_guard(str(refused.value))


def test_the_guard_reaches_libcurl_in_a_child_process() -> None:
    """libcurl as any child would use it, reading the variables itself."""
    program = (
        "import pycurl, sys\n"
        "handle = pycurl.Curl()\n"
        f"handle.setopt(pycurl.URL, {NOWHERE + '/simple/'!r})\n"
        "handle.setopt(pycurl.CONNECTTIMEOUT, 30)\n"
        "try:\n"
        "    handle.perform()\n"
        "except pycurl.error as exc:\n"
        "    sys.exit(exc.args[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert refused_by_the_guard(result.stderr), result.stderr


def test_the_guard_reaches_the_command_line_in_a_subprocess(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "pypi_mirror.py"),
            "--mirror-dir",
            str(tmp_path / "m"),
            "--pypi-url",
            NOWHERE,
            "--retries",
            "0",
            "--no-rstuf",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert refused_by_the_guard(result.stderr), result.stderr
