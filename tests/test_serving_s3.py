"""serving/nginx-s3.conf in a real nginx in front of a real SeaweedFS bucket.

The mirror is synced into the bucket (``--storage``, every form), then pip and
uv install through nginx, and the answers are held to what serving/nginx.conf
gives for the tree on disk: content types, cache headers, ``Vary: Accept``,
PEP 691 negotiation with its fallback to HTML, the ``/simple/`` mapping, 404
for whatever the mirror did not publish, and no write through nginx. Only
``listen``, the upstream's ``server``, the ``Host`` sent to it and
``$pypi_tree`` are changed from the file as shipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pypi_simple import ACCEPT_ANY, ACCEPT_JSON_ONLY, PyPISimple

from pypi_index_mirror.mirror.store import digest_bytes
from tests.fake_pypi import MIME_V1_JSON, FakePyPI
from tests.installers import installed_version, pip_install, uv_install
from tests.mirror_helpers import REPO, Mirror
from tests.seaweed import Seaweed
from tests.test_serving import (
    PIP_ACCEPT,
    UV_ACCEPT,
    Nginx,
    find_nginx,
    start_nginx_site,
    varies_on_accept,
)

# Every test here on one pytest-xdist worker (--dist loadgroup): one SeaweedFS a run.
pytestmark = pytest.mark.xdist_group("seaweed")

CONFIG = REPO / "serving" / "nginx-s3.conf"
HTML_TYPE = "text/html; charset=utf-8"


def site_config(port: int, endpoint: str, tree: str) -> str:
    """serving/nginx-s3.conf with its listen, upstream server, Host and tree replaced."""
    host = endpoint.removeprefix("http://")
    text = CONFIG.read_text()
    text, listens = re.subn(r"(?m)^(\s*)listen\s+[^;]+;", rf"\1listen 127.0.0.1:{port};", text)
    text, servers = re.subn(r"(?m)^(\s*)server\s+[^{;]+;", rf"\1server {host};", text)
    text, hosts = re.subn(
        r"(?m)^(\s*)proxy_set_header Host [^;]+;", rf"\1proxy_set_header Host {host};", text
    )
    text, trees = re.subn(r"(?m)^(\s*)set \$pypi_tree [^;]+;", rf"\1set $pypi_tree {tree};", text)
    assert (listens, servers, hosts, trees) == (1, 1, 1, 1)
    return text


@dataclass
class ServedBucket:
    nginx: Nginx
    pypi: FakePyPI
    store: Seaweed
    prefix: str
    tmp: Path

    @property
    def url(self) -> str:
        return self.nginx.url

    def get(self, path: str, accept: str | None = None) -> requests.Response:
        headers = {"Accept": accept} if accept else {}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=10, allow_redirects=False)

    def object(self, key: str) -> bytes:
        answer = self.store.client().get_object(
            Bucket=self.store.bucket, Key=f"{self.prefix}/{key}"
        )
        return answer["Body"].read()


def start_nginx(endpoint: str, tree: str, workdir: Path) -> Nginx:
    """nginx with serving/nginx-s3.conf's site in front of the bucket, on a free port."""
    return start_nginx_site(lambda port: site_config(port, endpoint, tree), workdir)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, seaweed: Seaweed) -> Iterator[ServedBucket]:
    tmp = tmp_path_factory.mktemp("serving-s3")
    find_nginx()
    prefix = seaweed.new_prefix()
    with pytest.MonkeyPatch.context() as patch, FakePyPI() as pypi:
        for name, value in seaweed.env.items():
            patch.setenv(name, value)
        for name in ("Django", "numpy"):
            pypi.add_release(name, "1.0", files=2)
        for name in ("Tiny_Wheel", "json.wheel"):
            pypi.add_wheel(name, "1.0")
            pypi.add_wheel(name, "1.1")
        mirror = Mirror(tmp / "m", tmp / "state.json", pypi.url)
        url = f"s3://{seaweed.bucket}/{prefix}"
        assert mirror.run("--storage", url, "--simple-format", "all") == 0
        # Django without a JSON page: a JSON client falls back to its HTML
        seaweed.client().delete_object(
            Bucket=seaweed.bucket, Key=f"{prefix}/simple/django/index.v1_json"
        )
        nginx = start_nginx(seaweed.endpoint, f"/{seaweed.bucket}/{prefix}", tmp / "nginx")
        try:
            yield ServedBucket(nginx, pypi, seaweed, prefix, tmp)
        finally:
            nginx.stop()


def test_pip_installs_through_nginx_in_front_of_the_bucket(served: ServedBucket) -> None:
    target = served.tmp / "pip-target"
    url = f"{served.url}/simple/"
    result = pip_install(url, target, "tiny-wheel", "json-wheel", tmp=served.tmp)
    assert result.returncode == 0, result.stderr
    assert installed_version(target, "tiny_wheel") == "1.1"
    assert installed_version(target, "json_wheel") == "1.1"


def test_uv_installs_through_nginx_in_front_of_the_bucket(served: ServedBucket) -> None:
    target = served.tmp / "uv-target"
    url = f"{served.url}/simple/"
    result = uv_install(url, target, "tiny-wheel", "json-wheel", tmp=served.tmp)
    assert result.returncode == 0, result.stderr
    assert installed_version(target, "json_wheel") == "1.1"


def test_negotiation_headers_and_copies_as_on_disk(served: ServedBucket) -> None:
    for accept in (PIP_ACCEPT, UV_ACCEPT, ACCEPT_JSON_ONLY):
        page = served.get("/simple/numpy/", accept=accept)
        assert page.status_code == 200 and page.headers["Content-Type"] == MIME_V1_JSON
        assert page.content == served.object("simple/numpy/index.v1_json")
        assert varies_on_accept(page)
        assert page.headers["Cache-Control"] == "public, max-age=60"
    for accept in (None, "text/html", ACCEPT_ANY):
        page = served.get("/simple/numpy/", accept=accept)
        assert page.status_code == 200 and page.headers["Content-Type"] == HTML_TYPE
        assert page.content == served.object("simple/numpy/index.html")
        assert varies_on_accept(page)
    fallback = served.get("/simple/django/", accept=PIP_ACCEPT)  # no JSON page in the bucket
    assert fallback.status_code == 200 and fallback.headers["Content-Type"] == HTML_TYPE
    assert fallback.content == served.object("simple/django/index.html")
    assert varies_on_accept(fallback)
    body = served.object("simple/numpy/index.html")
    copy = served.get(f"/simple/numpy/{digest_bytes(body).hexdigest}.index.html")
    assert copy.status_code == 200 and copy.content == body
    assert copy.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    root = served.get("/")
    assert root.status_code == 200 and root.content == served.object("index.html")
    assert root.headers["Content-Type"] == HTML_TYPE


def test_the_simple_mapping_and_what_is_never_served(served: ServedBucket) -> None:
    redirect = served.get("/simple/", accept="text/html")
    assert (redirect.status_code, redirect.headers["Location"]) == (302, "/")
    assert varies_on_accept(redirect)
    root_json = served.get("/simple/", accept=PIP_ACCEPT)
    assert root_json.status_code == 200 and root_json.headers["Content-Type"] == MIME_V1_JSON
    assert root_json.content == served.object("simple/index.v1_json")
    assert served.get("/simple").headers["Location"] == "/simple/"
    assert served.get("/simple/numpy").headers["Location"] == "/simple/numpy/"
    for path in ("/simple/never-existed/", "/.mirror-id", "/simple/numpy/nothing.html", "/x"):
        assert served.get(path).status_code == 404, path
    with PyPISimple(endpoint=f"{served.url}/simple/", accept=ACCEPT_ANY) as client:
        assert sorted(client.get_index_page().projects) == [
            "Django", "Tiny_Wheel", "json.wheel", "numpy"
        ]  # fmt: skip
    put = requests.put(f"{served.url}/simple/numpy/index.html", data=b"evil", timeout=10)
    assert put.status_code == 405
    assert served.object("simple/numpy/index.html") != b"evil"
