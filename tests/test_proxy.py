"""The TUF-verifying index proxy (pypi_index_mirror/proxy/, ``tuf_proxy.py``).

The world: a mirror synced from the stand-in PyPI with both page forms
(``--simple-format all``), served by a real nginx with serving/nginx.conf;
TUF metadata signed the way RSTUF signs it (tests/tuf_repo.py: consistent
snapshots, succinct hash bins) over exactly the pages on disk at signing time,
served over loopback; the proxy in front of both. pip and uv install real
wheels through it; every refusal the proxy makes is provoked and read back as
pip, uv or an HTTP client sees it.

The proxy's clock (`VerifierConfig.monotonic`) is a `Clock` the tests move,
so "the metadata is due" never depends on the wall clock.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from pypi_simple import ACCEPT_JSON_ONLY, PyPISimple

import tuf_proxy
from pypi_index_mirror.mirror.store import DEFAULT_MIRROR_DIR, digest_file, iter_targets
from pypi_index_mirror.proxy import cli, routing
from pypi_index_mirror.proxy.server import running
from pypi_index_mirror.proxy.verifier import Verifier, VerifierConfig
from tests import fake_pypi, installers
from tests.fake_pypi import MIME_V1_JSON, FakePyPI
from tests.installers import installed_version
from tests.mirror_helpers import REPO, Mirror
from tests.test_serving import (
    PIP_ACCEPT,
    UV_ACCEPT,
    Nginx,
    free_port,
    start_nginx,
    wait_for_port,
)
from tests.tuf_repo import TufRepository, serve_directory

HTML_WHEEL, JSON_WHEEL = "Tiny_Wheel", "json.wheel"  # normalized: tiny-wheel, json-wheel
OTHERS = ("Django", "numpy", "zope.interface")
# tiny-wheel's JSON page is left unsigned: the proxy answers it in HTML, the other form
UNSIGNED_FORM = "simple/tiny-wheel/index.v1_json"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    tmp: Path
    pypi: FakePyPI
    mirror: Mirror
    repo: TufRepository
    nginx: Nginx
    metadata_url: str
    metadata_requests: list[str]
    clock: Clock = field(default_factory=Clock)

    def sign(self, leave_out: tuple[str, ...] = (UNSIGNED_FORM,)) -> None:
        """Publish metadata signing every page now on the mirror but `leave_out`."""
        view = {}
        for target in iter_targets(self.mirror.layout):
            if target in leave_out:
                continue
            digest = digest_file(self.mirror.layout.path_of_target(target))
            view[target] = {"length": digest.length, "hashes": {digest.algorithm: digest.hexdigest}}
        self.repo.publish(view)

    def config(self, **changes: Any) -> VerifierConfig:
        config = VerifierConfig(
            metadata_url=self.metadata_url,
            mirror_url=self.nginx.url,
            trusted_root=self.tmp / "1.root.json",
            cache_dir=self.tmp / "proxy-cache",
            monotonic=self.clock,
            retries=0,
        )
        return replace(config, **changes)

    def timestamp_requests(self) -> int:
        return self.metadata_requests.count("/timestamp.json")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FakePyPI() as pypi:
        for name in OTHERS:
            pypi.add_release(name, "1.0", files=2)
        for name in (HTML_WHEEL, JSON_WHEEL):
            pypi.add_wheel(name, "1.0")
            pypi.add_wheel(name, "1.1")
        mirror = Mirror(tmp_path / DEFAULT_MIRROR_DIR, tmp_path / "state.json", pypi.url)
        assert mirror.run("--simple-format", "all", "-q") == 0
        repo = TufRepository(tmp_path / "metadata")
        (tmp_path / "1.root.json").write_bytes(repo.root_bytes)  # obtained out of band
        nginx = start_nginx(mirror.layout.served_dir, tmp_path / "nginx")
        requested: list[str] = []
        try:
            with serve_directory(repo.directory, requested=requested) as metadata_url:
                world = World(tmp_path, pypi, mirror, repo, nginx, metadata_url, requested)
                world.sign()
                yield world
        finally:
            nginx.stop()


@pytest.fixture
def proxy(world: World) -> Iterator[str]:
    """The proxy in this process, on a free loopback port; yields its base URL."""
    verifier = Verifier(world.config())
    try:
        with running(verifier) as server:
            yield server.url
    finally:
        verifier.close()


def get(url: str, accept: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    kwargs.setdefault("allow_redirects", False)
    return requests.get(url, headers=headers, timeout=30, **kwargs)


def served(world: World, target: str) -> bytes:
    return world.mirror.layout.path_of_target(target).read_bytes()


def flip_byte(path: Path, offset: int = 40) -> None:
    """Change one byte in place: the page and its hard-linked hash-prefixed copy both."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x20]))


def pip_install(
    world: World, index: str, target: Path, *names: str, verbose: bool = False, retries: bool = True
):
    url = f"{index}/simple/"
    return installers.pip_install(
        url, target, *names, tmp=world.tmp, verbose=verbose, retries=retries
    )


def pip_retries(status: int) -> bool:
    """Whether the pip the tests run retries `status` (then it reports no reason phrase)."""
    probe = subprocess.run(
        [
            sys.executable, "-c",
            "from pip._internal.network.session import PipSession;"
            "print(PipSession(retries=1).adapters['http://'].max_retries.status_forcelist)",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return str(status) in probe.stdout


def uv_install(world: World, index: str, target: Path, *names: str, retries: bool = True):
    return installers.uv_install(f"{index}/simple/", target, *names, tmp=world.tmp, retries=retries)


def copies_fetched(world: World, since: int) -> list[str]:
    """The hash-prefixed copies the proxy fetched from nginx, from log line `since` on."""
    found = []
    for line in world.nginx.access_log()[since:]:
        method, uri, status, *_ = line.split(" ")
        if method == "GET" and status == "200":
            found.append(uri)
    return found


# --- routing (pure) ---------------------------------------------------------------------

ACCEPTS = (
    None, "", "text/html", "*/*", PIP_ACCEPT, UV_ACCEPT, ACCEPT_JSON_ONLY,
    f"{MIME_V1_JSON};q=0, text/html;q=0.1", "text/html, application/vnd.pypi.simple.v1+json",
    "application/vnd.pypi.simple.v1+html", "application/*", "image/png", "text/*;q=0.5, */*;q=0.9",
    f"{MIME_V1_JSON};q=bogus", f"{MIME_V1_JSON};q=0.5, application/*;q=0.9",
)  # fmt: skip


@pytest.mark.parametrize("accept", ACCEPTS)
def test_negotiation_chooses_as_the_stand_in_warehouse_does(accept: str | None) -> None:
    assert routing.negotiate(accept) == fake_pypi.negotiate(accept)


def test_candidates_are_the_clients_order_each_form_once() -> None:
    assert routing.project_candidates("numpy", PIP_ACCEPT) == (
        routing.Candidate("simple/numpy/index.v1_json", MIME_V1_JSON),
        routing.Candidate("simple/numpy/index.html", routing.MIME_V1_HTML),
    )
    assert routing.project_candidates("numpy", None) == (
        routing.Candidate("simple/numpy/index.html", "text/html; charset=utf-8"),
    )
    assert routing.project_candidates("numpy", ACCEPT_JSON_ONLY) == (
        routing.Candidate("simple/numpy/index.v1_json", MIME_V1_JSON),
    )


def test_routes() -> None:
    assert routing.route("/simple/Foo_Bar/", None) == routing.Redirect("/simple/foo-bar/")
    assert routing.route("/simple/numpy", None) == routing.Redirect("/simple/numpy/")
    assert routing.route("/simple", None) == routing.Redirect("/simple/")
    assert routing.route("/simple/", "text/html") == routing.Redirect("/", 302, vary=True)
    json_root = routing.route("/simple/", PIP_ACCEPT)
    assert isinstance(json_root, routing.Page) and json_root.otherwise == "/"
    for path in ("/simple/a/b/", "/simple/../", "/simple/-x-/", "/packages/x.whl", "/state.json"):
        assert isinstance(routing.route(path, None), routing.NotServed), path


# --- installing through the proxy --------------------------------------------------------


def test_pip_and_uv_install_through_the_cli_proxy_in_both_forms(world: World) -> None:
    """The README's commands: ``tuf_proxy.py`` as a process, pip and uv pointed at it."""
    port = free_port()
    command = [
        sys.executable, str(REPO / "tuf_proxy.py"), "--mirror-url", world.nginx.url,
        "--tuf-metadata-url", world.metadata_url, "--tuf-root", str(world.tmp / "1.root.json"),
        "--cache-dir", str(world.tmp / "cli-cache"), "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_port(port, process), process.stderr.read() if process.stderr else ""
        index = f"http://127.0.0.1:{port}"
        since = len(world.nginx.access_log())
        for install in (pip_install, uv_install):  # uv gets the pages pip verified, from memory
            target = world.tmp / f"{install.__name__}-target"
            result = install(world, index, target, "tiny-wheel", "json-wheel")
            assert result.returncode == 0, result.stderr
            assert installed_version(target, "tiny_wheel") == "1.1"
            assert installed_version(target, "json_wheel") == "1.1"
        fetched = copies_fetched(world, since)
        # pages by their hash-prefixed names only: JSON where signed, else HTML
        forms = sorted((uri.split("/")[2], uri.split("/")[3].split(".", 1)[1]) for uri in fetched)
        assert forms == [("json-wheel", "index.v1_json"), ("tiny-wheel", "index.html")], fetched
        assert all(os.path.basename(uri)[64:65] == "." for uri in fetched), fetched
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr


def test_pages_as_served_by_the_mirror_with_negotiation(world: World, proxy: str) -> None:
    html = get(f"{proxy}/simple/numpy/")
    assert html.status_code == 200 and html.content == served(world, "simple/numpy/index.html")
    assert html.headers["Content-Type"] == "text/html; charset=utf-8"
    assert html.headers["Vary"] == "Accept"
    assert html.headers["X-TUF-Target"] == "simple/numpy/index.html"
    for accept in (PIP_ACCEPT, UV_ACCEPT, ACCEPT_JSON_ONLY):
        answer = get(f"{proxy}/simple/numpy/", accept)
        assert answer.status_code == 200, accept
        assert answer.headers["Content-Type"] == MIME_V1_JSON
        assert answer.content == served(world, "simple/numpy/index.v1_json")
    v1_html = get(f"{proxy}/simple/numpy/", routing.MIME_V1_HTML)
    assert v1_html.headers["Content-Type"] == routing.MIME_V1_HTML
    # the JSON form is not signed for tiny-wheel: a client that reads HTML too gets HTML
    fallback = get(f"{proxy}/simple/tiny-wheel/", PIP_ACCEPT)
    assert fallback.headers["Content-Type"] == routing.MIME_V1_HTML
    assert fallback.content == served(world, "simple/tiny-wheel/index.html")
    json_only = get(f"{proxy}/simple/tiny-wheel/", ACCEPT_JSON_ONLY)
    assert json_only.status_code == 404, "never a form the client does not accept"

    moved = get(f"{proxy}/simple/Tiny_Wheel/")
    assert (moved.status_code, moved.headers["Location"]) == (301, "/simple/tiny-wheel/")
    assert get(f"{proxy}/simple/numpy").headers["Location"] == "/simple/numpy/"
    head = requests.head(f"{proxy}/simple/numpy/", timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(html.content)
    again = requests.get(
        f"{proxy}/simple/numpy/", headers={"If-None-Match": html.headers["ETag"]}, timeout=30
    )
    assert again.status_code == 304 and again.content == b""
    assert (
        html.headers["ETag"]
        == f'"{digest_file(world.mirror.layout.project_page("numpy")).hexdigest}"'
    )
    not_a_page = get(f"{proxy}/packages/x.whl")
    assert not_a_page.status_code == 404 and "not an index page" in not_a_page.text


def test_root_index_links_lead_to_verified_pages(world: World, proxy: str) -> None:
    """The root HTML links ``simple/<p>/`` relatively: reached from /simple/, they work."""
    root = get(f"{proxy}/simple/", allow_redirects=True)
    assert root.status_code == 200 and root.url == f"{proxy}/"
    assert root.content == served(world, "index.html")
    listed = world.mirror.root_projects()
    assert len(listed) == len(OTHERS) + 2
    for normalized in listed:
        link = urllib.parse.urljoin(root.url, f"simple/{normalized}/")
        assert link == f"{proxy}/simple/{normalized}/"
        page = get(link)
        assert page.status_code == 200 and page.content == served(
            world, f"simple/{normalized}/index.html"
        )
    with PyPISimple(endpoint=f"{proxy}/simple/") as client:
        assert sorted(client.get_index_page().projects) == sorted(listed.values())
    with PyPISimple(endpoint=f"{proxy}/simple/", accept=ACCEPT_JSON_ONLY) as client:
        assert sorted(client.get_index_page().projects) == sorted(listed.values())
        files = client.get_project_page("json-wheel").packages
    assert [p.filename for p in files][-1] == "json_wheel-1.1-py3-none-any.whl"


# --- refusals -----------------------------------------------------------------------------


def test_page_changed_on_the_mirror_is_refused_and_pip_says_why(
    world: World, proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    page = world.mirror.layout.project_page("tiny-wheel")
    copy = page.parent / f"{digest_file(page).hexdigest}.index.html"
    assert copy.samefile(page)
    flip_byte(page)  # a file's link or hash altered, under both names
    caplog.set_level(logging.WARNING)
    refused = get(f"{proxy}/simple/tiny-wheel/")
    assert refused.status_code == 502
    reason = refused.text.strip()
    assert "simple/tiny-wheel/index.html: the mirror's bytes" in reason
    assert "are not what TUF signs" in reason and "\n" not in reason
    assert refused.reason == reason
    assert refused.headers["Content-Type"].startswith("text/plain")
    assert any(reason in record.getMessage() for record in caplog.records)

    # no retries: pip and uv retry a 502 (with backoff, ~20 s in all) and then report the
    # same error as without them
    pip_target = world.tmp / "pip-target"
    result = pip_install(world, proxy, pip_target, "tiny-wheel", verbose=True, retries=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "No matching distribution found for tiny-wheel" in output
    if pip_retries(502):  # newer pip: retries a 502, then reports only the status
        assert "too many 502 error responses" in output
    else:  # the reason phrase, in pip's own words
        assert f"502 Server Error: {reason} for url: {proxy}/simple/tiny-wheel/" in output
    assert not (world.tmp / "pip-target" / "tiny_wheel").exists()
    uv = uv_install(world, proxy, world.tmp / "uv-target", "tiny-wheel", retries=False)
    assert uv.returncode != 0
    assert f"HTTP status server error (502 {reason})" in uv.stderr
    assert not (world.tmp / "uv-target" / "tiny_wheel").exists()
    # a page that grew beyond what TUF signs is refused the same way
    numpy = world.mirror.layout.project_page("numpy")
    with open(numpy.parent / f"{digest_file(numpy).hexdigest}.index.html", "ab") as handle:
        handle.write(b"<a href='https://evil.example/numpy-9.tar.gz'>numpy-9.tar.gz</a>\n")
    grown = get(f"{proxy}/simple/numpy/")
    assert grown.status_code == 502 and "not what TUF signs" in grown.text


def test_signed_page_missing_from_the_mirror_is_refused(world: World, proxy: str) -> None:
    page = world.mirror.layout.project_page("django")
    (page.parent / f"{digest_file(page).hexdigest}.index.html").unlink()
    refused = get(f"{proxy}/simple/django/")
    assert refused.status_code == 502
    assert "the mirror has no copy of the page TUF signs" in refused.text
    assert "HTTP 404" in refused.text


def test_unsigned_project_is_not_served(world: World, proxy: str) -> None:
    """A page dropped into the served tree (and its copy): nginx serves it, the proxy not."""
    evil_dir = world.mirror.layout.project_dir("evil")
    evil_dir.mkdir()
    evil = b"<html><body><a href='https://evil.example/evil-1.0.tar.gz'>evil</a></body></html>"
    (evil_dir / "index.html").write_bytes(evil)
    (evil_dir / f"{digest_file(evil_dir / 'index.html').hexdigest}.index.html").write_bytes(evil)
    assert get(f"{world.nginx.url}/simple/evil/").status_code == 200
    world.clock.advance(5)
    refused = get(f"{proxy}/simple/evil/")
    assert refused.status_code == 404
    assert "signs no simple/evil/index.html" in refused.text
    assert refused.reason == refused.text.strip()
    assert get(f"{proxy}/simple/never-heard-of/", PIP_ACCEPT).status_code == 404
    result = uv_install(world, proxy, world.tmp / "uv-target", "evil")
    assert result.returncode != 0
    assert not (world.tmp / "uv-target" / "evil").exists()


def test_expired_timestamp_is_refused(world: World, proxy: str) -> None:
    assert get(f"{proxy}/simple/numpy/").status_code == 200
    world.repo.expires_by_role["timestamp"] = datetime.now(UTC) - timedelta(minutes=1)
    world.sign()
    world.clock.advance(61)  # the verified timestamp is due
    refused = get(f"{proxy}/simple/numpy/")
    assert refused.status_code == 502
    assert "TUF metadata rejected: expired" in refused.text
    # the previous (unexpired) state is not served either
    assert get(f"{proxy}/simple/django/").status_code == 502
    del world.repo.expires_by_role["timestamp"]
    world.sign()
    world.clock.advance(5)  # past the retry interval of a failed refresh
    assert get(f"{proxy}/simple/numpy/").status_code == 200


def test_rolled_back_metadata_is_refused_also_after_a_restart(world: World) -> None:
    old_snapshot = world.repo.versions["snapshot"]
    world.pypi.add_wheel(JSON_WHEEL, "1.2")
    assert world.mirror.run("--simple-format", "all", "-q") == 0
    world.sign()
    verifier = Verifier(world.config())
    with running(verifier) as server:
        assert get(f"{server.url}/simple/numpy/").status_code == 200
        timestamp = (world.repo.directory / "timestamp.json").read_bytes()
        world.repo.sign_timestamp(old_snapshot)  # a newer timestamp naming an older snapshot
        world.clock.advance(61)
        refused = get(f"{server.url}/simple/numpy/")
        assert refused.status_code == 502
        assert "TUF metadata rejected: wrong version" in refused.text
        assert "snapshot" in refused.text
    verifier.close()
    # a restart over the same cache directory remembers what it verified
    (world.repo.directory / "timestamp.json").write_bytes(timestamp)
    world.sign()  # a fresh, correct timestamp...
    world.repo.sign_timestamp(old_snapshot)  # ...replaced by a rolled-back one
    restarted = Verifier(world.config())
    with running(restarted) as server:
        refused = get(f"{server.url}/simple/json-wheel/", PIP_ACCEPT)
        assert refused.status_code == 502 and "wrong version" in refused.text
    restarted.close()


def test_metadata_and_mirror_not_answering(world: World) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    no_metadata = Verifier(world.config(metadata_url=down, cache_dir=world.tmp / "c1"))
    with running(no_metadata) as server:
        refused = get(f"{server.url}/simple/numpy/")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert "TUF metadata unreachable" in refused.text and "refused" in refused.text
    no_metadata.close()
    no_mirror = Verifier(world.config(mirror_url=down, cache_dir=world.tmp / "c2"))
    with running(no_mirror) as server:
        refused = get(f"{server.url}/simple/numpy/")
        assert refused.status_code == 503
        assert refused.text.startswith(f"mirror {down}/simple/numpy/") and "refused" in refused.text
    no_mirror.close()


def test_verified_pages_are_kept_by_their_signed_hashes(world: World) -> None:
    """A page verified once is served from memory while the metadata signs the same bytes."""
    target = "simple/django/index.html"
    page = world.mirror.layout.project_page("django")
    copy = page.parent / f"{digest_file(page).hexdigest}.index.html"
    cached = Verifier(world.config())
    uncached = Verifier(world.config(page_cache_bytes=0, cache_dir=world.tmp / "c2"))
    with running(cached) as with_cache, running(uncached) as without:
        for server in (with_cache, without):
            assert get(f"{server.url}/simple/django/").content == served(world, target)
        copy.unlink()  # the mirror loses its copy
        assert get(f"{with_cache.url}/simple/django/").content == page.read_bytes()
        assert get(f"{without.url}/simple/django/").status_code == 502
        # the metadata signs other bytes: the cached page is not what it signs any more
        world.pypi.add_release("Django", "2.0", files=1)
        assert world.mirror.run("--simple-format", "all", "-q") == 0
        world.sign()
        world.clock.advance(61)
        fresh = get(f"{with_cache.url}/simple/django/")
        assert fresh.status_code == 200 and fresh.content == served(world, target)
    cached.close()
    uncached.close()


# --- the metadata moving on ---------------------------------------------------------------


def test_updated_page_served_new_once_signed_and_old_no_longer(world: World, proxy: str) -> None:
    target = "simple/json-wheel/index.v1_json"
    old = get(f"{proxy}/simple/json-wheel/", PIP_ACCEPT)
    assert old.content == served(world, target)
    world.pypi.add_wheel(JSON_WHEEL, "1.2")
    world.pypi.create_project("Brand_New")
    assert world.mirror.run("--simple-format", "all", "-q") == 0
    new_bytes = served(world, target)
    assert new_bytes != old.content
    # not signed yet: still the old signed page (its copy is kept for the mirror's grace)
    assert get(f"{proxy}/simple/json-wheel/", PIP_ACCEPT).content == old.content
    assert get(f"{proxy}/simple/brand-new/").status_code == 404
    world.sign()
    # a project not found makes one refresh (the state is older than a second)
    world.clock.advance(1.5)
    assert get(f"{proxy}/simple/brand-new/").content == served(world, "simple/brand-new/index.html")
    assert get(f"{proxy}/simple/json-wheel/", PIP_ACCEPT).content == new_bytes
    result = uv_install(world, proxy, world.tmp / "uv-new", "json-wheel")
    assert result.returncode == 0, result.stderr
    assert installed_version(world.tmp / "uv-new", "json_wheel") == "1.2"


def test_clients_keep_being_served_while_the_metadata_moves_on(world: World, proxy: str) -> None:
    """Eight clients ask while the mirror changes and new metadata is published five times:
    every answer is a page TUF signed at some point, none fails."""
    target = "simple/json-wheel/index.v1_json"
    signed = {served(world, target)}
    stop = threading.Event()
    answers: list[tuple[int, bytes]] = []

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.get(
                    f"{proxy}/simple/json-wheel/", headers={"Accept": PIP_ACCEPT}, timeout=30
                )
                answers.append((response.status_code, response.content))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for minor in range(2, 7):
            world.pypi.add_wheel(JSON_WHEEL, f"1.{minor}")
            assert world.mirror.run("--simple-format", "all", "-q") == 0
            world.sign()
            signed.add(served(world, target))
            world.clock.advance(61)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert answers and all(status == 200 for status, _ in answers)
    assert {body for _, body in answers} <= signed
    assert get(f"{proxy}/simple/json-wheel/", PIP_ACCEPT).content == served(world, target)


def test_one_refresh_serves_many_concurrent_clients(world: World) -> None:
    verifier = Verifier(world.config())
    names = ["numpy", "django", "zope-interface", "json-wheel", "tiny-wheel"] * 4
    with running(verifier) as server:

        def burst(paths: list[str]) -> list[int]:
            statuses: list[int] = [0] * len(paths)
            barrier = threading.Barrier(len(paths))

            def one(position: int) -> None:
                barrier.wait()
                statuses[position] = get(f"{server.url}{paths[position]}", PIP_ACCEPT).status_code

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return statuses

        assert burst([f"/simple/{name}/" for name in names]) == [200] * len(names)
        assert world.timestamp_requests() == 1 and verifier.refreshes == 1
        world.clock.advance(2)  # unknown names: one refresh between them, not one each
        assert burst([f"/simple/unknown-{i}/" for i in range(16)]) == [404] * 16
        assert world.timestamp_requests() == 2 and verifier.refreshes == 2
        assert burst([f"/simple/unknown-{i}/" for i in range(16)]) == [404] * 16
        assert verifier.refreshes == 2, "younger than a second: no refresh for a miss"
        world.clock.advance(61)  # due: the first request refreshes, the others wait for it
        assert burst([f"/simple/{name}/" for name in names]) == [200] * len(names)
        assert world.timestamp_requests() == 3 and verifier.refreshes == 3
    verifier.close()


# --- the command line -----------------------------------------------------------------------


def test_listen_addresses() -> None:
    assert cli.listen_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert cli.listen_address("[::1]:0") == ("::1", 0)
    assert cli.listen_address("0.0.0.0:443") == ("0.0.0.0", 443)
    for wrong in ("8080", "localhost", ":80", "host:-1", "host:65536", "host:http"):
        with pytest.raises(ValueError, match="not HOST:PORT"):
            cli.listen_address(wrong)


def test_example_config_file_sets_every_option(tmp_path: Path) -> None:
    example = REPO / "pypi-mirror-proxy.example.toml"
    config = cli.config_from(["--config", str(example)], environ={})
    keys = {o.key for o in cli.OPTIONS}
    written = set(re.findall(r"(?m)^([a-z-]+) = ", example.read_text()))
    assert written == keys
    assert config.listen == ("127.0.0.1", 8080)
    assert config.tuf_root == REPO / "1.root.json"  # relative to the file
    environ = {"PYPI_MIRROR_PROXY_CONFIG": str(example), "PYPI_MIRROR_PROXY_MAX_AGE": "5"}
    assert cli.config_from(["--max-age", "7"], environ).max_age == 7
    assert cli.config_from([], environ).max_age == 5


def test_command_line_refusals_are_one_line(world: World, tmp_path: Path) -> None:
    def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(REPO / "tuf_proxy.py"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )

    missing = run("--mirror-url", world.nginx.url)
    assert missing.returncode == 2
    assert "missing --tuf-metadata-url (env TUF_METADATA_URL), --tuf-root" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    not_root = tmp_path / "not-root.json"
    not_root.write_text("{}")
    common = ["--mirror-url", world.nginx.url, "--tuf-metadata-url", world.metadata_url]
    bad = run(*common, "--tuf-root", str(not_root), "--cache-dir", str(tmp_path / "c"))
    assert bad.returncode == 1
    assert f"trusted root {not_root}: not usable TUF root metadata" in bad.stderr
    assert "Traceback" not in bad.stderr
    config = tmp_path / "proxy.toml"
    config.write_text('listen = "127.0.0.1:http"\n')
    wrong = run(*common, "--config", str(config))
    assert wrong.returncode == 2 and "listen: not HOST:PORT" in wrong.stderr
    config.write_text('mirror-dir = "x"\n')
    unknown = run(*common, env={"PYPI_MIRROR_PROXY_CONFIG": str(config)})
    assert unknown.returncode == 2 and "unknown key 'mirror-dir'" in unknown.stderr
    port = free_port()
    blocker = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        assert wait_for_port(port, blocker)
        taken = run(
            *common, "--tuf-root", str(world.tmp / "1.root.json"),
            "--cache-dir", str(tmp_path / "c"), "--listen", f"127.0.0.1:{port}",
        )  # fmt: skip
    finally:
        blocker.terminate()
        blocker.wait()
    assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert tuf_proxy.main(["--version"]) == 0
