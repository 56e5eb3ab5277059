"""The shared rules: names to paths, hashing, atomic writes, the lock and state.json."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from pypi_index_mirror.mirror import store as mirror_store
from pypi_index_mirror.mirror.state import (
    OutboxTask,
    PendingProject,
    PublishTask,
    State,
    StateError,
    load_state,
    save_state,
)
from pypi_index_mirror.mirror.store import (
    InvalidProjectName,
    MirrorLayout,
    MirrorLocked,
    atomic_write,
    digest_bytes,
    digest_file,
    iter_targets,
    mirror_lock,
    normalize_name,
    project_dir_name,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Django", "django"),
        ("zope.interface", "zope-interface"),
        ("Foo__Bar--baz..Qux", "foo-bar-baz-qux"),
        ("a", "a"),
        ("9", "9"),
        ("A-_.b", "a-b"),
    ],
)
def test_valid_names_normalize_per_pep_503(name: str, expected: str) -> None:
    assert project_dir_name(name) == expected
    assert normalize_name(name) == expected


HOSTILE_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "a/b",
    "/abs",
    "a\\b",
    "a\x00b",
    "a\nb",
    "x" * 1000,
    "n\u03c5mpy",  # Greek upsilon: a look-alike of numpy
    "\uff4eumpy",  # fullwidth n
    "-leading",
    "trailing.",
    "sp ace",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_never_become_paths(name: str) -> None:
    with pytest.raises(InvalidProjectName):
        project_dir_name(name)


def test_digests_match_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.blake2b(data, digest_size=32).hexdigest()
    assert digest_bytes(data).hexdigest == expected
    file_digest = digest_file(tmp_path / "f")
    assert (file_digest.length, file_digest.hexdigest) == (len(data), expected)
    assert digest_file(tmp_path / "f", "sha256").hexdigest == hashlib.sha256(data).hexdigest()


def test_atomic_write_leaves_no_temp_file_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "page"
    staging = tmp_path / ".staging"
    atomic_write(target, b"one", staging)
    atomic_write(target, b"two", staging)
    assert target.read_bytes() == b"two"
    assert list(staging.iterdir()) == []


def test_atomic_write_failure_keeps_old_bytes(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "page"
    with pytest.raises(FileNotFoundError):
        atomic_write(target, b"x", tmp_path / ".staging")
    assert list((tmp_path / ".staging").iterdir()) == []


def _hold_lock(path: str, ready, release) -> None:  # runs in a child process
    with mirror_lock(Path(path)):
        ready.set()
        release.wait(10)


def test_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(lock), ready, release))
    child.start()
    try:
        assert ready.wait(10)
        with pytest.raises(MirrorLocked, match=f"pid {child.pid}"), mirror_lock(lock):
            pass
    finally:
        release.set()
        child.join(10)
    with mirror_lock(lock):  # released when the holder exits
        pass


def test_state_round_trips(tmp_path: Path) -> None:
    state = State(serial=42)
    state.pending["foo-bar"] = PendingProject("Foo_Bar", 41)
    state.outbox.dirty.update({"index.html", "simple/foo-bar/index.html"})
    state.outbox.tasks.append(OutboxTask("t1", "remove", ["simple/gone/index.html"], 1.5))
    digest = "b" * 64
    add = OutboxTask("t2", "add", ["index.html"], 2.5, {"index.html": digest})
    state.outbox.tasks.append(add)
    state.outbox.uncertain.append(
        OutboxTask("", "add", ["index.html"], 2.0, {"index.html": digest})
    )
    state.outbox.publishes.append(PublishTask("p1", 2.7))
    state.outbox.signed.update({"index.html": "c" * 64, "simple/foo-bar/index.html": ""})
    state.retired["simple/foo-bar/" + "a" * 64 + ".index.html"] = 3.0
    state.root_stale = True
    path = tmp_path / "state.json"
    save_state(path, state)
    assert load_state(path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_missing_state_is_a_fresh_start(tmp_path: Path) -> None:
    assert load_state(tmp_path / "state.json") == State()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"schema": 1, "serial": "12"}',
        b'{"schema": 1, "serial": 5, "pending": {"../x": {"display_name": "../x", "serial": 1}}}',
        b'{"schema": 1, "serial": 5, "outbox": {"dirty": ["../../etc/passwd"]}}',
        b'{"schema": 1, "serial": 5, "retired": {"/etc/passwd": 1}}',
    ],
)
def test_corrupt_state_is_refused_with_recovery_advice(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError, match=r"corrupt.*--full-check"):
        load_state(path)
    assert path.read_bytes() == content


def test_unknown_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema": 99, "serial": 1}))
    with pytest.raises(StateError, match="unknown schema version 99"):
        load_state(path)


def test_iter_targets_lists_only_served_pages_sorted(tmp_path: Path) -> None:
    layout = MirrorLayout(tmp_path)
    layout.served_dir.mkdir()
    layout.root_page.write_bytes(b"root")
    (layout.served_dir / ("b" * 64 + ".index.html")).write_bytes(b"root")
    for name in ("zeta", "alpha", "m-n"):
        layout.project_dir(name).mkdir(parents=True)
        layout.project_page(name).write_bytes(name.encode())
        (layout.project_dir(name) / ("a" * 64 + ".index.html")).write_bytes(b"x")
    layout.project_dir("empty").mkdir()
    assert list(iter_targets(layout)) == [
        "index.html",
        "simple/alpha/index.html",
        "simple/m-n/index.html",
        "simple/zeta/index.html",
    ]


def test_sync_filesystem_flushes_or_says_why_not(tmp_path: Path) -> None:
    """It returns only once the kernel accepted the flush, and names a path it cannot open."""
    page = tmp_path / "index.html"
    page.write_bytes(b"<html></html>")  # written, not fsynced
    assert mirror_store.sync_filesystem(tmp_path) is None
    assert mirror_store.sync_filesystem(page) is None  # any path on the filesystem will do
    assert page.read_bytes() == b"<html></html>"
    with pytest.raises(FileNotFoundError) as caught:
        mirror_store.sync_filesystem(tmp_path / "gone")
    assert caught.value.filename == str(tmp_path / "gone")


# --- local I/O errors: what failed, where, and what to do


def test_a_write_error_is_named_after_the_file_written(tmp_path: Path) -> None:
    """write(2) on a full disk names no file: the write seam adds the one it was writing
    (a real ENOSPC from /dev/full), and the funnel's line says where and what to do."""
    from pypi_index_mirror.ops import cli as cli_support

    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as raised:
            os.write(fd, b"page")
    finally:
        os.close(fd)
    error = raised.value
    assert error.filename is None
    mirror_store.name_io_error(error, tmp_path / "state.json")
    assert cli_support.failure(error) == (
        cli_support.EXIT_FAILED,
        f"local I/O error: {tmp_path}/state.json: No space left on device: the filesystem is "
        "full: free space or inodes on it (df -h, df -i), then run again; nothing is lost: the "
        "next run resumes from the last saved state",
    )


def test_a_failed_rename_names_its_destination_not_the_temp_file(tmp_path: Path) -> None:
    from pypi_index_mirror.ops import cli as cli_support

    (tmp_path / "page" / "in-the-way").mkdir(parents=True)
    with pytest.raises(OSError) as raised:
        mirror_store.atomic_write(tmp_path / "page", b"x", staging_dir=tmp_path / ".staging")
    line = cli_support.io_error_line(raised.value)
    assert line.startswith(f"{tmp_path}/page: Is a directory: a directory stands where a file")
    assert list((tmp_path / ".staging").iterdir()) == []  # the temp file is gone
