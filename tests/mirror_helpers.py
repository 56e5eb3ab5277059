"""Shared helpers for tests that run pypi_mirror.py against the stand-ins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from pypi_index_mirror.mirror import roots as root_index
from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.store import (
    PAGE_NAMES,
    MirrorLayout,
    digest_bytes,
    digest_file,
    iter_targets,
    prefixed_name,
)
from pypi_index_mirror.ops import command as pypi_mirror

View = dict[str, dict]
REPO = Path(__file__).resolve().parent.parent
FAST = ["--xmlrpc-interval", "0", "--backoff", "0.01", "--retries", "2", "--workers", "4"]
# A consistent-snapshot copy: a page's blake2b-256 and its name, hard-linked beside it.
PREFIXED_COPY = re.compile(r"[0-9a-f]{64}\.index\.(html|v1_json)")


@dataclass
class Mirror:
    """One mirror directory and its state file, driven through main() or the CLI.

    A mirror that never had an RSTUF URL runs with ``--no-rstuf`` (a mirror
    without RSTUF on purpose); once it had one, clearing `rstuf_url` again is an
    RSTUF left unconfigured, whose changes wait in the outbox.
    """

    root: Path
    state: Path
    pypi_url: str
    rstuf_url: str | None = None
    had_rstuf: bool = False

    def __post_init__(self) -> None:
        self.had_rstuf = self.had_rstuf or bool(self.rstuf_url)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "rstuf_url" and value:
            object.__setattr__(self, "had_rstuf", True)
        object.__setattr__(self, name, value)

    @property
    def layout(self) -> MirrorLayout:
        return MirrorLayout(self.root)

    def args(self, *extra: str) -> list[str]:
        args = ["--mirror-dir", str(self.root), "--state", str(self.state)]
        args += ["--pypi-url", self.pypi_url, *FAST]
        if self.rstuf_url:
            args += ["--rstuf-url", self.rstuf_url, "--rstuf-wait", "20"]
        elif not self.had_rstuf:
            args += ["--no-rstuf"]
        return [*args, *extra]

    def run(self, *extra: str) -> int:
        """main(argv) in this process."""
        return pypi_mirror.main(self.args(*extra))

    def cli(
        self, *extra: str, env: dict | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """The real command line, as cron runs it."""
        return subprocess.run(
            [sys.executable, str(REPO / "pypi_mirror.py"), *self.args(*extra)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            cwd=self.root.parent,
        )

    def popen(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(REPO / "pypi_mirror.py"), *self.args(*extra)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root.parent,
        )

    def serial(self) -> int | None:
        return load_state(self.state).serial

    def page(self, name: str) -> bytes | None:
        path = self.layout.project_page(name)
        return path.read_bytes() if path.exists() else None

    def root_projects(self) -> dict[str, str]:
        return dict(root_index.iter_root_index(self.layout.root_page.read_bytes().splitlines()))

    def targets(self) -> dict[str, bytes]:
        """Every served page (not the prefixed copies) by target path."""
        served = self.layout.served_dir
        found = {}
        for path in served.rglob("*"):
            if path.is_file() and not PREFIXED_COPY.fullmatch(path.name):
                found[path.relative_to(served).as_posix()] = path.read_bytes()
        return found


def upstream_page(
    pypi_url: str, name: str, session: requests.Session | None = None
) -> bytes | None:
    """What the stand-in PyPI serves for a project right now (None: 404)."""
    get = session.get if session is not None else requests.get
    response = get(f"{pypi_url}/simple/{name}/", timeout=10, allow_redirects=False)
    with response:
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.content


def upstream_json_page(pypi_url: str, name: str) -> bytes | None:
    """The PEP 691 JSON page the stand-in PyPI serves for a project right now (None: 404)."""
    response = requests.get(
        f"{pypi_url}/simple/{name}/",
        timeout=10,
        allow_redirects=False,
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with response:
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.content


def upstream_listing(pypi_url: str) -> dict[str, str]:
    """normalized -> display name of every project PyPI lists (root HTML)."""
    response = requests.get(f"{pypi_url}/simple/", timeout=10, headers={"Accept": "text/html"})
    with response:
        links = re.findall(r'<a href="/simple/([^/]+)/">([^<]*)</a>', response.text)
    import html

    return {name: html.unescape(display) for name, display in links}


def assert_mirror_matches_upstream(mirror: Mirror) -> None:
    """The mirror holds exactly PyPI's listed projects, each page byte for byte."""
    listing = upstream_listing(mirror.pypi_url)
    assert mirror.root_projects() == listing
    with requests.Session() as session:  # one kept-alive connection for every page
        for name in listing:
            assert mirror.page(name) == upstream_page(mirror.pypi_url, name, session), name
    assert_consistent(mirror)


def assert_consistent(mirror: Mirror) -> None:
    """No temp file anywhere served; every page has its hash-prefixed copy with the same bytes."""
    served = mirror.layout.served_dir
    for path in served.rglob("*"):
        assert ".tmp" not in path.name, path
        if path.name in PAGE_NAMES:
            copy = path.parent / prefixed_name(digest_file(path).hexdigest, path.name)
            assert copy.exists() and os.path.samefile(copy, path), copy


def files_outside(root: Path, allowed: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and allowed not in p.parents]


def page_filenames(page: bytes) -> list[str]:
    return re.findall(r">([^<>]+)</a><br />", page.decode())


def mirror_view(layout: MirrorLayout) -> View:
    """What RSTUF should publish for this mirror: every target with its length and hash."""
    view = {}
    for target in iter_targets(layout):
        digest = digest_file(layout.path_of_target(target))
        view[target] = {"length": digest.length, "hashes": {"blake2b-256": digest.hexdigest}}
    return view


def signed_mirror(directory: Path, pypi_url: str, rstuf, *extra: str) -> Mirror:
    """A mirror in `directory` after its first sync (`extra` options), imported into
    `rstuf` as the bootstrap CSV would be, its later runs delivering to `rstuf`."""
    mirror = Mirror(directory / "pypi-index-mirror", directory / "state.json", pypi_url)
    assert mirror.run(*extra) == 0  # first sync: RSTUF learns it from the CSV
    bootstrap(rstuf, mirror_view(mirror.layout))
    mirror.rstuf_url = rstuf.url
    return mirror


def bootstrap(rstuf, view: View) -> None:
    """RSTUF's CSV import (``rstuf admin import-artifacts``) of `view`, the first sync's pages."""
    rstuf.import_artifacts(view)


def write_owed_pages(layout: MirrorLayout, targets: list[str]) -> set[str]:
    """A small page at each of `targets` (``simple/<name>/index.html``) with its prefixed
    copy, as a sync leaves them: what an outbox owes RSTUF, for delivery tests and benches."""
    for target in targets:
        page = layout.path_of_target(target)
        page.parent.mkdir(parents=True, exist_ok=True)
        body = f"<html>{target}</html>".encode()
        page.write_bytes(body)
        (page.parent / prefixed_name(digest_bytes(body).hexdigest, page.name)).hardlink_to(page)
    return set(targets)
