"""End to end with the real TUF client: what RSTUF signs is what the mirror serves.

The chain under test: stand-in PyPI -> ``pypi_mirror.py`` (first sync) ->
``generate_csv.py`` -> the CSV's rows registered in the stand-in RSTUF ->
TUF metadata built by python-tuf from exactly what that RSTUF published
(``FakeRstuf.view``, never the mirror's disk; see ``tests/tuf_repo.py``:
consistent snapshots, succinct hash bins ``bins-0`` .. ``bins-f``) -> the
metadata and the mirror's ``pypi_mirror/`` served over loopback HTTP ->
``tuf.ngclient.Updater`` downloads each page from its hash-prefixed copy
(``simple/<name>/<blake2b-256>.index.html``) and verifies length and hash.
Then again after PyPI changes that the mirror delivers to RSTUF itself.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    LengthOrHashMismatchError,
    RepositoryError,
)
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from pypi_index_mirror.mirror import roots as root_index
from pypi_index_mirror.mirror import store as mirror_store
from pypi_index_mirror.mirror.store import ROOT_TARGET, digest_file, iter_targets, project_target
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.rstuf import bootstrap_csv as generate_csv
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import FakeRstuf, hash_bin_role
from tests.mirror_helpers import Mirror, upstream_listing, upstream_page
from tests.tuf_repo import TufRepository, serve_directory

RSTUF_FAST = ["--rstuf-poll", "0.05"]
NUMBER_OF_BINS = 16
# Names with '.', '_', '-' and capitals: the target path is the normalized name.
PROJECTS = ("Django", "numpy", "zope.interface", "Foo_Bar", "requests", "PyYAML", "my-Pkg.Two")


# --- the world ------------------------------------------------------------------


@dataclass
class World:
    tmp: Path
    pypi: FakePyPI
    rstuf: FakeRstuf
    mirror: Mirror
    repo: TufRepository
    metadata_url: str
    mirror_url: str
    clients: int = 0
    csv_rows: list[list[str]] = field(default_factory=list)

    def client(self, metadata_dir: Path | None = None, trust_cached: bool = False) -> Updater:
        """A TUF client; fresh ones trust only the initial root (1.root.json)."""
        if metadata_dir is None:
            self.clients += 1
            metadata_dir = self.tmp / "clients" / str(self.clients)
        metadata_dir.mkdir(parents=True, exist_ok=True)
        return Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=self.metadata_url,
            target_dir=str(metadata_dir / "targets"),
            target_base_url=self.mirror_url,
            config=UpdaterConfig(prefix_targets_with_hash=True),
            bootstrap=None if trust_cached else self.repo.root_bytes,
        )

    def sync(self, *extra: str) -> None:
        """One mirror run that tells RSTUF, then RSTUF's new metadata is published."""
        self.mirror.rstuf_url = self.rstuf.url
        assert self.mirror.run(*RSTUF_FAST, *extra) == 0
        self.repo.publish(self.rstuf.view)

    def served(self, target: str) -> bytes:
        return self.mirror.layout.path_of_target(target).read_bytes()

    def prefixed_copy(self, info: TargetFile) -> Path:
        """The file the client fetches for `info` (consistent snapshots)."""
        directory, _, basename = info.path.rpartition("/")
        name = f"{info.hashes['blake2b-256']}.{basename}"
        return self.mirror.layout.served_dir / directory / name


def fetch(updater: Updater, target: str, into: Path) -> bytes | None:
    """Download and verify `target`; None when the TUF metadata does not sign it."""
    info = updater.get_targetinfo(target)
    if info is None:
        return None
    into.mkdir(parents=True, exist_ok=True)
    path = updater.download_target(info, str(into / target.replace("/", "_")))
    return Path(path).read_bytes()


def csv_import(mirror: Mirror, rstuf: FakeRstuf, output: Path) -> list[list[str]]:
    """generate_csv.py, then register its rows in RSTUF as `import-artifacts` would."""
    argv = ["--mirror-dir", str(mirror.root), "--state", str(mirror.state)]
    assert generate_csv.main([*argv, "--output", str(output), "--workers", "2", "-q"]) == 0
    with open(output, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter=";"))  # RSTUF CLI's parser: no header
    lines = output.read_text(encoding="utf-8").splitlines(keepends=True)
    # the released CLI (line.split(";")) must read the same four values
    assert [line.split(";")[:4] for line in lines] == [row[:4] for row in rows]
    rstuf.import_artifacts(
        {
            path: {"length": int(size), "hashes": {hash_type: digest}}
            for path, size, hash_type, digest, *_ in rows
        }
    )
    return rows


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FakePyPI() as pypi, FakeRstuf(step=0.02, number_of_bins=NUMBER_OF_BINS) as rstuf:
        for name in PROJECTS:
            pypi.add_release(name, "1.0", files=2)
        mirror = Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0  # first sync: nothing goes to RSTUF yet
        assert rstuf.accepted == [] and rstuf.view == {}
        rows = csv_import(mirror, rstuf, tmp_path / "artifacts.csv")
        mirror.had_rstuf = True  # from now on its changes are owed to RSTUF
        repo = TufRepository(tmp_path / "metadata", NUMBER_OF_BINS)
        repo.publish(rstuf.view)
        with (
            serve_directory(repo.directory) as metadata_url,
            serve_directory(mirror.layout.served_dir) as mirror_url,
        ):
            yield World(tmp_path, pypi, rstuf, mirror, repo, metadata_url, mirror_url, 0, rows)


def assert_client_sees_upstream(world: World, updater: Updater, into: Path) -> None:
    """Every project PyPI lists, and the root index, verify and equal PyPI / the mirror."""
    listing = upstream_listing(world.pypi.url)
    root = fetch(updater, ROOT_TARGET, into)
    assert root is not None and root == world.served(ROOT_TARGET)
    assert dict(root_index.iter_root_index(root.splitlines())) == listing
    for name in listing:
        target = project_target(name)
        page = fetch(updater, target, into)
        assert page is not None, f"{target} is not signed"
        assert page == world.served(target) == upstream_page(world.pypi.url, name), target


def flip_byte(path: Path, offset: int = 20) -> None:
    """Change one byte of the file in place (its hard links see it too)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x20]))


# --- tests ----------------------------------------------------------------------


def test_bootstrap_import_verifies_every_page_and_the_root_index(world: World) -> None:
    targets = list(iter_targets(world.mirror.layout))
    assert [row[0] for row in world.csv_rows] == targets
    assert len(targets) == len(PROJECTS) + 1
    assert set(world.rstuf.view) == set(targets) == set(world.repo.targets())
    # the bins the TUF metadata uses are the ones RSTUF assigned
    roles = {path: row.role for path, row in world.rstuf.rows.items()}
    assert roles == {path: world.repo.role_for(path) for path in targets}
    assert roles == {path: hash_bin_role(path, NUMBER_OF_BINS) for path in targets}
    assert len(set(roles.values())) > 1, "the targets should spread over several bins"

    updater = world.client()
    assert_client_sees_upstream(world, updater, world.tmp / "downloads")
    for name in ("zope-interface", "foo-bar", "my-pkg-two", "pyyaml"):
        info = updater.get_targetinfo(project_target(name))
        assert info is not None
        assert world.prefixed_copy(info).is_file()
    for display in ("zope.interface", "Foo_Bar", "PyYAML", "Django"):
        assert updater.get_targetinfo(f"simple/{display}/index.html") is None, "not normalized"


def test_updates_sent_by_the_mirror_verify(world: World) -> None:
    before_dir = world.tmp / "clients" / "before"
    assert_client_sees_upstream(world, world.client(before_dir), world.tmp / "before")
    numpy_before = world.served("simple/numpy/index.html")

    world.pypi.add_release("numpy", "1.0", files=1)  # an added file
    world.pypi.remove_project("Django")
    world.pypi.rename_project("Foo_Bar", "Foo.Baz")
    world.pypi.create_project("Brand_New")
    world.sync()

    fresh = world.client()  # trusts only the initial root
    into = world.tmp / "after"
    numpy_after = fetch(fresh, "simple/numpy/index.html", into)
    assert numpy_after is not None and numpy_after != numpy_before
    assert numpy_after == world.served("simple/numpy/index.html")
    for gone in ("simple/django/index.html", "simple/foo-bar/index.html"):
        assert fresh.get_targetinfo(gone) is None, gone
    assert fetch(fresh, "simple/foo-baz/index.html", into) == upstream_page(
        world.pypi.url, "foo-baz"
    )
    root = fetch(fresh, ROOT_TARGET, into)
    assert root is not None
    members = dict(root_index.iter_root_index(root.splitlines()))
    assert members["foo-baz"] == "Foo.Baz" and members["brand-new"] == "Brand_New"
    assert "django" not in members and "foo-bar" not in members
    assert_client_sees_upstream(world, fresh, into)

    # the first client's metadata directory, refreshed by a new Updater, agrees
    again = world.client(before_dir, trust_cached=True)
    assert_client_sees_upstream(world, again, world.tmp / "again")
    assert again.get_targetinfo("simple/django/index.html") is None

    # a second round: the renamed project changes, one goes, one is quarantined
    world.pypi.add_release("Foo.Baz", "2.0", files=1)
    world.pypi.remove_project("numpy")
    world.pypi.quarantine_project("requests")  # page stays (no files), leaves the listing
    world.sync()
    latest = world.client()
    assert latest.get_targetinfo("simple/numpy/index.html") is None
    assert_client_sees_upstream(world, latest, world.tmp / "latest")
    quarantined = fetch(latest, "simple/requests/index.html", world.tmp / "latest")
    assert (
        quarantined
        == upstream_page(world.pypi.url, "requests")
        == world.served("simple/requests/index.html")
    )


def test_client_with_older_metadata_gets_the_old_page_during_grace(world: World) -> None:
    target = "simple/zope-interface/index.html"
    old_page = world.served(target)
    early = world.client()
    early.refresh()  # top-level metadata only: its bins are loaded after the update

    world.pypi.add_release("zope.interface", "2.0", files=1)
    world.sync()
    assert world.served(target) != old_page

    old_info = early.get_targetinfo(target)  # from the bins its (older) snapshot names
    assert old_info is not None
    assert old_info.length == len(old_page)
    assert world.prefixed_copy(old_info).is_file(), "old copy kept for --grace"
    path = early.download_target(old_info, str(world.tmp / "early.html"))
    assert Path(path).read_bytes() == old_page

    assert fetch(world.client(), target, world.tmp / "new") == world.served(target)

    # once the grace period is over the old copy is gone; a current client is unaffected
    world.sync("--grace", "0")
    assert not world.prefixed_copy(old_info).exists()
    with pytest.raises(DownloadHTTPError):
        early.download_target(old_info, str(world.tmp / "late.html"))
    assert fetch(world.client(), target, world.tmp / "newer") == world.served(target)


@pytest.mark.parametrize("target", ["simple/numpy/index.html", ROOT_TARGET])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_page_tampered_on_disk_fails_verification(world: World, target: str, damage: str) -> None:
    updater = world.client()
    info = updater.get_targetinfo(target)
    assert info is not None
    fetched = world.prefixed_copy(info)
    page = world.mirror.layout.path_of_target(target)
    original = fetched.read_bytes()
    if damage == "flip":
        flip_byte(fetched)
    else:
        with open(fetched, "r+b") as handle:
            handle.truncate(len(original) - 1)
    assert fetched.samefile(page) and page.read_bytes() != original  # both names damaged
    with pytest.raises(LengthOrHashMismatchError):
        updater.download_target(info, str(world.tmp / "tampered.html"))
    assert not (world.tmp / "tampered.html").exists()


def test_page_grown_on_disk_is_refused(world: World) -> None:
    updater = world.client()
    info = updater.get_targetinfo("simple/requests/index.html")
    assert info is not None
    with open(world.prefixed_copy(info), "ab") as handle:
        handle.write(b"<a href='https://evil.example/requests-9.tar.gz'>requests-9</a>\n")
    with pytest.raises((RepositoryError, DownloadError)):
        updater.download_target(info, str(world.tmp / "grown.html"))


def test_pages_rstuf_never_registered_cannot_be_downloaded(world: World) -> None:
    numpy_signed = world.served("simple/numpy/index.html")
    root_signed = world.served(ROOT_TARGET)
    # The mirror updates without RSTUF: its changes wait in the outbox.
    world.pypi.create_project("Brand_New")
    world.pypi.add_release("numpy", "1.0", files=1)
    world.mirror.rstuf_url = None
    assert world.mirror.run() == cli_support.EXIT_PARTIAL  # owed to RSTUF
    world.repo.publish(world.rstuf.view)
    # and someone drops a page of their own into the served tree
    evil_dir = world.mirror.layout.project_dir("evil")
    evil_dir.mkdir()
    evil = b"<html><body><a href='https://evil.example/x.tar.gz'>x</a></body></html>\n"
    (evil_dir / "index.html").write_bytes(evil)
    digest = digest_file(evil_dir / "index.html").hexdigest
    (evil_dir / f"{digest}.index.html").write_bytes(evil)

    updater = world.client()
    into = world.tmp / "unregistered"
    for target in ("simple/brand-new/index.html", "simple/evil/index.html"):
        response = requests.get(world.mirror_url + target, timeout=10)
        with response:
            assert response.status_code == 200, "the mirror does serve it"
        assert updater.get_targetinfo(target) is None, target
    # a changed page the metadata does not know yet: the client gets the signed old bytes
    assert world.served("simple/numpy/index.html") != numpy_signed
    assert fetch(updater, "simple/numpy/index.html", into) == numpy_signed
    assert fetch(updater, ROOT_TARGET, into) == root_signed

    # the next run with RSTUF delivers the outbox; the unregistered page stays unsigned
    world.sync()
    current = world.client()
    assert fetch(current, "simple/brand-new/index.html", into) == world.served(
        "simple/brand-new/index.html"
    )
    assert fetch(current, "simple/numpy/index.html", into) == world.served(
        "simple/numpy/index.html"
    )
    assert current.get_targetinfo("simple/evil/index.html") is None


def test_metadata_comes_from_rstuf_not_from_the_mirror_disk(world: World) -> None:
    """A page registered with other bytes than the mirror serves is refused."""
    target = "simple/requests/index.html"
    page = world.served(target)
    forged = bytearray(page)
    forged[-30] ^= 1
    digest = mirror_store.digest_bytes(bytes(forged))
    forged_info = {"length": digest.length, "hashes": {digest.algorithm: digest.hexdigest}}
    world.rstuf.import_artifacts({target: forged_info})
    world.repo.publish(world.rstuf.view)
    updater = world.client()
    info = updater.get_targetinfo(target)
    assert info is not None and info.hashes["blake2b-256"] == digest.hexdigest
    assert not world.prefixed_copy(info).exists()
    with pytest.raises(DownloadHTTPError):  # the mirror has no copy under that hash
        updater.download_target(info, str(world.tmp / "forged.html"))
    # served under the registered hash but with the mirror's bytes: the hash check fails
    shutil.copyfile(world.mirror.layout.path_of_target(target), world.prefixed_copy(info))
    with pytest.raises(LengthOrHashMismatchError):
        updater.download_target(info, str(world.tmp / "forged.html"))


def test_full_check_repairs_a_tampered_page(world: World) -> None:
    for path in (world.mirror.layout.project_page("numpy"), world.mirror.layout.root_page):
        flip_byte(path, 60)
    updater = world.client()
    info = updater.get_targetinfo("simple/numpy/index.html")
    assert info is not None
    with pytest.raises(LengthOrHashMismatchError):
        updater.download_target(info, str(world.tmp / "damaged.html"))
    world.sync("--full-check")  # repairs a page "damaged on disk" (docs/operations.md)
    assert_client_sees_upstream(world, world.client(), world.tmp / "repaired")


def test_rename_that_keeps_the_normalized_name(world: World) -> None:
    """A rename that changes only case or punctuation changes the root index's display name.

    For the changelog row ``("NumPy", None, t, "rename from numpy", serial)``
    both names normalize to ``numpy``, with one serial: `projects_to_refresh`
    merges the new name last, so the root index (and what RSTUF signs of it)
    says ``NumPy`` as PyPI does, not the old spelling until a --full-check.
    """
    world.pypi.rename_project("numpy", "NumPy")
    world.pypi.rename_project("Foo_Bar", "foo.bar")
    world.sync()
    updater = world.client()
    root = fetch(updater, ROOT_TARGET, world.tmp / "renamed")
    assert root is not None and root == world.served(ROOT_TARGET)  # signed as served
    members = dict(root_index.iter_root_index(root.splitlines()))
    assert (members["numpy"], members["foo-bar"]) == ("NumPy", "foo.bar")
    assert_client_sees_upstream(world, updater, world.tmp / "renamed")


def test_signed_page_stays_downloadable_while_rstuf_is_behind(world: World) -> None:
    """While RSTUF has not published a change, the copy it still signs must stay served.

    An old hash-prefixed copy is deleted only once RSTUF has confirmed the new
    page and the grace has passed since (`MirrorWriter.collect_retired`), not
    when the grace has passed since the mirror wrote the new page: with RSTUF
    unreachable for longer than --grace, TUF clients still download the bytes
    RSTUF's metadata names. ``--grace 0``: the grace is over at once.
    """
    target = "simple/numpy/index.html"
    signed = world.served(target)
    world.pypi.add_release("numpy", "1.0", files=1)
    world.mirror.rstuf_url = "http://127.0.0.1:9"  # RSTUF is down
    assert world.mirror.run(*RSTUF_FAST, "--grace", "0") == cli_support.EXIT_PARTIAL
    assert world.served(target) != signed
    assert fetch(world.client(), target, world.tmp / "during") == signed
    assert world.mirror.run(*RSTUF_FAST, "--grace", "0") == cli_support.EXIT_PARTIAL
    world.repo.publish(world.rstuf.view)  # RSTUF's metadata has not moved
    assert fetch(world.client(), target, world.tmp / "later") == signed
    world.sync()  # RSTUF is back: the outbox is delivered
    assert_client_sees_upstream(world, world.client(), world.tmp / "back")
