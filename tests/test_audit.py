"""The audit (``tuf_audit``): the served tree held against what RSTUF's TUF metadata signs.

The metadata is built with python-tuf from what the stand-in RSTUF published
(``tests/tuf_repo.py``: consistent snapshots, succinct hash bins like RSTUF's,
ed25519 keys) and served over loopback; the mirror is a real first sync of
the stand-in PyPI. The comparison itself is tested as pure functions first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Delegations, Metadata, MetaFile, SuccinctRoles, TargetFile, Targets

from pypi_index_mirror.audit import compare as audit_compare
from pypi_index_mirror.audit import metadata as tuf_metadata
from pypi_index_mirror.audit import tuf as tuf_audit
from pypi_index_mirror.audit.compare import (
    COPY_MISSING,
    MISMATCH,
    MISSING,
    UNSIGNED,
    DiskFacts,
    FileFacts,
    SignedTarget,
)
from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.store import (
    ROOT_TARGET,
    digest_bytes,
    digest_file,
    normalize_name,
    project_target,
)
from pypi_index_mirror.ops.cli import EXIT_FAILED, EXIT_PARTIAL
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import ADD, REMOVE, FakeRstuf
from tests.mirror_helpers import (
    Mirror,
    assert_mirror_matches_upstream,
    bootstrap,
    mirror_view,
    upstream_page,
)
from tests.tuf_repo import TufRepository, serve_directory

NUMBER_OF_BINS = 16
PROJECTS = ("Django", "numpy", "zope.interface", "Foo_Bar", "requests", "PyYAML", "six")
NOW = datetime(2030, 1, 1, tzinfo=UTC)

# --- the comparison, pure ----------------------------------------------------------------


def target(data: bytes, *algorithms: str) -> SignedTarget:
    hashes = tuple((a, digest_bytes(data, a).hexdigest) for a in algorithms or ("blake2b-256",))
    return SignedTarget(len(data), hashes)


def facts(data: bytes) -> FileFacts:
    return FileFacts(len(data), {"blake2b-256": digest_bytes(data).hexdigest})


def test_compare_names_each_kind_of_difference() -> None:
    page, other = b"<html>page</html>", b"<html>tampered</html>"
    signed = {
        "simple/same/index.html": target(page),
        "simple/tampered/index.html": target(page),
        "simple/gone/index.html": target(page),
        "simple/no-copy/index.html": target(page),
        "simple/bad-copy/index.html": target(page),
        "simple/longer/index.html": SignedTarget(len(page) + 1, target(page).hashes),
    }
    on_disk = {
        "simple/same/index.html": DiskFacts(facts(page), facts(page)),
        "simple/tampered/index.html": DiskFacts(facts(other), facts(other)),
        "simple/no-copy/index.html": DiskFacts(facts(page), None),
        "simple/bad-copy/index.html": DiskFacts(facts(page), facts(other)),
        "simple/longer/index.html": DiskFacts(facts(page), facts(page)),
        "simple/ghost/index.html": DiskFacts(facts(page), None),
    }
    found = [d.line() for d in audit_compare.compare(signed, on_disk)]
    assert found == [
        f"{COPY_MISSING} simple/bad-copy/index.html",
        f"{UNSIGNED} simple/ghost/index.html",
        f"{MISSING} simple/gone/index.html",
        f"{MISMATCH} simple/longer/index.html",
        f"{COPY_MISSING} simple/longer/index.html",
        f"{COPY_MISSING} simple/no-copy/index.html",
        f"{MISMATCH} simple/tampered/index.html",
        f"{COPY_MISSING} simple/tampered/index.html",
    ]
    assert audit_compare.compare({}, {}) == []


def test_every_listed_hash_must_match_and_unknown_algorithms_never_do() -> None:
    page = b"page"
    both = target(page, "blake2b-256", "sha256")
    assert audit_compare.matches(both, FileFacts(4, dict(both.hashes)))
    assert not audit_compare.matches(both, facts(page)), "sha256 was not computed"
    odd = SignedTarget(4, (("md5", "0" * 32),))  # not one read_disk_facts computes
    assert not audit_compare.matches(odd, facts(page))


def test_copy_path_is_what_a_consistent_snapshot_client_downloads() -> None:
    assert audit_compare.copy_path("simple/numpy/index.html", "ab") == "simple/numpy/ab.index.html"
    assert audit_compare.copy_path("index.html", "ab") == "ab.index.html"
    json_page = "simple/numpy/index.v1_json"
    assert audit_compare.copy_path(json_page, "cd") == "simple/numpy/cd.index.v1_json"
    sha_first = target(b"x", "sha256", "blake2b-256")
    assert sha_first.copy_digest == digest_bytes(b"x", "sha256").hexdigest


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "/etc/passwd", "simple//index.html", "simple/./x", "a\\b", ""]
)
def test_unsafe_signed_paths_are_never_read(tmp_path: Path, path: str) -> None:
    assert not audit_compare.is_safe_target(path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("secret")
    served = tmp_path / "served"
    served.mkdir()
    found = audit_compare.read_disk_facts(str(served), path, target(b"secret"))
    assert found == audit_compare.NO_FILE


def test_disk_facts_read_the_copy_only_when_it_is_not_the_page(tmp_path: Path) -> None:
    page = b"<html>numpy</html>"
    signed = target(page)
    directory = tmp_path / "simple" / "numpy"
    directory.mkdir(parents=True)
    (directory / "index.html").write_bytes(page)
    copy = directory / f"{signed.copy_digest}.index.html"
    read = audit_compare.read_disk_facts
    assert read(str(tmp_path), "simple/numpy/index.html", signed) == DiskFacts(facts(page), None)
    copy.hardlink_to(directory / "index.html")
    assert read(str(tmp_path), "simple/numpy/index.html", signed) == DiskFacts(
        facts(page), facts(page)
    )
    copy.unlink()
    copy.write_bytes(b"other bytes")  # a separate file: read and hashed
    assert read(str(tmp_path), "simple/numpy/index.html", signed).copy == facts(b"other bytes")
    unsigned = read(str(tmp_path), "simple/numpy/index.html", None)
    assert unsigned == DiskFacts(FileFacts(len(page), {}), None)  # stat only
    assert read(str(tmp_path), "simple/numpy", signed).page is None  # a directory is no page


# --- bins, verified with python-tuf's public API (no server) -------------------------------


@dataclass
class Bins:
    delegator: Targets
    signer: CryptoSigner
    succinct: SuccinctRoles

    def sign(
        self, role: str, paths: list[str], version: int = 1, expires: datetime | None = None
    ) -> bytes:
        bins = Targets(version=version, expires=expires or NOW + timedelta(days=1))
        for path in paths:
            bins.targets[path] = TargetFile.from_data(path, path.encode(), ["blake2b-256"])
        metadata = Metadata(bins)
        metadata.sign(self.signer)
        return metadata.to_bytes()


@pytest.fixture
def bins() -> Bins:
    signer = CryptoSigner.generate_ed25519()
    succinct = SuccinctRoles([signer.public_key.keyid], 1, 4, "bins")
    delegator = Targets(expires=NOW + timedelta(days=1))
    delegator.delegations = Delegations(
        keys={signer.public_key.keyid: signer.public_key}, succinct_roles=succinct
    )
    return Bins(delegator, signer, succinct)


def test_verify_bin_accepts_what_its_delegator_signed(bins: Bins) -> None:
    path = "simple/numpy/index.html"
    role = bins.succinct.get_role_for_target(path)
    data = bins.sign(role, [path], version=3)
    meta = MetaFile(
        version=3, length=len(data), hashes={"sha256": digest_bytes(data, "sha256").hexdigest}
    )
    verified = tuf_metadata.verify_bin(data, role, meta, bins.delegator, NOW)
    signed = tuf_metadata.signed_targets(verified)
    assert signed == {
        path: SignedTarget(len(path), (("blake2b-256", digest_bytes(path.encode()).hexdigest),))
    }


def test_verify_bin_refuses_what_a_client_refuses(bins: Bins) -> None:
    path = "simple/numpy/index.html"
    role = bins.succinct.get_role_for_target(path)
    data = bins.sign(role, [path], version=2)
    verify = tuf_metadata.verify_bin

    def problem(data: bytes, meta: MetaFile, role: str = role, now: datetime = NOW) -> str:
        with pytest.raises(tuf_metadata.MetadataRejected) as caught:
            verify(data, role, meta, bins.delegator, now)
        assert "\n" not in str(caught.value)
        return f"{caught.value.problem}: {caught.value.detail}"

    tampered = json.loads(data)
    tampered["signed"]["targets"][path]["length"] = 1
    assert problem(json.dumps(tampered).encode(), MetaFile(2)).startswith("bad signature: " + role)
    assert problem(data, MetaFile(3)) == f"wrong version: expected {role} v3, got v2"
    assert problem(data, MetaFile(2), now=NOW + timedelta(days=2)).startswith(f"expired: {role}")
    assert problem(data, MetaFile(2, length=len(data) - 1)).startswith("length or hashes differ")
    # every bin is signed by the same keys (TAP 15), so another bin's file verifies, but
    # none of its targets is one a client looks for there (test_targets_in_a_bin_not_theirs)
    other = "bins-f" if role != "bins-f" else "bins-0"
    swapped = tuf_metadata.signed_targets(verify(data, other, MetaFile(2), bins.delegator, NOW))
    assert tuf_metadata.split_misplaced(swapped, other, bins.succinct) == ({}, [path])
    assert problem(b"{not json", MetaFile(2)).startswith("invalid: ")
    assert problem(data, MetaFile(2), role="elsewhere").startswith("invalid: elsewhere")


@pytest.mark.parametrize(
    "path",
    ["simple/numpy/index.html", "simple/ünïcode-€/index.html", 'a\\back"slash', "tab\there"],
)
def test_the_signed_payload_is_python_tufs_canonical_json(bins: Bins, path: str) -> None:
    role = bins.succinct.get_role_for_target(path)
    metadata = tuf_metadata.parse_metadata(bins.sign(role, [path, "simple/other/index.html"]), role)
    assert tuf_metadata.signed_payload(metadata.signed) == metadata.signed_bytes


def test_numbers_canonical_json_cannot_hold_are_refused(bins: Bins) -> None:
    document = json.loads(bins.sign("bins-0", ["simple/numpy/index.html"]))
    document["signed"]["targets"]["simple/numpy/index.html"]["custom"] = {"score": 1.5}
    with pytest.raises(tuf_metadata.MetadataRejected, match=r"^TUF metadata rejected: invalid: "):
        tuf_metadata.verify_bin(
            json.dumps(document).encode(), "bins-0", MetaFile(1), bins.delegator, NOW
        )


def test_targets_in_a_bin_not_theirs_sign_nothing(bins: Bins) -> None:
    home = "simple/numpy/index.html"
    role = bins.succinct.get_role_for_target(home)
    stray = next(
        f"simple/p{n}/index.html"
        for n in range(100)
        if bins.succinct.get_role_for_target(f"simple/p{n}/index.html") != role
    )
    signed = {home: target(b"a"), stray: target(b"b")}
    kept, misplaced = tuf_metadata.split_misplaced(signed, role, bins.succinct)
    assert list(kept) == [home] and misplaced == [stray]


# --- against served metadata ----------------------------------------------------------------


@dataclass
class World:
    tmp: Path
    pypi: FakePyPI
    rstuf: FakeRstuf
    mirror: Mirror
    repo: TufRepository
    metadata_url: str

    @property
    def root_file(self) -> Path:
        path = self.tmp / "trusted-root.json"
        if not path.exists():
            path.write_bytes(self.repo.root_bytes)  # 1.root.json: all an operator trusts
        return path

    def config(self, **overrides: object) -> tuf_metadata.AuditConfig:
        settings = {"metadata_url": self.metadata_url, "trusted_root": self.root_file}
        settings.update(hash_workers=2, fetch_workers=2, retries=0, timeout=5.0)
        settings.update(overrides)
        return tuf_metadata.AuditConfig(**settings)  # type: ignore[arg-type]

    def audit(self, **overrides: object) -> tuple[list[str], tuf_audit.AuditReport]:
        found: list[str] = []
        report = tuf_audit.audit(
            self.config(**overrides), self.mirror.layout, lambda d: found.append(d.line())
        )
        return found, report

    def publish(self) -> None:
        """RSTUF's metadata catches up with what the stand-in RSTUF holds."""
        self.repo.publish(self.rstuf.view)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FakePyPI() as pypi, FakeRstuf(step=0.02, number_of_bins=NUMBER_OF_BINS) as rstuf:
        for name in PROJECTS:
            pypi.add_release(name, "1.0", files=2)
        mirror = Mirror(tmp_path / "pypi-index-mirror", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        bootstrap(rstuf, mirror_view(mirror.layout))  # the CSV import
        repo = TufRepository(tmp_path / "metadata", NUMBER_OF_BINS)
        repo.publish(rstuf.view)
        with serve_directory(repo.directory) as metadata_url:
            yield World(tmp_path, pypi, rstuf, mirror, repo, metadata_url)


def test_a_mirror_in_step_has_no_difference(world: World) -> None:
    found, report = world.audit()
    assert found == []
    assert report.targets == report.pages == len(PROJECTS) + 1
    assert report.bins == NUMBER_OF_BINS and report.differences == 0
    assert report.line().startswith(f"summary targets={len(PROJECTS) + 1} pages=")
    threads, _ = world.audit(executor="threads", fetch_workers=1)
    assert threads == []


def test_each_kind_of_difference_is_found_and_named(world: World) -> None:
    layout = world.mirror.layout
    # a page tampered on disk (its hard-linked copy changes with it)
    numpy = layout.project_page("numpy")
    numpy.write_bytes(numpy.read_bytes().replace(b"numpy-1.0", b"numpy-6.6"))
    # a target RSTUF lost (its database restored from an old backup)
    view = world.rstuf.view
    del view[project_target("six")]
    # a ghost: the mirror removed a project, RSTUF still signs it
    django = layout.project_dir("django")
    for file in django.iterdir():
        file.unlink()
    django.rmdir()
    # a missing hash copy
    requests_page = layout.project_page("requests")
    (requests_page.parent / f"{digest_file(requests_page).hexdigest}.index.html").unlink()
    world.repo.publish(view)

    found, report = world.audit()
    path_of = lambda line: line.split()[1]  # noqa: E731
    assert found == sorted(
        found, key=lambda line: (world.repo.role_for(path_of(line)), path_of(line))
    )
    assert sorted(found) == sorted(
        [
            "mismatch simple/numpy/index.html",
            "copy-missing simple/numpy/index.html",
            "unsigned simple/six/index.html",
            "missing simple/django/index.html",
            "copy-missing simple/requests/index.html",
        ]
    )
    assert report.counts == {UNSIGNED: 1, MISMATCH: 1, MISSING: 1, COPY_MISSING: 2}
    assert report.targets == len(PROJECTS) and report.pages == len(PROJECTS)


def test_a_page_changed_while_rstuf_is_behind_keeps_its_signed_copy(world: World) -> None:
    """The mirror wrote a new page and RSTUF has not published it: only `mismatch`."""
    world.pypi.add_release("numpy", "2.0")
    assert world.mirror.run() == 0  # no RSTUF configured: the change waits in the outbox
    found, _ = world.audit()
    assert found == ["mismatch simple/numpy/index.html"]


def test_the_root_is_rotated_from_the_trusted_one(world: World) -> None:
    world.repo.rotate_root()  # 2.root.json: a new timestamp key
    world.publish()
    assert (world.repo.directory / "2.root.json").exists()
    found, report = world.audit()
    assert found == [] and report.targets == len(PROJECTS) + 1


def audit_error(world: World, **overrides: object) -> tuf_metadata.AuditError:
    with pytest.raises(tuf_metadata.AuditError) as caught:
        world.audit(**overrides)
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_bad_signature_stops_the_audit(world: World) -> None:
    world.repo.signers["timestamp"] = CryptoSigner.generate_ed25519()  # a key root does not know
    world.publish()
    error = audit_error(world)
    assert str(error) == "TUF metadata rejected: bad signature: timestamp was signed by 0/1 keys"


def test_a_tampered_bin_stops_the_audit(world: World) -> None:
    role = world.repo.role_for(ROOT_TARGET)
    path = world.repo.directory / f"{world.repo.versions[role]}.{role}.json"
    document = json.loads(path.read_bytes())
    document["signed"]["targets"][ROOT_TARGET]["length"] += 1
    path.write_text(json.dumps(document))
    error = audit_error(world)
    assert str(error) == f"TUF metadata rejected: bad signature: {role} was signed by 0/1 keys"


def test_expired_metadata_stops_the_audit(world: World) -> None:
    world.repo.expires_by_role["timestamp"] = datetime.now(UTC) - timedelta(minutes=1)
    world.publish()
    assert str(audit_error(world)) == "TUF metadata rejected: expired: timestamp.json is expired"


def test_expired_bins_stop_the_audit(world: World) -> None:
    error = audit_error(world, now=lambda: datetime.now(UTC) + timedelta(days=2))
    assert isinstance(error, tuf_metadata.MetadataRejected)
    assert error.problem == "expired" and error.detail.startswith("bins-")


def test_unreachable_metadata_stops_the_audit(world: World) -> None:
    error = audit_error(world, metadata_url="http://127.0.0.1:9/metadata/")
    # the client's first request is for the next root
    url = "http://127.0.0.1:9/metadata/2.root.json"
    assert str(error) == f"TUF metadata unreachable: {url}: Connection refused"


def test_a_lost_bin_stops_the_audit(world: World) -> None:
    role = world.repo.role_for(ROOT_TARGET)
    (world.repo.directory / f"{world.repo.versions[role]}.{role}.json").unlink()
    error = audit_error(world)
    url = f"{world.metadata_url}{world.repo.versions[role]}.{role}.json"
    assert str(error) == f"TUF metadata unreachable: {url} answered HTTP 404"


def test_every_answer_is_size_capped(world: World) -> None:
    error = audit_error(world, max_targets_bytes=100)  # top-level targets, then every bin
    url = f"{world.metadata_url}1.targets.json"
    assert str(error).startswith(f"TUF metadata rejected: too large: {url}: ")
    assert str(error).endswith("larger than the 100-byte limit")


def test_transient_answers_are_retried_and_a_404_is_final(world: World) -> None:
    role = world.repo.role_for(ROOT_TARGET)
    bin_path = f"/{world.repo.versions[role]}.{role}.json"
    failures = {"/timestamp.json": [503, 502], bin_path: [500]}
    with serve_directory(world.repo.directory, failures) as url:
        found, report = world.audit(metadata_url=url, retries=2, backoff=0.01)
        assert found == [] and report.targets == len(PROJECTS) + 1
        assert failures == {"/timestamp.json": [], bin_path: []}
        failures["/timestamp.json"] = [404, 404]
        error = audit_error(world, metadata_url=url, retries=2, backoff=0.01)
        assert str(error) == f"TUF metadata unreachable: {url}timestamp.json answered HTTP 404"
        assert failures["/timestamp.json"] == [404], "a 404 is not retried"


def test_a_trusted_root_that_is_not_one_stops_the_audit(world: World) -> None:
    world.root_file.write_text("{}")
    error = audit_error(world)
    assert str(error).startswith(f"trusted root {world.root_file}: not usable TUF root metadata")
    missing = replace(world.config(), trusted_root=world.tmp / "nowhere.json")
    with pytest.raises(tuf_metadata.TrustedRootUnusable, match=r"nowhere\.json: No such file"):
        tuf_audit.audit(missing, world.mirror.layout, print)


def test_signed_target_reads_one_bin(world: World) -> None:
    root = world.mirror.layout.root_page
    found = tuf_metadata.signed_target(world.config(), ROOT_TARGET)
    assert found == SignedTarget(
        root.stat().st_size, (("blake2b-256", digest_file(root).hexdigest),)
    )
    assert tuf_metadata.signed_target(world.config(), "simple/unknown/index.html") is None


# --- the command line: --audit, --repair, and the bootstrap window ---------------------------

RSTUF_FAST = ["--rstuf-poll", "0.05"]


def audit_args(world: World, *extra: str) -> list[str]:
    return ["--tuf-metadata-url", world.metadata_url, "--tuf-root", str(world.root_file), *extra]


def run_audit(
    world: World, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, list[str]]:
    """``pypi_mirror.py --audit`` in this process; returns the exit code and stdout's lines."""
    capsys.readouterr()
    code = world.mirror.run(*audit_args(world, "--audit", *extra))
    return code, capsys.readouterr().out.splitlines()


def sent(rstuf: FakeRstuf, action: str) -> dict[str, object]:
    """Every path sent with `action` (ADD: its hashes; REMOVE: None), in order."""
    found: dict[str, object] = {}
    for request in rstuf.accepted:
        if request.action == action:
            for item in request.body["artifacts"]:
                if isinstance(item, dict):
                    found[item["path"]] = item["info"]["hashes"]["blake2b-256"]
                else:
                    found[item] = None
    return found


def test_cli_audit_exits_0_when_in_step_and_4_when_apart(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run_audit(world, capsys)
    assert code == 0
    assert len(lines) == 1 and lines[0].startswith("summary targets=8 pages=8 bins=16 unsigned=0")
    (world.mirror.layout.project_page("six")).write_bytes(b"<html>not six</html>")
    code, lines = run_audit(world, capsys)
    assert code == 4
    assert lines[:2] == ["mismatch simple/six/index.html", "copy-missing simple/six/index.html"]
    assert "mismatch=1" in lines[2] and "copy-missing=1" in lines[2]
    assert not world.mirror.state.exists() or world.mirror.serial() is not None


@pytest.mark.parametrize("fault", ["signature", "expired", "unreachable"])
def test_cli_audit_that_cannot_run_exits_1_with_one_line(
    world: World, fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = world.metadata_url
    if fault == "signature":
        world.repo.signers["snapshot"] = CryptoSigner.generate_ed25519()
        world.publish()
        expected = "TUF metadata rejected: bad signature: snapshot was signed by 0/1 keys"
    elif fault == "expired":
        world.repo.expires_by_role["timestamp"] = datetime.now(UTC) - timedelta(seconds=1)
        world.publish()
        expected = "TUF metadata rejected: expired: timestamp.json is expired"
    else:
        url = "http://127.0.0.1:9"
        expected = "TUF metadata unreachable: http://127.0.0.1:9/2.root.json: Connection refused"
    capsys.readouterr()
    args = ["--tuf-metadata-url", url, "--tuf-root", str(world.root_file), "--retries", "0"]
    assert world.mirror.run("--audit", *args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    errors = err.splitlines()
    assert len(errors) == 1 and errors[0].endswith(f" ERROR {expected}"), err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repair"], "--repair repairs what --audit finds"),
        (["--audit"], "--audit needs --tuf-metadata-url"),
        (["--audit", "--full-check", "--tuf-metadata-url", "http://x", "--tuf-root", "r"], "alone"),
        (["--tuf-metadata-url", "http://127.0.0.1:9"], "go together"),
    ],
)
def test_audit_options_that_cannot_work_are_usage_errors(
    world: World, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.mirror.run(*args) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_state_does_not_stop_an_audit_but_stops_a_repair(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.mirror.state.write_text("{not json")
    code, lines = run_audit(world, capsys)
    assert code == 0 and lines[0].startswith("summary ")
    code, _ = run_audit(world, capsys, "--repair")
    assert code == 1
    assert world.mirror.state.read_text() == "{not json"


def test_the_command_line_audits_with_settings_from_the_environment(world: World) -> None:
    env = {"TUF_METADATA_URL": world.metadata_url, "TUF_ROOT": str(world.root_file)}
    result = world.mirror.cli("--audit", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("summary targets=8 ")
    world.mirror.layout.project_page("six").unlink()  # a target with no page
    result = world.mirror.cli("--audit", env=env)
    assert result.returncode == 4, result.stderr
    assert result.stdout.splitlines()[0] == "missing simple/six/index.html"


def test_repair_refetches_and_sends_rstuf_exactly_what_it_lacks(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    layout, rstuf = world.mirror.layout, world.rstuf
    tampered = b"<html><a href='https://evil.example/numpy-9.tar.gz'>numpy-9</a></html>\n"
    layout.project_page("numpy").write_bytes(tampered)  # upstream unchanged: restore, send nothing
    layout.project_page("zope-interface").write_bytes(tampered)  # and upstream moved on
    world.pypi.add_release("zope.interface", "2.0")
    backup = rstuf.view  # RSTUF's database restored from a backup that lacks six and
    del backup[project_target("six")]  # still has a project removed since (a ghost)
    backup["simple/ghost/index.html"] = {"length": 5, "hashes": {"blake2b-256": "ab" * 32}}
    rstuf.restore_backup(backup)
    requests_page = layout.project_page("requests")
    (requests_page.parent / f"{digest_file(requests_page).hexdigest}.index.html").unlink()
    shutil.rmtree(layout.project_dir("foo-bar"))  # lost locally, still on PyPI and signed
    world.publish()
    signed_numpy = world.repo.targets()[project_target("numpy")].hashes["blake2b-256"]

    world.mirror.rstuf_url = rstuf.url
    code, lines = run_audit(world, capsys, "--repair", *RSTUF_FAST)
    assert code == 0
    assert sorted(lines[:-1]) == [
        "copy-missing simple/numpy/index.html",
        "copy-missing simple/requests/index.html",
        "copy-missing simple/zope-interface/index.html",
        "mismatch simple/numpy/index.html",
        "mismatch simple/zope-interface/index.html",
        "missing simple/foo-bar/index.html",
        "missing simple/ghost/index.html",
        "unsigned simple/six/index.html",
    ]
    zope = digest_file(layout.project_page("zope-interface")).hexdigest
    assert layout.project_page("zope-interface").read_bytes() == upstream_page(
        world.pypi.url, "zope-interface"
    )
    assert sent(rstuf, ADD) == {
        project_target("six"): digest_file(layout.project_page("six")).hexdigest,
        project_target("zope-interface"): zope,
    }
    assert sent(rstuf, REMOVE) == {"simple/ghost/index.html": None}
    tampered_hash = digest_bytes(tampered).hexdigest
    assert all(tampered_hash not in str(request.body) for request in rstuf.accepted)
    assert digest_file(layout.project_page("numpy")).hexdigest == signed_numpy
    assert load_state(world.mirror.state).outbox.dirty == set()

    world.publish()  # RSTUF publishes what it accepted
    code, lines = run_audit(world, capsys)
    assert (code, lines[:-1]) == (0, [])
    assert world.rstuf.view == mirror_view(layout)


def test_a_root_is_never_rebuilt_from_a_stale_listing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """A repair rebuilds a differing root from PyPI's listing: an empty one (warehouse's
    cache, seen empty) is refused before anything is fetched or written, as a full sync
    refuses it; once the listing is whole again the repair rebuilds the root complete."""
    layout = world.mirror.layout
    layout.root_page.write_bytes(b"<html>a damaged root</html>\n")
    tampered = b"<html>not numpy</html>\n"
    layout.project_page("numpy").write_bytes(tampered)
    world.pypi.serve_cached_listing({})
    world.pypi.reset_log()
    world.mirror.rstuf_url = world.rstuf.url
    state = world.mirror.state.read_bytes()
    capsys.readouterr()
    code = world.mirror.run(*audit_args(world, "--audit", "--repair", *RSTUF_FAST))
    assert code == EXIT_FAILED
    assert "lists no project at all" in capsys.readouterr().err
    assert world.pypi.count_pages() == 0 and not world.rstuf.accepted
    assert layout.project_page("numpy").read_bytes() == tampered
    assert world.mirror.state.read_bytes() == state

    world.pypi.serve_cached_listing(None)
    code, _ = run_audit(world, capsys, "--repair", *RSTUF_FAST)
    assert code == 0
    listed = {normalize_name(name) for name in PROJECTS}
    assert set(world.mirror.root_projects()) == listed
    assert layout.project_page("numpy").read_bytes() != tampered


def test_repair_of_a_project_pypi_cannot_serve_sends_nothing_of_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = world.mirror.layout
    layout.project_page("numpy").write_bytes(b"<html>damaged</html>")
    world.pypi.inject("numpy", "status", times=50, code=503)
    world.mirror.rstuf_url = world.rstuf.url
    code, lines = run_audit(world, capsys, "--repair", *RSTUF_FAST)
    assert code == EXIT_PARTIAL
    assert "mismatch simple/numpy/index.html" in lines
    assert world.rstuf.accepted == []
    assert "numpy" in load_state(world.mirror.state).pending  # the next sync tries again


def test_the_first_delivery_waits_for_the_bootstrap_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakePyPI() as pypi, FakeRstuf(step=0.02, number_of_bins=NUMBER_OF_BINS) as rstuf:
        for name in PROJECTS:
            pypi.add_release(name, "1.0")
        mirror = Mirror(tmp_path / "mirror", tmp_path / "state.json", pypi.url, rstuf.url)
        repo = TufRepository(tmp_path / "metadata", NUMBER_OF_BINS)
        repo.publish(rstuf.view)  # RSTUF bootstrapped, nothing imported yet
        root_file = tmp_path / "root.json"
        root_file.write_bytes(repo.root_bytes)
        with serve_directory(repo.directory) as url:
            tuf = ["--tuf-metadata-url", url, "--tuf-root", str(root_file), *RSTUF_FAST]
            assert mirror.run(*tuf) == 0  # the first sync sends nothing anyway
            pypi.add_release("numpy", "2.0")
            capsys.readouterr()
            assert mirror.run(*tuf) == EXIT_PARTIAL
            assert rstuf.accepted == []
            errors = capsys.readouterr().err
            assert "generate_csv.py" in errors and "rstuf admin import-artifacts" in errors
            state = load_state(mirror.state)
            assert state.outbox.dirty == {project_target("numpy")} and not state.bootstrap_seen

            bootstrap(rstuf, mirror_view(mirror.layout))  # the operator imports the CSV
            repo.publish(rstuf.view)
            assert mirror.run(*tuf) == 0
            assert sent(rstuf, ADD) == {
                project_target("numpy"): digest_file(mirror.layout.project_page("numpy")).hexdigest
            }
            assert load_state(mirror.state).bootstrap_seen
            rstuf.accepted.clear()
            repo.publish({})  # checked once: a later publish cannot hold changes back
            pypi.add_release("six", "2.0")
            assert mirror.run(*tuf) == 0
            assert list(sent(rstuf, ADD)) == [project_target("six")]


@pytest.mark.parametrize("how", ["sync", "dry-run"])
def test_a_first_sync_under_pages_rstuf_signs_is_refused_and_full_check_registers_them(
    world: World, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """The mirror directory lost with a state inside it (release 1.1's layout): a first sync
    would exit 0 and tell RSTUF nothing while it signs the old bytes of every changed page."""
    shutil.rmtree(world.mirror.root)
    world.mirror.state.unlink()
    world.pypi.add_release("numpy", "2.0")  # changed meanwhile: RSTUF signs numpy 1.0
    world.mirror.rstuf_url = world.rstuf.url
    capsys.readouterr()
    extra = ["--dry-run"] if how == "dry-run" else []
    assert world.mirror.run(*audit_args(world, *RSTUF_FAST, *extra)) == 1
    out, err = capsys.readouterr()
    (error,) = [line for line in err.splitlines() if " ERROR " in line]
    url = world.metadata_url.rstrip("/")
    assert f"RSTUF's TUF metadata at {url} signs index.html already" in error
    assert "run with --full-check instead" in error and "registers each with RSTUF" in error
    assert out == "" and world.rstuf.accepted == []
    assert not world.mirror.layout.served_dir.exists() and not world.mirror.state.exists()

    # the way out the line names: every page fetched and registered with RSTUF
    assert world.mirror.run(*audit_args(world, "--full-check", *RSTUF_FAST)) == 0
    assert set(sent(world.rstuf, ADD)) == set(mirror_view(world.mirror.layout))
    world.publish()
    code, lines = run_audit(world, capsys)
    assert (code, lines[:-1]) == (0, [])


def test_a_first_sync_that_cannot_read_the_metadata_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(world.mirror.root)
    world.mirror.state.unlink()
    capsys.readouterr()
    world.mirror.had_rstuf = True  # RSTUF configured (its URL unset for this run)
    tuf = ["--tuf-metadata-url", "http://127.0.0.1:9", "--tuf-root", str(world.root_file)]
    assert world.mirror.run(*tuf, "--retries", "0") == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert "cannot check whether RSTUF already signs pages before a first sync" in error
    assert "Connection refused" in error and "--full-check" in error
    assert not world.mirror.layout.served_dir.exists()


def test_lost_state_with_changes_owed_is_recovered_by_the_readme_steps(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """README "Recovery", state.json lost: --full-check, then --audit --repair, then --audit."""
    world.pypi.add_release("numpy", "2.0")
    world.pypi.remove_project("Django")
    world.pypi.create_project("Brand_New")
    world.mirror.had_rstuf = True  # RSTUF left unconfigured for a run: changes wait in the outbox
    assert world.mirror.run() == EXIT_PARTIAL
    assert len(load_state(world.mirror.state).outbox.dirty) == 4
    world.mirror.state.unlink()  # ... and state.json is lost

    world.mirror.rstuf_url = world.rstuf.url
    assert world.mirror.run("--full-check", *RSTUF_FAST) == 0  # step 1
    world.publish()
    code, lines = run_audit(world, capsys, "--repair", *RSTUF_FAST)  # step 2
    assert code == 0
    assert "mismatch simple/numpy/index.html" in lines  # what the lost outbox owed
    world.publish()
    code, lines = run_audit(world, capsys)  # step 3: in step
    assert (code, lines[:-1]) == (0, [])
    assert world.rstuf.view == mirror_view(world.mirror.layout)
    assert_mirror_matches_upstream(world.mirror)


def test_both_page_forms_are_audited_and_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --simple-format all each form is its own target: index.html and index.v1_json."""
    with FakePyPI() as pypi, FakeRstuf(step=0.02, number_of_bins=NUMBER_OF_BINS) as rstuf:
        for name in PROJECTS:
            pypi.add_release(name, "1.0")
        mirror = Mirror(tmp_path / "mirror", tmp_path / "state.json", pypi.url)
        assert mirror.run("--simple-format", "all") == 0
        bootstrap(rstuf, mirror_view(mirror.layout))
        repo = TufRepository(tmp_path / "metadata", NUMBER_OF_BINS)
        repo.publish(rstuf.view)
        root_file = tmp_path / "root.json"
        root_file.write_bytes(repo.root_bytes)
        json_page = mirror.layout.project_page("numpy", "index.v1_json")
        signed = json_page.read_bytes()
        json_page.write_bytes(signed.replace(b"numpy", b"nunpy"))
        with serve_directory(repo.directory) as url:
            tuf = [
                "--simple-format",
                "all",
                "--tuf-metadata-url",
                url,
                "--tuf-root",
                str(root_file),
            ]
            capsys.readouterr()
            assert mirror.run(*tuf, "--audit") == 4
            lines = capsys.readouterr().out.splitlines()
            assert lines[:-1] == [
                "mismatch simple/numpy/index.v1_json",
                "copy-missing simple/numpy/index.v1_json",
            ]
            assert f"targets={2 * len(PROJECTS) + 2} " in lines[-1]
            mirror.rstuf_url = rstuf.url
            assert mirror.run(*tuf, "--audit", "--repair", *RSTUF_FAST) == 0
            assert json_page.read_bytes() == signed and rstuf.accepted == []
            assert mirror.run(*tuf, "--audit") == 0


@pytest.mark.parametrize("simple_format", ["html", "json", "all"])
def test_repair_of_a_project_gone_upstream_and_on_disk_leaves_the_roots_as_an_update_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], simple_format: str
) -> None:
    """PyPI removed six and its page was already gone here: the repair drops it from every
    root (and tells RSTUF), so the update that follows finds nothing left to change."""
    with FakePyPI() as pypi, FakeRstuf(step=0.02, number_of_bins=NUMBER_OF_BINS) as rstuf:
        for name in PROJECTS:
            pypi.add_release(name, "1.0")
        mirror = Mirror(tmp_path / "mirror", tmp_path / "state.json", pypi.url)
        form = ["--simple-format", simple_format]
        assert mirror.run(*form) == 0
        bootstrap(rstuf, mirror_view(mirror.layout))
        repo = TufRepository(tmp_path / "metadata", NUMBER_OF_BINS)
        repo.publish(rstuf.view)
        root_file = tmp_path / "root.json"
        root_file.write_bytes(repo.root_bytes)
        pypi.remove_project("six")
        shutil.rmtree(mirror.layout.project_dir("six"))
        roots = [
            mirror.layout.path_of_target(target)
            for target in ("index.html", "simple/index.v1_json")
            if mirror.layout.path_of_target(target).exists()
        ]
        assert all(b"six" in root.read_bytes() for root in roots)
        mirror.rstuf_url = rstuf.url
        with serve_directory(repo.directory) as url:
            tuf = [*form, "--tuf-metadata-url", url, "--tuf-root", str(root_file), *RSTUF_FAST]
            capsys.readouterr()
            assert mirror.run(*tuf, "--audit", "--repair") == 0
            assert "missing simple/six/" in capsys.readouterr().out
            repaired = {root: root.read_bytes() for root in roots}
            assert all(b"six" not in data for data in repaired.values())
            assert set(sent(rstuf, REMOVE)) == {
                t for t in repo.targets() if t.startswith("simple/six/")
            }
            assert set(sent(rstuf, ADD)) == {
                str(root.relative_to(mirror.layout.served_dir)) for root in roots
            }
            accepted = len(rstuf.accepted)
            assert mirror.run(*tuf) == 0  # the update that reads PyPI's removal of six
            assert {root: root.read_bytes() for root in roots} == repaired
            assert [r.action for r in rstuf.accepted[accepted:]] == []
            repo.publish(rstuf.view)
            assert mirror.run(*tuf, "--audit") == 0
