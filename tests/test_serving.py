"""serving/nginx.conf in a real nginx over a mirror synced from the stand-in PyPI.

What a user of the served mirror depends on: pip and uv install through
``--index-url http://HOST/simple/``, a PEP 503 client (pypi-simple) reads the project list at
``/simple/``, a removed project answers 404 while its old hash-prefixed copy is still served,
content types, ``Vary: Accept``, cache headers, and PEP 691 content negotiation.

The config is used as shipped except for what a test machine must change: its ``listen``
(a free loopback port), its ``root`` (the test's mirror), and the main config around it
(pid file, temp paths, logs, the user workers run as). nginx must be installed (``.ci/run``
installs Debian's): without it these tests fail, they never skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pypi_simple import ACCEPT_ANY, ACCEPT_JSON_ONLY, PyPISimple

from pypi_index_mirror.mirror.store import DEFAULT_MIRROR_DIR, MirrorLayout, digest_file
from tests.fake_pypi import MIME_V1_JSON, FakePyPI, normalize
from tests.installers import installed_version, pip_install, uv_install
from tests.mirror_helpers import REPO, Mirror

CONFIG = REPO / "serving" / "nginx.conf"
# What pip 23-25 and uv send (pip: `_get_index_content`; uv: its simple-API client).
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
HTML_WHEEL, JSON_WHEEL = "Tiny_Wheel", "json.wheel"  # normalized: tiny-wheel, json-wheel
REMOVED = "Foo_Bar"
REMOVED_DIR = f"/simple/{normalize(REMOVED)}/"
ACCESS_LOG_FORMAT = '$request_method $request_uri $status "$sent_http_content_type" "$http_accept"'


def find_nginx() -> str:
    """The nginx binary (Debian puts it in /usr/sbin, not on every user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(
            "nginx is not installed: `apt-get install nginx` (.ci/run installs it); "
            "the serving tests need a real nginx",
            pytrace=False,
        )
    return found


def site_config(port: int, served: Path) -> str:
    """serving/nginx.conf with only its one `listen` and one `root` replaced."""
    text = CONFIG.read_text()
    text, listens = re.subn(r"(?m)^(\s*)listen\s+[^;]+;", rf"\1listen 127.0.0.1:{port};", text)
    text, roots = re.subn(r"(?m)^(\s*)root\s+[^;]+;", rf"\1root {served};", text)
    assert (listens, roots) == (1, 1), "serving/nginx.conf must have one listen and one root"
    return text


def main_config(workdir: Path, site: Path) -> str:
    """A minimal nginx.conf around the site, everything nginx writes kept inside workdir."""
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    # As root, workers would drop to `nobody`, who cannot read pytest's 0700 temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n{user}"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"    log_format serving_test '{ACCESS_LOG_FORMAT}';\n"
        f"    access_log {workdir / 'access.log'} serving_test;\n"
        f"    client_body_temp_path {temp['body']};\n"
        f"    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fastcgi']};\n"
        f"    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        f"    include {site};\n"
        "}\n"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Nginx:
    """A running nginx and where it logs."""

    process: subprocess.Popen
    url: str
    workdir: Path

    def access_log(self) -> list[str]:
        path = self.workdir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish, flush the logs
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nginx(served: Path, workdir: Path, attempts: int = 3) -> Nginx:
    """nginx with serving/nginx.conf's site over `served`, on a free loopback port."""
    return start_nginx_site(lambda port: site_config(port, served), workdir, attempts)


def start_nginx_site(site_for: Callable[[int], str], workdir: Path, attempts: int = 3) -> Nginx:
    """Start nginx with the site `site_for(port)` on a free loopback port; retry if another
    process took the port first."""
    binary = find_nginx()
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        port = free_port()
        site = workdir / "site.conf"
        site.write_text(site_for(port))
        conf = workdir / "nginx.conf"
        conf.write_text(main_config(workdir, site))
        checked = subprocess.run(
            [binary, "-t", "-q", "-p", str(workdir), "-c", str(conf), "-e", "stderr"],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, f"nginx -t refused the config:\n{checked.stderr}"
        error_log = workdir / "error.log"
        error_log.unlink(missing_ok=True)
        process = subprocess.Popen(
            [binary, "-p", str(workdir), "-c", str(conf), "-e", str(error_log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        if wait_for_port(port, process):
            return Nginx(process, f"http://127.0.0.1:{port}", workdir)
        process.kill()
        process.wait()
        errors = error_log.read_text() if error_log.exists() else ""
        if "Address already in use" not in errors:
            pytest.fail(f"nginx did not start:\n{errors}", pytrace=False)
    pytest.fail("nginx found no free port", pytrace=False)


def wait_for_port(port: int, process: subprocess.Popen, patience: float = 30.0) -> bool:
    """True once nginx accepts connections; False if it exited (a port clash, a bad config)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        time.sleep(0.02)
    return False


@dataclass
class Served:
    """The synced mirror behind nginx, and the stand-in it was synced from."""

    nginx: Nginx
    pypi: FakePyPI
    mirror: Mirror
    removed_copy: str  # the removed project's old page, by its hash-prefixed name
    removed_bytes: bytes
    tmp: Path

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def layout(self) -> MirrorLayout:
        return self.mirror.layout

    def get(self, path: str, accept: str | None = None, **kwargs: object) -> requests.Response:
        headers = {"Accept": accept} if accept else {}
        kwargs.setdefault("allow_redirects", False)
        return requests.get(f"{self.url}{path}", headers=headers, timeout=10, **kwargs)


def varies_on_accept(response: requests.Response) -> bool:
    """``Vary`` names Accept (gzip adds Accept-Encoding to compressible answers)."""
    vary = {token.strip().lower() for token in response.headers.get("Vary", "").split(",")}
    return "accept" in vary and vary <= {"accept", "accept-encoding"}


def write_json_page(path: Path, body: bytes) -> None:
    """Put a PEP 691 page where the mirror's JSON pages go, with its hash-prefixed copy."""
    path.write_bytes(body)
    digest = hashlib.blake2b(body, digest_size=32).hexdigest()
    os.link(path, path.parent / f"{digest}.index.v1_json")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Sync from the stand-in (two real wheels among the projects), remove a project,
    sync again (its old copy stays for the grace), put JSON pages beside two pages, and
    serve the tree with nginx."""
    tmp = tmp_path_factory.mktemp("serving")
    find_nginx()  # fail at once, before any sync, on a machine without nginx
    with FakePyPI() as pypi:
        for name in ("Django", "numpy", "zope.interface", REMOVED):
            pypi.add_release(name, "1.0", files=2)
        for name in (HTML_WHEEL, JSON_WHEEL):
            pypi.add_wheel(name, "1.0")
            pypi.add_wheel(name, "1.1")
        mirror = Mirror(tmp / DEFAULT_MIRROR_DIR, tmp / "state.json", pypi.url)
        first = mirror.cli()
        assert first.returncode == 0, first.stderr
        removed_page = mirror.layout.project_page(normalize(REMOVED))
        removed_bytes = removed_page.read_bytes()
        removed_copy = f"{digest_file(removed_page).hexdigest}.index.html"

        pypi.remove_project(REMOVED)
        second = mirror.cli()
        assert second.returncode == 0, second.stderr
        assert not removed_page.exists()
        assert (removed_page.parent / removed_copy).exists(), "the grace keeps the old copy"

        simple = mirror.layout.served_dir / "simple"
        write_json_page(simple / "index.v1_json", pypi.root_page(json_form=True))
        for name in ("numpy", JSON_WHEEL):
            page_dir = mirror.layout.project_page(normalize(name)).parent
            write_json_page(page_dir / "index.v1_json", pypi.page(name, json_form=True))

        nginx = start_nginx(mirror.layout.served_dir, tmp / "nginx")
        try:
            yield Served(nginx, pypi, mirror, removed_copy, removed_bytes, tmp)
        finally:
            nginx.stop()


@dataclass(frozen=True)
class Logged:
    """One access log line (ACCESS_LOG_FORMAT)."""

    method: str
    uri: str
    status: int
    content_type: str
    accept: str


def page_requests(served: Served, name: str, since: int) -> list[Logged]:
    """nginx's log of the requests for a project page, from log line ``since`` on."""
    found = []
    for line in served.nginx.access_log()[since:]:
        match = re.fullmatch(r'(\S+) (\S+) (\d+) "([^"]*)" "([^"]*)"', line)
        assert match, line
        method, uri, status, content_type, accept = match.groups()
        if uri == f"/simple/{name}/":
            found.append(Logged(method, uri, int(status), content_type, accept))
    return found


def assert_installed_through_mirror(served: Served, target: Path, since: int) -> None:
    """Both wheels (the newest version) installed; pages came from nginx, the one with a
    JSON page as JSON; the wheels from the file host the pages link to."""
    assert installed_version(target, "tiny_wheel") == "1.1"
    assert installed_version(target, "json_wheel") == "1.1"
    (html,) = page_requests(served, "tiny-wheel", since)
    assert (html.status, html.content_type) == (200, "text/html; charset=utf-8")
    (json_page,) = page_requests(served, "json-wheel", since)
    assert (json_page.status, json_page.content_type) == (200, MIME_V1_JSON)
    files = [r.path for r in served.pypi.requests if r.kind == "file" and r.status == 200]
    assert any(path.endswith("/tiny_wheel-1.1-py3-none-any.whl") for path in files)
    assert any(path.endswith("/json_wheel-1.1-py3-none-any.whl") for path in files)


def test_pip_installs_through_the_mirror(served: Served) -> None:
    since = len(served.nginx.access_log())
    served.pypi.reset_log()
    target = served.tmp / "pip-target"
    url = f"{served.url}/simple/"
    result = pip_install(url, target, "tiny-wheel", "json-wheel", tmp=served.tmp)
    assert result.returncode == 0, result.stderr
    assert_installed_through_mirror(served, target, since)


def test_uv_installs_through_the_mirror(served: Served) -> None:
    since = len(served.nginx.access_log())
    served.pypi.reset_log()
    target = served.tmp / "uv-target"
    url = f"{served.url}/simple/"
    result = uv_install(url, target, "tiny-wheel", "json-wheel", tmp=served.tmp)
    assert result.returncode == 0, result.stderr
    assert_installed_through_mirror(served, target, since)


def test_pypi_simple_reads_the_project_list_at_simple(served: Served) -> None:
    listed = served.mirror.root_projects()  # normalized -> display name, from index.html
    assert normalize(REMOVED) not in listed
    with PyPISimple(endpoint=f"{served.url}/simple/", accept=ACCEPT_ANY) as client:
        index = client.get_index_page()
        assert sorted(index.projects) == sorted(listed.values())
        page = client.get_project_page("tiny-wheel")
    assert [p.filename for p in page.packages] == [
        "tiny_wheel-1.0-py3-none-any.whl",
        "tiny_wheel-1.1-py3-none-any.whl",
    ]
    # The JSON root (PEP 691) gives the same list.
    with PyPISimple(endpoint=f"{served.url}/simple/", accept=ACCEPT_JSON_ONLY) as client:
        assert sorted(client.get_index_page().projects) == sorted(listed.values())


def test_root_links_resolve_to_the_project_pages(served: Served) -> None:
    """/simple/ redirects HTML clients to /, where `simple/<name>/` means /simple/<name>/."""
    redirect = served.get("/simple/", accept="text/html")
    assert redirect.status_code == 302
    assert redirect.headers["Location"] == "/"
    assert varies_on_accept(redirect)
    root = served.get("/simple/", accept="text/html", allow_redirects=True)
    assert root.status_code == 200 and root.url == f"{served.url}/"
    assert root.content == served.layout.root_page.read_bytes()
    hrefs = re.findall(r'href="([^"]+)"', root.text)
    assert len(hrefs) == len(served.mirror.root_projects())
    for href in hrefs:
        page = requests.get(urllib.parse.urljoin(root.url, href), timeout=10)
        assert page.status_code == 200, href
        name = href.split("/")[1]
        assert page.content == served.layout.project_page(name).read_bytes()
    without_slash = served.get("/simple")
    assert (without_slash.status_code, without_slash.headers["Location"]) == (301, "/simple/")
    project = served.get("/simple/numpy")
    assert (project.status_code, project.headers["Location"]) == (301, "/simple/numpy/")


def test_removed_project_answers_404_while_its_old_copy_is_served(served: Served) -> None:
    removed_dir = REMOVED_DIR
    assert (served.layout.served_dir / removed_dir.strip("/")).is_dir()
    for accept in (None, "text/html", PIP_ACCEPT):
        gone = served.get(removed_dir, accept=accept)
        assert gone.status_code == 404, (accept, gone.status_code)
        assert "Index of" not in gone.text
    copy = served.get(removed_dir + served.removed_copy)
    assert copy.status_code == 200
    assert copy.content == served.removed_bytes
    assert served.get("/simple/never-existed/").status_code == 404
    assert served.get("/simple/").status_code == 302  # a directory: never a listing
    for not_published in ("/simple/numpy/nothing.html", "/state.json", "/.staging/"):
        assert served.get(not_published).status_code == 404, not_published


def test_pages_and_copies_content_types_and_cache_headers(served: Served) -> None:
    layout = served.layout
    page = served.get("/simple/django/")
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert varies_on_accept(page)
    assert page.headers["Cache-Control"] == "public, max-age=60"
    assert page.content == layout.project_page("django").read_bytes()

    for target in ("simple/django/index.html", "index.html"):
        path = layout.served_dir / target
        copy_name = f"{digest_file(path).hexdigest}.index.html"
        copy = served.get("/" + target.replace("index.html", copy_name))
        assert copy.status_code == 200, target
        assert copy.content == path.read_bytes()
        assert copy.headers["Content-Type"] == "text/html; charset=utf-8"
        assert copy.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        direct = served.get("/" + target)
        assert direct.content == path.read_bytes()
        assert direct.headers["Cache-Control"] == "public, max-age=60"

    root = served.get("/")
    assert root.status_code == 200 and root.content == layout.root_page.read_bytes()
    assert root.headers["Content-Type"] == "text/html; charset=utf-8"


def test_pep691_content_negotiation(served: Served) -> None:
    json_page = served.layout.project_page("numpy").parent / "index.v1_json"
    html_page = served.layout.project_page("numpy").read_bytes()
    for accept in (PIP_ACCEPT, UV_ACCEPT, ACCEPT_JSON_ONLY, f"{MIME_V1_JSON};q=1.0"):
        answer = served.get("/simple/numpy/", accept=accept)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == MIME_V1_JSON, accept
        assert varies_on_accept(answer)
        assert answer.content == json_page.read_bytes()
    html_accepts = (
        None,
        "text/html",
        "*/*",
        ACCEPT_ANY,  # a tie between v1+html and v1+json: HTML, as warehouse decides
        f"text/html, {MIME_V1_JSON};q=0.5",
        f"{MIME_V1_JSON};q=0, text/html;q=0.1",
    )
    for accept in html_accepts:
        answer = served.get("/simple/numpy/", accept=accept)
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8", accept
        assert varies_on_accept(answer)
        assert answer.content == html_page
    # No JSON page beside this one: a JSON client gets the HTML, still marked Vary.
    fallback = served.get("/simple/django/", accept=ACCEPT_JSON_ONLY)
    assert fallback.headers["Content-Type"] == "text/html; charset=utf-8"
    assert varies_on_accept(fallback)

    root_json = served.layout.served_dir / "simple" / "index.v1_json"
    root = served.get("/simple/", accept=PIP_ACCEPT)
    assert root.status_code == 200 and root.headers["Content-Type"] == MIME_V1_JSON
    assert root.content == root_json.read_bytes() and varies_on_accept(root)

    copy_name = f"{hashlib.blake2b(json_page.read_bytes(), digest_size=32).hexdigest()}"
    copy = served.get(f"/simple/numpy/{copy_name}.index.v1_json")
    assert copy.status_code == 200 and copy.headers["Content-Type"] == MIME_V1_JSON
    assert copy.headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_config_serves_the_default_mirror_dir() -> None:
    """As shipped, `root` is the served tree of a mirror in its default directory."""
    (root,) = re.findall(r"(?m)^\s*root\s+([^;]+);", CONFIG.read_text())
    assert Path(root).parts[-2:] == (str(DEFAULT_MIRROR_DIR), MirrorLayout(Path()).served_dir.name)


def test_without_nginx_the_tests_fail_and_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A machine without nginx must not pass (or skip) the serving tests silently."""
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install nginx"):
        find_nginx()
