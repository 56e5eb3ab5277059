"""The stand-in PyPI against the protocol facts: what makes the mirror's own tests mean something.

Each journal action's rows and page effect, changelog paging, content negotiation, headers,
redirects and 404s, every fault kind firing exactly the set number of times, quarantine and the
listings, and consistency under concurrent clients and writers.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import xmlrpc.client
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

import pytest
import requests

from tests import warehouse_fixture
from tests.fake_pypi import (
    CHANGELOG_REMOVED,
    FakePyPI,
    make_self_signed_cert,
    normalize,
    synthetic_file_count,
)

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_700_000_000
HTML = "text/html; charset=UTF-8"
V1_HTML = "application/vnd.pypi.simple.v1+html"
V1_JSON = "application/vnd.pypi.simple.v1+json"
SERIAL = "X-PyPI-Last-Serial"


@pytest.fixture
def fake() -> Iterator[FakePyPI]:
    with FakePyPI(clock=lambda: NOW) as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as client:
        yield client


def get(session: requests.Session, fake: FakePyPI, path: str, **kwargs: Any) -> requests.Response:
    return session.get(fake.url + path, timeout=10, **kwargs)


def rpc(
    session: requests.Session, fake: FakePyPI, method: str, *params: Any, path: str = "/pypi"
) -> Any:
    """Call an XML-RPC method through ``session``; a fault raises xmlrpc.client.Fault."""
    body = xmlrpc.client.dumps(params, method, allow_none=True)
    response = session.post(
        fake.url + path, data=body, headers={"Content-Type": "text/xml"}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/xml")
    (result,), _ = xmlrpc.client.loads(response.content)
    return result


def rows(fake: FakePyPI, since: int = 0) -> list[tuple[str, str | None, str, int]]:
    return [(r.name, r.version, r.action, r.serial) for r in fake.journal[since:]]


def serial_trailer(body: bytes) -> int:
    match = re.search(rb"<!--SERIAL (\d+)-->\Z", body)
    assert match, body[-60:]
    return int(match[1])


# --- journal actions and their page effects ------------------------------------------------


def test_create_writes_one_row_and_an_empty_page(fake: FakePyPI, session: requests.Session):
    assert fake.create_project("My.Project") == 1
    assert rows(fake) == [("My.Project", None, "create", 1)]
    response = get(session, fake, "/simple/my-project/")
    assert response.status_code == 200
    assert response.headers[SERIAL] == "1"
    assert "<a " not in response.text
    assert "<h1>Links for my-project</h1>" in response.text
    with pytest.raises(ValueError):
        fake.create_project("my_project")


def test_add_release_writes_new_release_then_a_row_per_file(fake: FakePyPI):
    fake.create_project("foo")
    assert fake.add_release("foo", "1.0") == 4
    assert rows(fake, 1) == [
        ("foo", "1.0", "new release", 2),
        ("foo", "1.0", "add source file foo-1.0.tar.gz", 3),
        ("foo", "1.0", "add py3 file foo-1.0-py3-none-any.whl", 4),
    ]
    assert fake.project_serial("foo") == fake.last_serial == 4
    fake.add_release("foo", "1.1", files=3)
    assert rows(fake, 4)[-1] == (
        "foo",
        "1.1",
        "add cp38 file foo-1.1-cp38-cp38-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        8,
    )


def test_add_release_creates_a_missing_project_first(fake: FakePyPI):
    fake.add_release("New_Thing", "0.1", files=1)
    assert [r[2] for r in rows(fake)] == [
        "create",
        "new release",
        "add source file new_thing-0.1.tar.gz",
    ]
    assert fake.display_name("new-thing") == "New_Thing"


def test_upload_to_an_existing_release_writes_only_file_rows(fake: FakePyPI):
    fake.add_release("foo", "1.0", files=1)
    before = fake.last_serial
    fake.add_release("foo", "1.0", files=["foo-1.0-py2.py3-none-any.whl", "Foo-1.0.zip"])
    assert rows(fake, before) == [
        ("foo", "1.0", "add py2.py3 file foo-1.0-py2.py3-none-any.whl", before + 1),
        ("foo", "1.0", "add source file Foo-1.0.zip", before + 2),
    ]
    with pytest.raises(ValueError):
        fake.add_release("foo", "1.0", files=["Foo-1.0.zip"])


def test_remove_file_and_release_keep_the_project(fake: FakePyPI, session: requests.Session):
    fake.add_release("keep", "1.0")
    fake.add_release("keep", "2.0")
    serial = fake.remove_file("keep", "keep-1.0.tar.gz")
    assert rows(fake)[-1] == ("keep", "1.0", "remove file keep-1.0.tar.gz", serial)
    serial = fake.remove_release("keep", "2.0")
    assert rows(fake)[-1] == ("keep", "2.0", "remove release", serial)
    response = get(session, fake, "/simple/keep/")
    assert response.status_code == 200
    assert response.headers[SERIAL] == str(serial)
    assert re.findall(r">([^<]+)</a>", response.text) == ["keep-1.0-py3-none-any.whl"]
    with pytest.raises(KeyError):
        fake.remove_release("keep", "2.0")


def test_remove_project_404s_leaves_the_listings_and_can_return(
    fake: FakePyPI, session: requests.Session
):
    fake.add_release("Gone", "1.0")
    fake.create_project("kept")
    serial = fake.remove_project("gone")
    assert rows(fake)[-1] == ("Gone", None, "remove project", serial)
    response = get(session, fake, "/simple/gone/")
    assert response.status_code == 404
    assert SERIAL not in response.headers
    assert "gone" not in get(session, fake, "/simple/").text
    assert rpc(session, fake, "list_packages_with_serial") == {"kept": fake.project_serial("kept")}

    again = fake.create_project("GONE")
    assert again > serial
    response = get(session, fake, "/simple/gone/")
    assert response.status_code == 200
    assert response.headers[SERIAL] == str(again)
    assert "<a " not in response.text
    assert rpc(session, fake, "list_packages_with_serial")["GONE"] == again


def test_yank_and_unyank_change_data_yanked(fake: FakePyPI, session: requests.Session):
    fake.add_release("y", "1.0", files=1)
    serial = fake.yank_release("y", "1.0", 'not "safe" & <old>')
    assert rows(fake)[-1] == ("y", "1.0", "yank release", serial)
    assert b'data-yanked="not &#34;safe&#34; &amp; &lt;old&gt;" >y-1.0.tar.gz' in fake.page("y")
    assert json.loads(fake.page("y", json_form=True))["files"][0]["yanked"] == 'not "safe" & <old>'

    serial = fake.unyank_release("y", "1.0")
    assert rows(fake)[-1] == ("y", "1.0", "unyank release", serial)
    assert b"data-yanked" not in fake.page("y")
    assert json.loads(fake.page("y", json_form=True))["files"][0]["yanked"] is False

    fake.yank_release("y", "1.0")
    assert b'data-yanked="" >y-1.0.tar.gz' in get(session, fake, "/simple/y/").content
    assert json.loads(fake.page("y", json_form=True))["files"][0]["yanked"] is True


def test_quarantine_hides_files_and_leaves_the_simple_roots(
    fake: FakePyPI, session: requests.Session
):
    fake.add_release("Risky", "1.0")
    fake.create_project("other")
    serial = fake.quarantine_project("risky")
    assert rows(fake)[-1] == ("Risky", None, "project quarantined", serial)
    response = get(session, fake, "/simple/risky/")
    assert response.status_code == 200
    assert response.headers[SERIAL] == str(serial)
    assert '<meta name="pypi:project-status" content="quarantined">' in response.text
    assert "<a " not in response.text
    document = json.loads(fake.page("risky", json_form=True))
    assert document["project-status"] == {"status": "quarantined"}
    assert document["files"] == [] and document["versions"] == []
    assert "Risky" not in get(session, fake, "/simple/").text
    assert "Risky" not in get(session, fake, "/simple/", headers={"Accept": V1_JSON}).text
    # warehouse's XML-RPC lists every project (jsonb_object_agg over all of them)
    assert rpc(session, fake, "list_packages_with_serial") == {"Risky": serial, "other": 5}
    assert fake.listing() == {"Risky": serial, "other": 5}
    assert get(session, fake, "/pypi/Risky/json").status_code == 404

    serial = fake.clear_quarantine("risky")
    assert rows(fake)[-1] == ("Risky", None, "project quarantine cleared", serial)
    assert len(fake.filenames("risky")) == 2
    assert b'content="active"' in fake.page("risky")
    assert rpc(session, fake, "list_packages_with_serial")["Risky"] == serial


def test_add_role_moves_only_the_serial(fake: FakePyPI):
    fake.add_release("roles", "1.0")
    files = fake.filenames("roles")
    before = fake.page("roles")
    serial = fake.add_role("roles", "alice")
    assert rows(fake)[-1] == ("roles", None, "add Owner alice", serial)
    fake.add_role("roles", "bob", role="Maintainer")
    assert rows(fake)[-1][2] == "add Maintainer bob"
    after = fake.page("roles")
    assert fake.filenames("roles") == files
    assert serial_trailer(after) == fake.project_serial("roles")
    assert re.sub(rb"<!--SERIAL \d+-->", b"", before) == re.sub(rb"<!--SERIAL \d+-->", b"", after)


def test_rename_journals_under_the_new_name(fake: FakePyPI, session: requests.Session):
    fake.add_release("Old.Name", "1.0")
    files = fake.filenames("old-name")
    serial = fake.rename_project("Old.Name", "New_Name")
    assert rows(fake)[-1] == ("New_Name", None, "rename from Old.Name", serial)
    assert get(session, fake, "/simple/old-name/").status_code == 404
    response = get(session, fake, "/simple/new-name/")
    assert response.status_code == 200
    assert response.headers[SERIAL] == str(serial)
    assert fake.filenames("new-name") == files


def test_archive_changes_the_page_but_writes_no_row(fake: FakePyPI, session: requests.Session):
    serial = fake.add_release("old", "1.0")
    assert fake.archive_project("old") == serial
    assert fake.last_serial == serial
    response = get(session, fake, "/simple/old/")
    assert '<meta name="pypi:project-status" content="archived">' in response.text
    assert response.headers[SERIAL] == str(serial)
    assert "old" in get(session, fake, "/simple/").text


def test_raw_rows_and_listing_entries_are_unchecked(fake: FakePyPI, session: requests.Session):
    fake.create_project("real")
    serial = fake.add_journal_row("../../etc/passwd", None, "create")
    assert rows(fake)[-1] == ("../../etc/passwd", None, "create", serial)
    assert not fake.has_project("../../etc/passwd")
    fake.add_raw_listing_entry('<script>"x"', 7)
    assert rpc(session, fake, "list_packages_with_serial") == {"real": 1, '<script>"x"': 7}
    root = get(session, fake, "/simple/").text
    assert '<a href="/simple/&lt;script&gt;&#34;x&#34;/">&lt;script&gt;&#34;x&#34;</a>\n' in root
    assert rpc(session, fake, "changelog_since_serial", 1)[0][0] == "../../etc/passwd"


# --- page bytes --------------------------------------------------------------------------


def test_project_page_bytes_follow_warehouse_pep833_snapshot(
    fake: FakePyPI, session: requests.Session
):
    fake.add_release("example", "1.0.0", files=["example-1.0.0.tar.gz"])
    file = json.loads(fake.page("example", json_form=True))["files"][0]
    expected = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "  <head>\n"
        '    <meta name="pypi:repository-version" content="1.4">\n'
        '<meta name="pypi:project-status" content="active">    <title>Links for example</title>\n'
        "  </head>\n"
        "  <body>\n"
        "    <h1>Links for example</h1>\n"
        f'<a href="{file["url"]}#sha256={file["hashes"]["sha256"]}" >example-1.0.0.tar.gz</a>'
        "<br />\n"
        "</body>\n"
        "</html>\n"
        "<!--SERIAL 3-->"
    ).encode()
    response = get(session, fake, "/simple/example/")
    assert response.content == expected == fake.page("example")
    assert file["url"].startswith("https://files.pythonhosted.org/packages/")
    assert re.fullmatch(r"[0-9a-f]{64}", file["hashes"]["sha256"])


@pytest.mark.parametrize("gzip_ok", [False, True])
def test_pages_and_roots_are_the_bytes_warehouse_renders(gzip_ok: bool):
    """Held to fixed inputs that warehouse's own code rendered (tests/warehouse_fixture.py):
    JSON key order, separators, UTF-8, newline; versions with files only; upload times;
    provenance; the file order; data-provenance's spacing; the roots without quarantined."""
    with FakePyPI(clock=lambda: warehouse_fixture.NOW) as index:
        warehouse_fixture.build_fixed_index(index)
        encoding = "gzip" if gzip_ok else "identity"
        for path, form in [(f"/simple/{n}/", n) for n in ("fixed-project", "held")] + [
            ("/simple/", "root")
        ]:
            for accept, suffix in (("text/html", "html"), (V1_JSON, "v1_json")):
                expected = (warehouse_fixture.FIXTURES / f"{form}.{suffix}").read_bytes()
                request = urllib.request.Request(
                    index.url + path, headers={"Accept": accept, "Accept-Encoding": encoding}
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    body = response.read()
                    assert response.headers["Vary"] == "Accept, Accept-Encoding"
                    if gzip_ok:
                        assert response.headers["Content-Encoding"] == "gzip"
                        body = gzip.decompress(body)
                    else:
                        assert response.headers["Content-Encoding"] is None
                assert body == expected, (path, accept)


def test_list_packages_with_serial_lists_quarantined_projects_too(session: requests.Session):
    with FakePyPI(clock=lambda: warehouse_fixture.NOW) as index:
        warehouse_fixture.build_fixed_index(index)
        listing = rpc(session, index, "list_packages_with_serial")
    assert listing == {
        "held": index.project_serial("held"),
        "Other_Name": index.project_serial("other-name"),
        "Fixed.Project": index.project_serial("fixed-project"),
    }
    # jsonb's key order, shorter keys first, as warehouse's PostgreSQL aggregates it
    assert list(listing) == ["held", "Other_Name", "Fixed.Project"]


def test_file_attributes_are_escaped_and_files_sorted_by_version(fake: FakePyPI):
    fake.add_release("attrs", "10.0", files=1, requires_python="<4,>=3.8")
    fake.add_release("attrs", "9.0", files=2)
    page = fake.page("attrs").decode()
    assert fake.filenames("attrs") == [
        "attrs-9.0-py3-none-any.whl",
        "attrs-9.0.tar.gz",
        "attrs-10.0.tar.gz",
    ]
    digest = json.loads(fake.page("attrs", json_form=True))["files"][0]["core-metadata"]["sha256"]
    assert (
        f'data-dist-info-metadata="sha256={digest}" data-core-metadata="sha256={digest}">'
        "attrs-9.0-py3-none-any.whl</a><br />\n"
    ) in page
    assert 'data-requires-python="&lt;4,&gt;=3.8" >attrs-10.0.tar.gz</a><br />\n' in page


def test_pages_are_deterministic(fake: FakePyPI):
    other = FakePyPI(clock=lambda: NOW)
    for index in (fake, other):
        index.add_release("Same", "1.0", files=4, requires_python=">=3.9")
    assert fake.page("same") == other.page("same")


def test_root_page_is_sorted_by_normalized_name(fake: FakePyPI, session: requests.Session):
    for name in ("Zeta", "alpha_Beta", "Alpha.Alpha", "mid"):
        fake.create_project(name)
    fake.quarantine_project("mid")
    response = get(session, fake, "/simple/")
    assert response.status_code == 200
    assert response.headers[SERIAL] == str(fake.last_serial)
    assert response.headers["Vary"] == "Accept, Accept-Encoding"
    assert response.text == (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n'
        "  <head>\n"
        '    <meta name="pypi:repository-version" content="1.4">\n'
        "    <title>Simple index</title>\n"
        "  </head>\n"
        "  <body>\n"
        '<a href="/simple/alpha-alpha/">Alpha.Alpha</a>\n'
        '<a href="/simple/alpha-beta/">alpha_Beta</a>\n'
        '<a href="/simple/zeta/">Zeta</a>\n'
        "</body>\n"
        "</html>"
    )


def test_json_forms(fake: FakePyPI, session: requests.Session):
    fake.add_release("Json.Pkg", "1.0", requires_python=">=3.8")
    fake.create_project("empty")
    headers = {"Accept": V1_JSON}
    root = get(session, fake, "/simple/", headers=headers)
    assert root.headers["Content-Type"] == V1_JSON
    assert root.content.endswith(b"\n")
    assert root.json() == {
        "meta": {"api-version": "1.4", "_last-serial": fake.last_serial},
        "projects": [
            {"name": "empty", "_last-serial": fake.project_serial("empty")},
            {"name": "Json.Pkg", "_last-serial": fake.project_serial("json-pkg")},
        ],
    }
    page = get(session, fake, "/simple/json-pkg/", headers=headers)
    assert page.headers["Content-Type"] == V1_JSON
    assert page.headers[SERIAL] == str(fake.project_serial("json-pkg"))
    document = page.json()
    assert document["meta"] == {"api-version": "1.4", "_last-serial": 4}
    assert document["name"] == "json-pkg"
    assert document["project-status"] == {"status": "active"}
    assert document["versions"] == ["1.0"]
    wheel = document["files"][0]
    assert wheel["filename"] == "json_pkg-1.0-py3-none-any.whl"
    assert wheel["requires-python"] == ">=3.8"
    assert wheel["yanked"] is False
    assert re.fullmatch(r"2023-11-14T22:13:20\.[0-9]{6}Z", wheel["upload-time"])
    assert set(wheel["core-metadata"]) == {"sha256"}
    assert document["files"][1]["core-metadata"] is False
    assert wheel["hashes"]["sha256"] in get(session, fake, "/simple/json-pkg/").text


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, HTML),
        ("*/*", HTML),
        ("text/html", HTML),
        (V1_HTML, V1_HTML),
        (V1_JSON, V1_JSON),
        (f"{V1_JSON}, {V1_HTML};q=0.1, text/html;q=0.01", V1_JSON),  # pip's header
        (f"{V1_JSON}, text/html", HTML),  # a tie goes to the server's first offer
        (f"text/html;q=0.2, {V1_JSON};q=0.9", V1_JSON),
        (f"application/*;q=0.5, {V1_HTML};q=0", V1_JSON),
        ("image/png", HTML),  # nothing acceptable: warehouse still answers HTML
    ],
)
def test_content_negotiation(
    fake: FakePyPI, session: requests.Session, accept: str | None, content_type: str
):
    fake.add_release("neg", "1.0")
    for path in ("/simple/neg/", "/simple/"):
        response = get(session, fake, path, headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Vary"] == "Accept, Accept-Encoding"
        if content_type == V1_JSON:
            assert response.json()["meta"]["api-version"] == "1.4"
        else:
            assert response.text.startswith("<!DOCTYPE html>")


def test_redirects_and_404s_carry_no_serial(fake: FakePyPI, session: requests.Session):
    fake.create_project("Foo.Bar")
    response = get(session, fake, "/simple/Foo.Bar/", allow_redirects=False)
    assert response.status_code == 301
    assert response.headers["Location"] == "/simple/foo-bar/"
    assert SERIAL not in response.headers
    response = get(session, fake, "/simple/foo-bar", allow_redirects=False)
    assert response.status_code == 301
    assert response.headers["Location"] == "/simple/foo-bar/"
    assert get(session, fake, "/simple", allow_redirects=False).headers["Location"] == "/simple/"
    followed = get(session, fake, "/simple/Foo_Bar")
    assert followed.status_code == 200
    assert followed.url.endswith("/simple/foo-bar/")
    for path in ("/simple/nope/", "/simple/foo-bar/extra/", "/elsewhere"):
        response = get(session, fake, path)
        assert response.status_code == 404, path
        assert SERIAL not in response.headers


def test_head_and_purge(fake: FakePyPI, session: requests.Session):
    fake.add_release("h", "1.0")
    full = get(session, fake, "/simple/h/")
    head = session.head(fake.url + "/simple/h/", timeout=10)
    assert head.status_code == 200
    assert head.content == b""
    # both gzipped (requests asks for it): the same length
    assert head.headers["Content-Length"] == full.headers["Content-Length"]
    assert head.headers["Content-Encoding"] == full.headers["Content-Encoding"] == "gzip"
    assert session.request("PURGE", fake.url + "/simple/h/", timeout=10).status_code == 200


def test_json_api_for_bandersnatch(fake: FakePyPI, session: requests.Session):
    fake.add_release("Json_Pkg", "1.0", requires_python=">=3.8")
    fake.add_release("Json_Pkg", "2.0", files=1)
    serial = fake.yank_release("Json_Pkg", "2.0", "oops")
    response = get(session, fake, "/pypi/Json_Pkg/json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers[SERIAL] == str(serial)
    document = response.json()
    assert document["info"]["name"] == "Json_Pkg"
    assert document["info"]["version"] == "1.0"  # the newest release that is not yanked
    assert document["last_serial"] == serial
    assert sorted(document["releases"]) == ["1.0", "2.0"]
    yanked = document["releases"]["2.0"][0]
    assert yanked["yanked"] is True
    assert yanked["yanked_reason"] == "oops"
    wheel = document["releases"]["1.0"][0]
    assert wheel["packagetype"] == "bdist_wheel"
    assert wheel["requires_python"] == ">=3.8"
    assert wheel["upload_time_iso_8601"].endswith("Z")
    assert wheel["url"].startswith("https://files.pythonhosted.org/packages/")
    assert wheel["digests"]["sha256"] in get(session, fake, "/simple/json-pkg/").text
    assert {"size", "md5_digest", "filename", "python_version"} <= set(wheel)
    assert [f["filename"] for f in document["urls"]] == [
        f["filename"] for f in document["releases"]["1.0"]
    ]

    moved = get(session, fake, "/pypi/json-pkg/json", allow_redirects=False)
    assert moved.status_code == 301
    assert moved.headers["Location"] == "/pypi/Json_Pkg/json"
    fake.create_project("bare")
    for path in ("/pypi/missing/json", "/pypi/bare/json"):
        assert get(session, fake, path).status_code == 404


# --- XML-RPC -------------------------------------------------------------------------------


def test_changelog_pages_at_page_cap(session: requests.Session):
    with FakePyPI(page_cap=3, clock=lambda: NOW) as fake:
        for index in range(4):
            fake.add_release(f"p{index}", "1.0", files=0)
        assert fake.last_serial == 8
        seen: list[list[Any]] = []
        since = 0
        for path in ("/pypi", "/pypi/", "/RPC2", "/pypi"):
            page = rpc(session, fake, "changelog_since_serial", since, path=path)
            assert len(page) <= 3
            seen.extend(page)
            since = page[-1][4] if page else since
        assert [row[4] for row in seen] == list(range(1, 9))
        assert seen[0] == ["p0", None, NOW, "create", 1]
        assert seen[1] == ["p0", "1.0", NOW, "new release", 2]
        assert rpc(session, fake, "changelog_since_serial", 8) == []
        assert rpc(session, fake, "changelog_since_serial", 6) == [
            ["p3", None, NOW, "create", 7],
            ["p3", "1.0", NOW, "new release", 8],
        ]


def test_changelog_last_serial(fake: FakePyPI, session: requests.Session):
    assert rpc(session, fake, "changelog_last_serial") is None  # warehouse: max() of nothing
    fake.add_release("a", "1.0")
    assert rpc(session, fake, "changelog_last_serial") == 4


def test_list_packages_with_serial(fake: FakePyPI, session: requests.Session):
    fake.add_release("Alpha", "1.0")
    fake.create_project("beta")
    fake.add_role("alpha", "carol")
    assert rpc(session, fake, "list_packages_with_serial") == {"Alpha": 6, "beta": 5}
    assert fake.listing() == {"Alpha": 6, "beta": 5}


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (xmlrpc.client.dumps((), "no_such_method"), -32601, "requested method not found"),
        (xmlrpc.client.dumps((0,), "changelog"), -32500, CHANGELOG_REMOVED),
        (xmlrpc.client.dumps(("x",), "changelog_since_serial"), -32602, "invalid method params"),
        (xmlrpc.client.dumps((), "changelog_since_serial"), -32602, "invalid method params"),
        (xmlrpc.client.dumps((1,), "list_packages_with_serial"), -32602, "invalid method params"),
        ("<methodCall><nope", -32700, "not well formed"),
    ],
)
def test_xmlrpc_faults_like_warehouse(
    fake: FakePyPI, session: requests.Session, body: str, code: int, message: str
):
    response = session.post(fake.url + "/pypi", data=body, timeout=10)
    assert response.status_code == 200
    with pytest.raises(xmlrpc.client.Fault) as raised:
        xmlrpc.client.loads(response.content)
    assert raised.value.faultCode == code
    assert message in raised.value.faultString


def test_xmlrpc_endpoint_wants_post(fake: FakePyPI, session: requests.Session):
    assert get(session, fake, "/pypi").status_code == 405


# --- faults --------------------------------------------------------------------------------

Outcome = requests.Response | requests.RequestException


def _status(code: int) -> Callable[[Outcome], None]:
    def check(outcome: Outcome) -> None:
        assert isinstance(outcome, requests.Response)
        assert outcome.status_code == code
        assert SERIAL not in outcome.headers
        assert outcome.headers["Content-Type"].startswith("text/html")

    return check


def _rate_limited(outcome: Outcome) -> None:
    assert isinstance(outcome, requests.Response)
    assert outcome.status_code == 429
    assert outcome.headers["Retry-After"] == "7"


def _failed(outcome: Outcome) -> None:
    assert isinstance(outcome, requests.RequestException)


def _not_simple(outcome: Outcome) -> None:
    assert isinstance(outcome, requests.Response)
    assert outcome.status_code == 200
    assert outcome.headers["Content-Type"] == HTML
    assert "pypi:repository-version" not in outcome.text
    assert SERIAL not in outcome.headers


def _json_instead(outcome: Outcome) -> None:
    assert isinstance(outcome, requests.Response)
    assert outcome.headers["Content-Type"] == V1_JSON
    assert outcome.json()["name"] == "target"


def _empty(outcome: Outcome) -> None:
    assert isinstance(outcome, requests.Response)
    assert outcome.status_code == 200
    assert outcome.content == b""
    assert SERIAL in outcome.headers


def _oversized(outcome: Outcome) -> None:
    assert isinstance(outcome, requests.Response)
    assert outcome.status_code == 200
    assert len(outcome.content) == 1 << 20


def _not_utf8(outcome: Outcome) -> None:
    assert isinstance(outcome, requests.Response)
    assert outcome.status_code == 200
    with pytest.raises(UnicodeDecodeError):
        outcome.content.decode("utf-8")


PAGE_FAULTS = [
    ("status", {"code": 502}, _status(502)),
    ("status", {}, _status(503)),
    ("rate_limit", {"seconds": 7}, _rate_limited),
    ("reset", {}, _failed),
    ("truncate", {}, _failed),
    ("not_simple", {}, _not_simple),
    ("json_instead", {}, _json_instead),
    ("empty", {}, _empty),
    ("oversized", {"size": 1 << 20}, _oversized),
    ("not_utf8", {}, _not_utf8),
]


def _fetch(session: requests.Session, url: str) -> Outcome:
    try:
        return session.get(url, headers={"Accept": "text/html"}, timeout=10)
    except requests.RequestException as error:
        return error


@pytest.mark.parametrize(("kind", "params", "check"), PAGE_FAULTS, ids=[f[0] for f in PAGE_FAULTS])
@pytest.mark.parametrize("target", ["target", "root"])
def test_page_fault_fires_the_set_number_of_times(
    fake: FakePyPI,
    session: requests.Session,
    kind: str,
    params: dict[str, Any],
    check: Callable[[Outcome], None],
    target: str,
):
    fake.add_release("target", "1.0")
    path = "/simple/" if target == "root" else "/simple/target/"
    normal = get(session, fake, path, headers={"Accept": "text/html"}).content
    fake.inject("Target" if target == "target" else target, kind, times=2, **params)
    assert fake.faults_pending() == 2
    outcomes = [_fetch(session, fake.url + path) for _ in range(3)]
    if kind == "json_instead" and target == "root":
        assert isinstance(outcomes[0], requests.Response)
        assert "projects" in outcomes[0].json()
    else:
        check(outcomes[0])
        check(outcomes[1])
    last = outcomes[2]
    assert isinstance(last, requests.Response)
    assert last.status_code == 200
    assert last.content == normal
    assert fake.faults_pending() == 0
    fired = [r.fault for r in fake.requests if r.kind in ("page", "root")][-3:]
    assert fired == [kind, kind, None]


def test_slow_fault_delays_then_answers(fake: FakePyPI, session: requests.Session):
    fake.add_release("target", "1.0")
    fake.inject("target", "slow", seconds=0.3)
    started = time.perf_counter()
    assert get(session, fake, "/simple/target/").status_code == 200
    assert time.perf_counter() - started >= 0.3
    assert get(session, fake, "/simple/target/").status_code == 200
    assert [r.fault for r in fake.requests if r.kind == "page"] == ["slow", None], "once only"


def test_stale_fault_serves_the_previous_rendering(fake: FakePyPI, session: requests.Session):
    fake.add_release("target", "1.0")
    old_html, old_json = fake.page("target"), fake.page("target", json_form=True)
    old_serial = fake.project_serial("target")
    fake.add_release("target", "2.0")
    fake.inject("target", "stale", times=2)
    stale = get(session, fake, "/simple/target/")
    assert stale.content == old_html
    assert stale.headers[SERIAL] == str(old_serial)
    stale_json = get(session, fake, "/simple/target/", headers={"Accept": V1_JSON})
    assert stale_json.content == old_json
    fresh = get(session, fake, "/simple/target/")
    assert fresh.headers[SERIAL] == str(fake.project_serial("target"))
    assert fresh.content == fake.page("target")


def test_stale_fault_without_history_lowers_the_serial(fake: FakePyPI, session: requests.Session):
    serial = fake.create_project("fresh")
    fake.inject("fresh", "stale")
    stale = get(session, fake, "/simple/fresh/")
    assert stale.headers[SERIAL] == str(serial - 1)
    assert serial_trailer(stale.content) == serial - 1


def test_stale_root_and_json_api(fake: FakePyPI, session: requests.Session):
    fake.add_release("target", "1.0")
    first = get(session, fake, "/simple/")
    old_api = get(session, fake, "/pypi/target/json")
    fake.add_release("second", "1.0")
    fake.add_release("target", "2.0")
    fake.inject("root", "stale")
    stale = get(session, fake, "/simple/")
    assert stale.content == first.content
    assert stale.headers[SERIAL] == first.headers[SERIAL]
    assert get(session, fake, "/simple/").headers[SERIAL] == str(fake.last_serial)
    fake.inject("target", "stale")
    stale_api = get(session, fake, "/pypi/target/json")
    assert stale_api.headers[SERIAL] == old_api.headers[SERIAL]
    assert stale_api.json()["info"]["version"] == "1.0"
    assert get(session, fake, "/pypi/target/json").json()["info"]["version"] == "2.0"


def test_xmlrpc_rate_limit_fault(fake: FakePyPI, session: requests.Session):
    fake.create_project("a")
    fake.inject("changelog_since_serial", "xmlrpc_rate_limit", times=2, seconds=5)
    for _ in range(2):
        with pytest.raises(xmlrpc.client.Fault) as raised:
            rpc(session, fake, "changelog_since_serial", 0)
        assert raised.value.faultCode == -32500
        assert raised.value.faultString == (
            "HTTPTooManyRequests: The action could not be performed because there were too "
            "many requests by the client. Limit may reset in 5 seconds."
        )
    assert rpc(session, fake, "changelog_since_serial", 0) == [["a", None, NOW, "create", 1]]
    assert rpc(session, fake, "changelog_last_serial") == 1
    assert fake.count("changelog_since_serial") == 3


def test_xmlrpc_fault_and_malformed(fake: FakePyPI, session: requests.Session):
    fake.inject("changelog_last_serial", "xmlrpc_fault", code=-32000, string="Boom: x")
    with pytest.raises(xmlrpc.client.Fault) as raised:
        rpc(session, fake, "changelog_last_serial")
    assert (raised.value.faultCode, raised.value.faultString) == (-32000, "Boom: x")
    fake.inject("list_packages_with_serial", "xmlrpc_malformed")
    with pytest.raises(ExpatError):
        rpc(session, fake, "list_packages_with_serial")
    assert rpc(session, fake, "list_packages_with_serial") == {}


def test_backwards_changelog(fake: FakePyPI, session: requests.Session):
    for name in ("a", "b", "c"):
        fake.create_project(name)
    fake.inject("changelog_since_serial", "backwards", times=2)
    assert [row[4] for row in rpc(session, fake, "changelog_since_serial", 0)] == [3, 2, 1]
    short = [row[4] for row in rpc(session, fake, "changelog_since_serial", 2)]
    assert short[0] > short[1]
    assert [row[4] for row in rpc(session, fake, "changelog_since_serial", 0)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("kind", "params"),
    [("status", {"code": 503}), ("rate_limit", {}), ("reset", {}), ("truncate", {}),
     ("empty", {}), ("oversized", {"size": 4096}), ("not_utf8", {})],
)  # fmt: skip
def test_http_faults_on_xmlrpc(
    fake: FakePyPI, session: requests.Session, kind: str, params: dict[str, Any]
):
    fake.create_project("a")
    fake.inject("changelog_last_serial", kind, **params)
    body = xmlrpc.client.dumps((), "changelog_last_serial")
    try:
        response = session.post(fake.url + "/RPC2", data=body, timeout=10)
    except requests.RequestException:
        assert kind in ("reset", "truncate")
    else:
        assert kind not in ("reset", "truncate")
        if kind == "status":
            assert response.status_code == 503
        elif kind == "rate_limit":
            assert response.status_code == 429
        else:
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/xml")
            with pytest.raises(ExpatError):
                xmlrpc.client.loads(response.content)
    assert rpc(session, fake, "changelog_last_serial") == 1


def test_inject_refuses_faults_that_cannot_fire(fake: FakePyPI):
    with pytest.raises(ValueError, match="unknown fault"):
        fake.inject("root", "explode")
    with pytest.raises(TypeError):
        fake.inject("root", "status", cod=500)
    with pytest.raises(ValueError):
        fake.inject("numpy", "xmlrpc_rate_limit")
    with pytest.raises(ValueError):
        fake.inject("list_packages_with_serial", "backwards")
    with pytest.raises(ValueError):
        fake.inject("changelog_since_serial", "stale")
    with pytest.raises(ValueError):
        fake.inject("root", "status", times=0)
    fake.inject("numpy", "status", times=3)
    fake.inject("changelog_last_serial", "slow", seconds=0)
    assert fake.faults_pending() == 4
    fake.clear_faults()
    assert fake.faults_pending() == 0


def test_faults_for_one_target_fire_in_order(fake: FakePyPI, session: requests.Session):
    fake.create_project("t")
    fake.inject("t", "status", code=500)
    fake.inject("t", "rate_limit", times=2)
    codes = [get(session, fake, "/simple/t/").status_code for _ in range(4)]
    assert codes == [500, 429, 429, 200]


# --- request log, populate, churn, concurrency, CLI ----------------------------------------


def test_request_log_and_counts(fake: FakePyPI, session: requests.Session):
    fake.add_release("Logged", "1.0")
    get(session, fake, "/simple/")
    get(session, fake, "/simple/Logged/")  # a redirect, then the page
    get(session, fake, "/simple/logged/")
    get(session, fake, "/simple/missing/")
    get(session, fake, "/pypi/Logged/json")
    rpc(session, fake, "changelog_since_serial", 0)
    rpc(session, fake, "changelog_since_serial", 4)
    rpc(session, fake, "changelog_last_serial")
    assert fake.count("changelog_since_serial") == 2
    assert fake.count("xmlrpc") == 3
    assert fake.count("root") == 1
    assert fake.count("redirect") == 1
    assert fake.count("json_api") == 1
    assert fake.count_pages() == 3
    assert fake.count_pages("Logged") == 2
    assert fake.pages_served == 2
    record = fake.requests[0]
    assert (record.method, record.path, record.xmlrpc_method, record.status) == (
        "GET",
        "/simple/",
        None,
        200,
    )
    assert fake.requests[-1].xmlrpc_method == "changelog_last_serial"
    fake.reset_log()
    assert fake.requests == []
    assert fake.pages_served == 0


def test_synthetic_file_counts_have_a_long_tail():
    import random

    rng = random.Random(1)
    counts = [synthetic_file_count(rng, 8000) for _ in range(100_000)]
    assert sum(1 for c in counts if c <= 20) / len(counts) > 0.9
    assert max(counts) > 1000
    assert min(counts) >= 1


def test_populate_is_deterministic_and_varied():
    first, second, other = FakePyPI(), FakePyPI(), FakePyPI()
    assert first.populate(2000, seed=5) == 2000
    second.populate(2000, seed=5)
    other.populate(2000, seed=6)
    names = first.project_names()
    assert len(names) == 2000
    assert names == second.project_names() != other.project_names()
    assert all(first.page(n) == second.page(n) for n in names[::97])
    displays = [first.display_name(n) for n in names]
    for needle in ("-", "_", "."):
        assert any(needle in d for d in displays), needle
    assert any(d != d.lower() for d in displays)
    assert any(d != normalize(d) for d in displays)
    journal = first.journal
    assert {r.action for r in journal} == {"create"}
    assert all(first.project_serial(normalize(r.name)) == r.serial for r in journal)
    sizes = [len(first.filenames(n)) for n in names if first.project_status(n) != "quarantined"]
    assert sum(1 for s in sizes if 1 <= s <= 20) / len(sizes) > 0.85
    assert max(sizes) > 20
    assert any(b"data-yanked" in first.page(n) for n in names)
    assert any(b"data-requires-python" in first.page(n) for n in names)


def test_churn_reports_what_changed(fake: FakePyPI):
    fake.populate(60, seed=1)
    result = fake.churn(60, seed=2)
    assert result.from_serial == 60
    assert result.to_serial == fake.last_serial > 60
    assert result.changed and set(result.changed).isdisjoint(result.removed)
    assert all(fake.has_project(name) for name in result.changed)
    assert not any(fake.has_project(name) for name in result.removed)
    mentioned = {normalize(row.name) for row in fake.journal[60:]}
    assert mentioned <= set(result.changed) | set(result.removed)
    assert len({event.action for event in result.events}) >= 4
    assert json.loads(json.dumps(result.to_dict()))["to_serial"] == fake.last_serial


def test_churn_control_endpoint_and_cli(fake: FakePyPI, session: requests.Session):
    fake.populate(30)
    response = session.post(fake.url + "/_fake/churn?events=5&seed=1", timeout=30)
    assert response.status_code == 200
    assert response.json()["to_serial"] == fake.last_serial
    assert len(response.json()["events"]) == 5
    state = get(session, fake, "/_fake/state").json()
    assert state["last_serial"] == fake.last_serial
    completed = subprocess.run(
        [sys.executable, "-m", "tests.fake_pypi", "churn", "--url", fake.url, "--events", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["to_serial"] == fake.last_serial


def test_cli_serves_until_interrupted(session: requests.Session):
    command = [sys.executable, "-m", "tests.fake_pypi", "--projects", "25", "--port", "0"]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            root = session.get(url + "/simple/", timeout=10)
            assert root.text.count("<a href=") == 25
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=20) == 0


def test_concurrent_clients_and_writers_stay_consistent(fake: FakePyPI):
    fake.populate(100, seed=3)
    names = fake.project_names()
    problems: list[str] = []

    def read(slot: int) -> None:
        with requests.Session() as client:
            for step in range(50):
                name = names[(slot * 11 + step) % len(names)]
                response = client.get(f"{fake.url}/simple/{name}/", timeout=10)
                if response.status_code != 200:
                    problems.append(f"{name}: {response.status_code}")
                elif serial_trailer(response.content) != int(response.headers[SERIAL]):
                    problems.append(f"{name}: trailer and header disagree")

    def write(slot: int) -> None:
        for step in range(25):
            fake.add_release(names[slot], f"9.{slot}.{step}", files=1)

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(4)]
    threads += [threading.Thread(target=write, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    journal = fake.journal
    assert [row.serial for row in journal] == list(range(1, len(journal) + 1))
    assert len(journal) == 100 + 3 * 25 * 2  # new release + one file, per call
    for index, row in enumerate(journal):
        if row.action == "new release":  # each call's rows are contiguous
            assert journal[index + 1].action.startswith("add source file")
            assert journal[index + 1].version == row.version
    for name in names[:3]:
        own = [row.serial for row in journal if normalize(row.name) == name]
        assert fake.project_serial(name) == max(own)
        assert serial_trailer(fake.page(name)) == max(own)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_with_a_self_signed_certificate(tmp_path: Path, session: requests.Session):
    cert, key = make_self_signed_cert(tmp_path)
    with FakePyPI(certfile=cert, keyfile=key) as fake:
        fake.create_project("tls")
        assert fake.url.startswith("https://127.0.0.1:")
        response = session.get(fake.url + "/simple/tls/", verify=str(cert), timeout=10)
        assert response.status_code == 200
        assert response.headers[SERIAL] == "1"


def test_add_wheel_serves_a_real_wheel_with_true_hashes(fake, session) -> None:
    """The page's #sha256= and data-core-metadata match the bytes the stand-in serves, and
    the wheel holds METADATA, WHEEL and a RECORD whose hashes are right (pip checks all)."""
    serial = fake.add_wheel("Tiny_Wheel", "1.0", requires_python=">=3.8")
    assert [row.action for row in fake.journal] == [
        "create",
        "new release",
        "add py3 file tiny_wheel-1.0-py3-none-any.whl",
    ]
    assert fake.project_serial("tiny-wheel") == serial
    page = get(session, fake, "/simple/tiny-wheel/").text
    href, metadata_hash = re.search(
        r'<a href="([^"]+)" data-requires-python="&gt;=3.8" '
        r'data-dist-info-metadata="sha256=(\w+)" data-core-metadata="sha256=\w+">',
        page,
    ).groups()
    url, _, fragment = href.partition("#sha256=")
    assert url.startswith(f"{fake.url}/packages/")
    wheel = session.get(url, timeout=10)
    assert wheel.status_code == 200
    assert hashlib.sha256(wheel.content).hexdigest() == fragment
    assert (
        "".join(url.split("/")[-4:-1]) == hashlib.blake2b(wheel.content, digest_size=32).hexdigest()
    )
    metadata = session.get(url + ".metadata", timeout=10).content
    assert hashlib.sha256(metadata).hexdigest() == metadata_hash
    assert (
        metadata
        == b"Metadata-Version: 2.1\nName: Tiny_Wheel\nVersion: 1.0\nRequires-Python: >=3.8\n"
    )

    with zipfile.ZipFile(io.BytesIO(wheel.content)) as archive:
        info = "tiny_wheel-1.0.dist-info"
        assert archive.read(f"{info}/METADATA") == metadata
        assert b"Root-Is-Purelib: true" in archive.read(f"{info}/WHEEL")
        for line in archive.read(f"{info}/RECORD").decode().splitlines():
            path, digest, size = line.split(",")
            if path.endswith("RECORD"):
                continue
            data = archive.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={expected.decode()}", len(data))
    assert get(session, fake, "/packages/00/00/nothing/none.whl").status_code == 404
    assert fake.count("file") == 3
