"""Tests for generate_csv.py: the CSV RSTUF imports, and the mirrors it refuses.

Mirrors are built on disk in tmp_path the way pypi_mirror.py leaves them
(pages, hash-prefixed hard links, state.json), so no network and no
pypi_mirror.py are needed. The command line runs as a subprocess wherever its
exit code or its stderr is the point; `main(argv)` runs in-process elsewhere.
Hashes are checked with hashlib directly, never through mirror_store.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.state import PendingProject, State, save_state
from pypi_index_mirror.mirror.store import MirrorLocked, mirror_lock, project_dir_name
from pypi_index_mirror.rstuf import bootstrap_csv as generate_csv
from tests.mirror_helpers import REPO

SCRIPT = REPO / "generate_csv.py"
SERIAL = 21_734_562
Row = tuple[str, int, str, str]  # path, length, hash type, hex digest

INDEPENDENT_HASHES = {
    "blake2b-256": lambda data: hashlib.blake2b(data, digest_size=32).hexdigest(),
}


# --- building mirrors --------------------------------------------------------


def page(name: str, links: int = 3) -> bytes:
    """A small PEP 503 page; `links` sets its size."""
    anchors = "".join(
        f'<a href="https://files.example/{name}-{i}.tar.gz#sha256={"ab" * 32}">'
        f"{name}-{i}.tar.gz</a><br/>\n"
        for i in range(links)
    )
    return (
        f"<!DOCTYPE html><html><body><h1>Links for {name}</h1>\n{anchors}</body></html>\n".encode()
    )


@dataclass
class Mirror:
    """A mirror directory on disk and the pages it serves (target -> bytes)."""

    root: Path
    state: Path
    pages: dict[str, bytes] = field(default_factory=dict)

    @property
    def served(self) -> Path:
        return self.root / "pypi_mirror"

    def args(self, output: Path | str, *extra: str) -> list[str]:
        return [
            "--mirror-dir",
            str(self.root),
            "--state",
            str(self.state),
            "--output",
            str(output),
            *extra,
        ]

    def expected_targets(self) -> list[str]:
        """Root page first, then projects by directory name (iter_targets' order)."""
        names = sorted(t.split("/")[1] for t in self.pages if t.startswith("simple/"))
        root = ["index.html"] if "index.html" in self.pages else []
        return root + [f"simple/{name}/index.html" for name in names]

    def write_page(self, target: str, data: bytes, prefixed_copy: bool = True) -> None:
        path = self.served / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if prefixed_copy:
            copy = path.parent / f"{INDEPENDENT_HASHES['blake2b-256'](data)}.index.html"
            copy.unlink(missing_ok=True)
            os.link(path, copy)
        self.pages[target] = data


def build_mirror(
    base: Path, projects: list[str] | None = None, serial: int | None = SERIAL
) -> Mirror:
    """A finished mirror of `projects` (upstream names), state at `serial`."""
    mirror = Mirror(root=base / "mirror", state=base / "state.json")
    mirror.served.mkdir(parents=True)
    names = sorted({project_dir_name(name) for name in projects or []})
    root = "".join(f'<a href="/simple/{name}/">{name}</a>\n' for name in names)
    mirror.write_page("index.html", f"<html><body>\n{root}</body></html>\n".encode())
    for number, name in enumerate(names):
        mirror.write_page(f"simple/{name}/index.html", page(name, links=number % 7))
    save_state(mirror.state, State(serial=serial))
    return mirror


PROJECTS = ["numpy", "Django", "requests", "zope.interface", "typing_extensions", "a", "a-b"]


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    return build_mirror(tmp_path, PROJECTS)


# --- running it --------------------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# The two importers, written the way repository-service-tuf-cli parses the file.


def parse_like_released_cli(csv_path: Path) -> list[Row]:
    """1.0.0b1 (`admin import-artifacts`): text mode, line.split(";") per field."""
    rows = []
    with open(csv_path) as f:
        for line in f:
            path = line.split(";")[0]
            length = int(line.split(";")[1])
            hash_algorithm = line.split(";")[2]
            hash_digest = line.split(";")[3]
            rows.append((path, length, hash_algorithm, hash_digest))
    return rows


def parse_like_csv_reader_cli(csv_path: Path) -> list[Row]:
    """The unreleased CLI: csv.reader(f, delimiter=";"), columns 0-3."""
    rows = []
    with open(csv_path) as f:
        for row in csv.reader(f, delimiter=";"):
            rows.append((row[0], int(row[1]), row[2], row[3]))
    return rows


def expected_rows(mirror: Mirror, algorithm: str = "blake2b-256") -> list[Row]:
    digest = INDEPENDENT_HASHES[algorithm]
    return [
        (target, len(mirror.pages[target]), algorithm, digest(mirror.pages[target]))
        for target in mirror.expected_targets()
    ]


def leftovers(directory: Path, output_name: str) -> list[str]:
    """Temp files an output of `output_name` could have left in `directory`."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{output_name}."))


# --- the format --------------------------------------------------------------


def test_format_row_ends_with_separator() -> None:
    digest = generate_csv.FileDigest(1234, "blake2b-256", "0f" * 32)
    assert (
        generate_csv.format_row("simple/numpy/index.html", digest)
        == f"simple/numpy/index.html;1234;blake2b-256;{'0f' * 32};\n"
    )


@pytest.mark.parametrize("path", ["simple/a;b/index.html", 'simple/"q/index.html', "x\n", "a\rb"])
def test_format_row_refuses_paths_that_break_an_importer(path: str) -> None:
    with pytest.raises(generate_csv.UnsafeTargetPath):
        generate_csv.format_row(path, generate_csv.FileDigest(1, "sha256", "00"))


def test_growing_batches_cover_everything_in_order() -> None:
    items = [str(i) for i in range(100)]
    batches = list(generate_csv.growing_batches(items, first=4, largest=16))
    assert [len(b) for b in batches] == [4, 8, 16, 16, 16, 16, 16, 8]
    assert [item for batch in batches for item in batch] == items
    assert list(generate_csv.growing_batches([], first=4, largest=16)) == []


def test_both_importers_read_every_row_and_it_matches_the_bytes(
    mirror: Mirror, tmp_path: Path
) -> None:
    output = tmp_path / "artifacts.csv"
    assert generate_csv.main(mirror.args(output)) == 0

    raw = output.read_bytes()
    assert raw.endswith(b";\n")
    assert all(line.endswith(b";") for line in raw.split(b"\n")[:-1])
    assert b"\r" not in raw
    want = expected_rows(mirror)
    assert len(want) == len(PROJECTS) + 1
    assert parse_like_released_cli(output) == want
    assert parse_like_csv_reader_cli(output) == want
    # The fifth field is what makes line.split(";") safe; csv.reader sees it empty.
    with open(output) as f:
        assert all(len(row) == 5 and row[4] == "" for row in csv.reader(f, delimiter=";"))


def test_a_healthy_mirror_does_not_warn(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate_csv.main(mirror.args(tmp_path / "a.csv")) == 0
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    # --algorithm is gone: a CSV of another hash names copies the mirror does not have
    [["--algorithm", "sha256"], ["--workers", "0"], ["--bogus"]],
)
def test_usage_errors_exit_2_and_write_nothing(
    mirror: Mirror, tmp_path: Path, bad: list[str]
) -> None:
    output = tmp_path / "artifacts.csv"
    result = run_cli(*mirror.args(output), *bad)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr
    assert result.stdout == ""
    assert not output.exists()


def test_help_documents_the_trailing_separator() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "path;size;hash-type;hash;" in text
    assert "NO header" in text and "trailing ';'" in text


def test_root_page_only(tmp_path: Path) -> None:
    mirror = build_mirror(tmp_path, projects=[])
    output = tmp_path / "artifacts.csv"
    assert generate_csv.main(mirror.args(output)) == 0
    assert parse_like_released_cli(output) == expected_rows(mirror)
    assert len(expected_rows(mirror)) == 1


def test_no_simple_directory_at_all(tmp_path: Path) -> None:
    mirror = build_mirror(tmp_path, projects=[])
    assert not (mirror.served / "simple").exists()
    output = tmp_path / "artifacts.csv"
    assert generate_csv.main(mirror.args(output)) == 0
    assert output.read_text().splitlines() == [
        f"index.html;{len(mirror.pages['index.html'])};blake2b-256;"
        f"{INDEPENDENT_HASHES['blake2b-256'](mirror.pages['index.html'])};"
    ]


def test_every_pep503_name_shape(tmp_path: Path) -> None:
    upstream = ["a-b", "A.B.c", "a_b_c", "x--y", "Foo__Bar", "0", "7z", "py2", "z.9", "a", "ab"]
    mirror = build_mirror(tmp_path, upstream)
    output = tmp_path / "artifacts.csv"
    assert generate_csv.main(mirror.args(output, "--executor", "threads")) == 0

    paths = [row[0] for row in parse_like_csv_reader_cli(output)]
    assert paths == [
        "index.html",
        "simple/0/index.html",
        "simple/7z/index.html",
        "simple/a/index.html",
        "simple/a-b/index.html",
        "simple/a-b-c/index.html",
        "simple/ab/index.html",
        "simple/foo-bar/index.html",
        "simple/py2/index.html",
        "simple/x-y/index.html",
        "simple/z-9/index.html",
    ]
    assert parse_like_released_cli(output) == expected_rows(mirror)


def test_only_targets_are_listed(mirror: Mirror, tmp_path: Path) -> None:
    """Prefixed copies (present since build_mirror), temp and staging files, the
    state and lock, stray files and directories: none is a TUF target."""
    simple = mirror.served / "simple"
    junk = [
        mirror.root / ".staging" / ".tmp-abc123",
        mirror.root / "state.json",
        mirror.root / ".lock",
        mirror.served / ".tmp-half-written",
        mirror.served / "robots.txt",
        simple / "numpy" / ".tmp-x7",
        simple / "numpy" / "index.html.tmp",
        simple / "numpy" / "old" / "index.html",
        simple / "stray.html",
        simple / "no-page-yet" / f"{'1' * 64}.index.html",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a target")
    output = tmp_path / "artifacts.csv"
    assert generate_csv.main(mirror.args(output)) == 0

    assert parse_like_released_cli(output) == expected_rows(mirror)


def test_a_changed_page_changes_exactly_its_row(mirror: Mirror, tmp_path: Path) -> None:
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    assert generate_csv.main(mirror.args(first, "--executor", "threads")) == 0
    mirror.write_page("simple/requests/index.html", page("requests", links=40))
    assert generate_csv.main(mirror.args(second, "--executor", "threads")) == 0

    before, after = first.read_text().splitlines(), second.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert len(changed) == 1
    assert changed[0][1].startswith("simple/requests/index.html;")
    assert parse_like_released_cli(second) == expected_rows(mirror)


def test_output_is_deterministic_across_workers_and_executors(
    tmp_path: Path,
) -> None:
    # Enough pages for several batches, so out-of-order completion would show.
    mirror = build_mirror(tmp_path, [f"pkg{i}" for i in range(300)])
    outputs = []
    for number, extra in enumerate(
        [[], ["--workers", "1"], ["--workers", "3"], ["--executor", "threads", "--workers", "4"]]
    ):
        output = tmp_path / f"run{number}.csv"
        assert generate_csv.main(mirror.args(output, *extra)) == 0
        outputs.append(output.read_bytes())
    assert all(data == outputs[0] for data in outputs)
    assert parse_like_released_cli(tmp_path / "run0.csv") == expected_rows(mirror)


def test_a_write_error_names_the_csv_and_what_to_do(mirror: Mirror, tmp_path: Path) -> None:
    """write(2) names no file: the line names the CSV, the cause and the fix (EFBIG here,
    from a file size limit; a full disk is ENOSPC on the same write)."""
    output = tmp_path / "artifacts.csv"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    result = subprocess.run(
        [sys.executable, str(SCRIPT), *mirror.args(output)],
        capture_output=True, text=True, timeout=60, preexec_fn=limit_file_size,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert error.endswith(
        f"ERROR {output}: File too large: a file size limit stopped the write: raise it "
        "(ulimit -f, LimitFSIZE=), then run again; no CSV was written"
    )
    assert not output.exists() and not list(tmp_path.glob(".artifacts.csv.*"))  # no temp left


def test_stdout_carries_only_the_csv(mirror: Mirror, tmp_path: Path) -> None:
    result = run_cli(*mirror.args("-"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout), delimiter=";"))
    assert [(r[0], int(r[1]), r[2], r[3]) for r in rows] == expected_rows(mirror)
    assert not (tmp_path / "artifacts.csv").exists()
    assert "INFO" in result.stderr


def test_defaults_and_the_serial_and_count_are_logged(tmp_path: Path) -> None:
    mirror = build_mirror(tmp_path / "unused", PROJECTS)
    os.rename(mirror.root, tmp_path / "pypi-index-mirror")
    os.rename(mirror.state, tmp_path / "state.json")
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = len(PROJECTS) + 1
    assert len((tmp_path / "artifacts.csv").read_text().splitlines()) == rows
    assert f"updates after the import must start from serial {SERIAL}" in result.stderr
    assert f"wrote {rows} rows" in result.stderr and "rows/s" in result.stderr
    assert result.stdout == ""


def test_the_lock_is_held_for_the_whole_run(
    mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real_digest = generate_csv.digest_file

    def digest_while_checking_lock(path: str, algorithm: str) -> generate_csv.FileDigest:
        try:
            with mirror_lock(mirror.root / ".lock"):
                seen.append(False)
        except MirrorLocked:
            seen.append(True)
        return real_digest(path, algorithm)

    monkeypatch.setattr(generate_csv, "digest_file", digest_while_checking_lock)
    output = tmp_path / "a.csv"
    assert generate_csv.main(mirror.args(output, "--executor", "threads")) == 0
    assert seen == [True] * (len(PROJECTS) + 1)
    with mirror_lock(mirror.root / ".lock"):  # and released afterwards
        pass


def test_pending_projects_are_reported(
    mirror: Mirror, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_state(
        mirror.state,
        State(serial=SERIAL, pending={"numpy": PendingProject("numpy", SERIAL + 5)}),
    )
    assert generate_csv.main(mirror.args(tmp_path / "a.csv")) == 0
    assert "1 projects are pending" in capsys.readouterr().err


# --- refusals ----------------------------------------------------------------


def assert_refused(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    assert result.stdout == ""


def test_refuses_missing_mirror_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    output = tmp_path / "a.csv"
    result = run_cli(
        "--mirror-dir", str(missing), "--state", str(tmp_path / "s.json"), "--output", str(output)
    )
    assert_refused(result, 1, "no such mirror directory", str(missing))
    assert not missing.exists()  # taking the lock would have created it
    assert not output.exists()


def test_refuses_mirror_without_served_tree(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    save_state(tmp_path / "state.json", State(serial=SERIAL))
    output = tmp_path / "a.csv"
    result = run_cli(*Mirror(tmp_path / "mirror", tmp_path / "state.json").args(output))
    assert_refused(result, 1, "pypi_mirror", "first sync")
    assert not output.exists()


@pytest.mark.parametrize(
    ("how", "phrase"),
    [
        ("no state file", "first sync has not finished"),
        ("serial is null", "first sync has not finished"),
        ("full sync in progress", "full sync (--full-check) has not finished"),
        ("root index stale", "root index.html lags"),
        ("no root page", "index.html: missing"),
    ],
)
def test_refuses_unfinished_sync(tmp_path: Path, how: str, phrase: str) -> None:
    mirror = build_mirror(tmp_path, PROJECTS)
    if how == "no state file":
        mirror.state.unlink()
    elif how == "serial is null":
        save_state(mirror.state, State(serial=None, full_sync_in_progress=True))
    elif how == "full sync in progress":
        save_state(mirror.state, State(serial=SERIAL, full_sync_in_progress=True))
    elif how == "root index stale":
        save_state(mirror.state, State(serial=SERIAL, root_stale=True))
    else:
        (mirror.served / "index.html").unlink()
    output = tmp_path / "a.csv"
    result = run_cli(*mirror.args(output))
    assert_refused(result, 1, phrase)
    assert not output.exists()


def test_refuses_corrupt_state(mirror: Mirror, tmp_path: Path) -> None:
    mirror.state.write_text('{"schema": 1, "serial": "twelve"}')
    output = tmp_path / "a.csv"
    result = run_cli(*mirror.args(output))
    assert_refused(result, 1, "is corrupt", str(mirror.state))
    assert not output.exists()


def test_refuses_a_locked_mirror_with_exit_3(mirror: Mirror, tmp_path: Path) -> None:
    output = tmp_path / "a.csv"
    with mirror_lock(mirror.root / ".lock"):
        result = run_cli(*mirror.args(output))
    assert_refused(result, 3, "mirror lock", f"pid {os.getpid()}")
    assert not output.exists()


@pytest.mark.parametrize(
    "inside", ["pypi_mirror/artifacts.csv", "pypi_mirror/simple/numpy/x.csv", "pypi_mirror"]
)
def test_refuses_output_inside_the_served_tree(mirror: Mirror, inside: str) -> None:
    output = mirror.root / inside
    before = sorted(p.relative_to(mirror.root) for p in mirror.root.rglob("*"))
    result = run_cli(*mirror.args(output))
    assert_refused(result, 1, "served tree")
    assert sorted(p.relative_to(mirror.root) for p in mirror.root.rglob("*")) == before


def test_refuses_output_inside_served_tree_through_a_symlink(
    mirror: Mirror, tmp_path: Path
) -> None:
    link = tmp_path / "innocent"
    link.symlink_to(mirror.served / "simple")
    result = run_cli(*mirror.args(link / "artifacts.csv"))
    assert_refused(result, 1, "served tree")
    assert not (mirror.served / "simple" / "artifacts.csv").exists()


def test_refuses_a_target_path_the_importers_would_misread(mirror: Mirror, tmp_path: Path) -> None:
    # Raised inside a worker process: the error must survive the trip back.
    mirror.write_page("simple/semi;colon/index.html", b"x", prefixed_copy=False)
    output = tmp_path / "a.csv"
    result = run_cli(*mirror.args(output, "-q"))
    assert_refused(result, 1, "semi;colon", "cannot be written to the CSV")
    assert not output.exists() and leftovers(tmp_path, "a.csv") == []


# --- atomic output -----------------------------------------------------------


def make_unreadable(path: Path) -> None:
    """A page whose read(2) fails, even for root (who ignores file modes)."""
    path.unlink()
    if os.geteuid() == 0:
        path.symlink_to("/proc/self/mem")  # a regular file; reading offset 0 gives EIO
    else:
        path.write_bytes(b"secret")
        path.chmod(0)


def test_a_read_error_leaves_the_old_csv_and_no_temp_file(mirror: Mirror, tmp_path: Path) -> None:
    output = tmp_path / "artifacts.csv"
    output.write_text("previous;1;blake2b-256;00;\n")
    unreadable = mirror.served / "simple" / "requests" / "index.html"
    make_unreadable(unreadable)
    result = run_cli(*mirror.args(output, "-q"))
    assert_refused(result, 1, str(unreadable), "no CSV was written")
    assert output.read_text() == "previous;1;blake2b-256;00;\n"
    assert leftovers(tmp_path, "artifacts.csv") == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_a_run_interrupted_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    mirror = build_mirror(tmp_path, [f"pkg{i}" for i in range(200)])
    real_digest = generate_csv.digest_file
    calls = 0

    def digest_then_fail(path: str, algorithm: str) -> generate_csv.FileDigest:
        nonlocal calls
        calls += 1
        if calls == 150:  # several batches already written to the temp file
            raise failure
        return real_digest(path, algorithm)

    monkeypatch.setattr(generate_csv, "digest_file", digest_then_fail)
    output = tmp_path / "artifacts.csv"
    code = generate_csv.main(mirror.args(output, "--executor", "threads", "--workers", "1"))
    assert code == (130 if failure is KeyboardInterrupt else 1)
    assert calls >= 150
    assert not output.exists()
    assert leftovers(tmp_path, "artifacts.csv") == []
    with mirror_lock(mirror.root / ".lock"):  # the lock was released
        pass


def test_output_file_is_readable_like_any_new_file(mirror: Mirror, tmp_path: Path) -> None:
    output = tmp_path / "artifacts.csv"
    umask = os.umask(0o022)
    try:
        assert generate_csv.main(mirror.args(output)) == 0
    finally:
        os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o644
