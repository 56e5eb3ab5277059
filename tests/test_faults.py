"""Faults and hostile input: never a wrong byte mirrored, never a change lost, nothing outside.

Upstream faults come from the stand-in PyPI's `inject`; local faults from a file-size
limit (``RLIMIT_FSIZE``: the write fails with EFBIG, as on a full disk), a full tmpfs
and a read-only bind mount (skipped where the machine refuses mounts), and damaged
``state.json`` files; RSTUF faults from the stand-in RSTUF, across several runs. Each
case checks the exit code, one clear log line, what is on disk and what is owed.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.state import load_state, save_state
from pypi_index_mirror.mirror.store import (
    InvalidProjectName,
    digest_bytes,
    prefixed_name,
    project_dir_name,
)
from pypi_index_mirror.ops import cli as cli_support
from pypi_index_mirror.ops import settings
from pypi_index_mirror.upstream import changelog
from pypi_index_mirror.upstream import client as pypi_client
from pypi_index_mirror.upstream import errors as upstream_errors
from tests.conftest import PROJECTS
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import PUBLISH, FakeRstuf
from tests.mirror_helpers import (
    REPO,
    Mirror,
    assert_consistent,
    assert_mirror_matches_upstream,
    bootstrap,
    files_outside,
    mirror_view,
    upstream_page,
)

RETRIES = 2  # tests.mirror_helpers.FAST
RSTUF_FAST = ("--rstuf-poll", "0.02")


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI) -> Mirror:
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    assert mirror.run() == 0
    return mirror


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: equal before and after means nothing touched.

    Not the lock, nor status.json: every run records how it ended there, failed ones too.
    """
    if not root.exists():
        return {}
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in (".lock", "status.json")
    }


def errors_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def assert_one_clear_error(stderr: str, *words: str) -> str:
    """Exactly one ERROR line, no traceback, carrying every one of `words`."""
    errors = errors_in(stderr)
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# --- upstream faults on a project page ------------------------------------------------

# kind, parameters, retried within the run, words its log line carries
PAGE_FAULTS = {
    "http-500": ("status", {"code": 500}, True, "HTTP 500"),
    "http-502": ("status", {"code": 502}, True, "HTTP 502"),
    "http-503": ("status", {"code": 503}, True, "HTTP 503"),
    "http-403": ("status", {"code": 403}, False, "HTTP 403"),
    "connection-reset": ("reset", {}, True, "connection failed"),
    "read-timeout": ("slow", {"seconds": 10.0}, True, "timed out"),  # see READ_TIMEOUT
    "truncated-body": ("truncate", {}, True, "cut off"),
    "429-retry-after": ("rate_limit", {"seconds": 0.05}, True, "HTTP 429"),
    "stale-serial": ("stale", {}, True, "older than changelog serial"),
    "cdn-error-page": ("not_simple", {}, False, "not a simple page"),
    "json-instead-of-html": ("json_instead", {}, False, "Content-Type"),
    "empty-body": ("empty", {}, False, "empty body"),
    "over-size-limit": ("oversized", {"size": 300_000}, False, "limit"),
    "not-utf8": ("not_utf8", {}, False, "not UTF-8"),
}
PAGE_ARGS = ("--max-page-bytes", "100000")
# --timeout for the cases that must time out: the stand-in stalls far longer, and every
# other answer of the run (a normal page, XML-RPC) must come within it on a loaded machine.
READ_TIMEOUT = ("--timeout", "1")


def page_args(kind: str) -> tuple[str, ...]:
    return PAGE_ARGS + READ_TIMEOUT if kind == "slow" else PAGE_ARGS


@pytest.mark.parametrize("fault", PAGE_FAULTS)
def test_page_that_keeps_failing_stays_pending_and_unchanged(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    kind, params, retried, words = PAGE_FAULTS[fault]
    old = mirror.page("numpy")
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    pypi.inject("numpy", kind, times=50, **params)
    pypi.reset_log()
    capsys.readouterr()
    assert mirror.run(*page_args(kind)) == cli_support.EXIT_PARTIAL
    stderr = capsys.readouterr().err
    assert mirror.page("numpy") == old, "a wrong page was mirrored"
    assert mirror.page("django") == upstream_page(pypi.url, "django"), "the run did not go on"
    attempts = RETRIES + 1 if retried else 1
    # libcurl sends a request again, once, when the kept-alive connection it reused died
    # before answering: a reset can cost two requests an attempt, never more.
    most = 2 * attempts if kind == "reset" else attempts
    assert attempts <= pypi.count_pages("numpy") <= most, "retries unbounded"
    warnings = [line for line in stderr.splitlines() if "WARNING" in line and "numpy" in line]
    assert any(words in line and "pending" in line for line in warnings), stderr
    state = load_state(mirror.state)
    assert state.serial == pypi.last_serial
    assert state.pending["numpy"].serial == pypi.project_serial("numpy"), "serial past the work"
    assert "simple/numpy/index.html" not in state.outbox.dirty
    assert_consistent(mirror)
    pypi.clear_faults()
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)
    assert not load_state(mirror.state).pending


@pytest.mark.parametrize("fault", [name for name, spec in PAGE_FAULTS.items() if spec[2]])
def test_page_fault_that_passes_is_retried_within_the_run(
    mirror: Mirror, pypi: FakePyPI, fault: str
) -> None:
    kind, params, _, _ = PAGE_FAULTS[fault]
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", kind, times=1, **params)
    pypi.reset_log()
    assert mirror.run(*page_args(kind)) == 0
    assert pypi.count_pages("numpy") == 2
    assert_mirror_matches_upstream(mirror)


def test_retry_after_and_rate_limit_reset_are_honoured(mirror: Mirror, pypi: FakePyPI) -> None:
    pypi.add_release("numpy", "2.0")
    pypi.inject("numpy", "rate_limit", times=1, seconds=0.4)
    pypi.inject("changelog_since_serial", "xmlrpc_rate_limit", times=1, seconds=0.4)
    started = time.monotonic()
    assert mirror.run() == 0  # --backoff 0.01: only the hints can make it wait
    assert time.monotonic() - started >= 0.8
    assert_mirror_matches_upstream(mirror)


def test_first_sync_keeps_a_failing_project_pending(tmp_path: Path, pypi: FakePyPI) -> None:
    pypi.inject("numpy", "not_simple", times=1)
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    assert mirror.run() == cli_support.EXIT_PARTIAL
    assert mirror.page("numpy") is None
    assert "numpy" not in mirror.root_projects(), "the root index links only pages it has"
    assert list(load_state(mirror.state).pending) == ["numpy"]
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)


@pytest.mark.parametrize("fault", PAGE_FAULTS)
def test_first_sync_page_that_keeps_failing_gets_the_same_retries(
    tmp_path: Path, pypi: FakePyPI, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    """A first sync's pages are requested by the same engine as an update's (fetch_loop),
    its retries timers on the loop: the same attempts, bound and record as in an update."""
    kind, params, retried, words = PAGE_FAULTS[fault]
    pypi.inject("numpy", kind, times=50, **params)
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    capsys.readouterr()
    assert mirror.run(*page_args(kind)) == cli_support.EXIT_PARTIAL
    stderr = capsys.readouterr().err
    assert mirror.page("numpy") is None, "a wrong page was mirrored"
    assert mirror.page("django") == upstream_page(pypi.url, "django"), "the run did not go on"
    attempts = RETRIES + 1 if retried else 1
    most = 2 * attempts if kind == "reset" else attempts  # see the update's test above
    assert attempts <= pypi.count_pages("numpy") <= most, "retries lost or unbounded"
    warnings = [line for line in stderr.splitlines() if "WARNING" in line and "numpy" in line]
    assert any(words in line and "pending" in line for line in warnings), stderr
    assert list(load_state(mirror.state).pending) == ["numpy"]
    pypi.clear_faults()
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)


@pytest.mark.parametrize("form", ["html", "all"])
@pytest.mark.parametrize("fault", [name for name, spec in PAGE_FAULTS.items() if spec[2]])
def test_first_sync_page_fault_that_passes_is_retried_within_the_run(
    tmp_path: Path, pypi: FakePyPI, fault: str, form: str
) -> None:
    """Only the request that failed is made again: with both forms, the other form's
    answer is kept (the fault hits the first request, HTML's)."""
    kind, params, _, _ = PAGE_FAULTS[fault]
    pypi.inject("numpy", kind, times=1, **params)
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    assert mirror.run("--simple-format", form, *page_args(kind)) == 0
    forms = 2 if form == "all" else 1
    assert pypi.count_pages("numpy") == forms + 1
    assert_mirror_matches_upstream(mirror)


# --- upstream faults on XML-RPC ---------------------------------------------------------

# kind, parameters, retried, words its log line carries
XMLRPC_FAULTS = {
    "http-500": ("status", {"code": 500}, True, "HTTP 500"),
    "http-503": ("status", {"code": 503}, True, "HTTP 503"),
    "connection-reset": ("reset", {}, True, "connection failed"),
    "truncated": ("truncate", {}, True, "cut off"),
    "rate-limit-fault": ("xmlrpc_rate_limit", {"seconds": 0.01}, True, "rate limited"),
    "other-fault": ("xmlrpc_fault", {"code": -32500, "string": "RuntimeError: x"}, False, "-32500"),
    "malformed-xml": ("xmlrpc_malformed", {}, True, "malformed"),
    "empty-body": ("empty", {}, True, "malformed"),
    "not-utf8": ("not_utf8", {}, True, "malformed"),
    "backwards-serials": ("backwards", {}, False, "changelog serials go backwards"),
}
XMLRPC_CASES = [
    pytest.param(method, fault, id=f"{method}-{fault}")
    for method in ("changelog_last_serial", "changelog_since_serial", "list_packages_with_serial")
    for fault in XMLRPC_FAULTS
    if fault != "backwards-serials" or method == "changelog_since_serial"
]


@pytest.mark.parametrize(("method", "fault"), XMLRPC_CASES)
def test_xmlrpc_fault_fails_the_run_cleanly(
    tmp_path: Path,
    pypi: FakePyPI,
    capsys: pytest.CaptureFixture[str],
    method: str,
    fault: str,
) -> None:
    """Exit 1, one clear line, bounded attempts; nothing written, the serial unmoved."""
    kind, params, retried, words = XMLRPC_FAULTS[fault]
    mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
    first_sync = method == "list_packages_with_serial"
    if not first_sync:
        assert mirror.run() == 0
    pypi.add_release("numpy", "2.0")
    before, state_before = tree(mirror.root), tree(tmp_path)
    pypi.inject(method, kind, times=50, **params)
    pypi.reset_log()
    capsys.readouterr()
    assert mirror.run() == cli_support.EXIT_FAILED
    line = assert_one_clear_error(capsys.readouterr().err, words)
    assert method in line or method == "changelog_since_serial", line
    assert pypi.count(method) == (RETRIES + 1 if retried else 1)
    assert pypi.count_pages() == 0
    assert tree(mirror.root) == before and tree(tmp_path) == state_before
    pypi.clear_faults()
    assert mirror.run() == 0
    assert mirror.serial() == pypi.last_serial
    assert_mirror_matches_upstream(mirror)


def test_xmlrpc_read_timeout_fails_the_run_cleanly(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    pypi.add_release("numpy", "2.0")
    before = mirror.state.read_bytes()
    pypi.inject("changelog_since_serial", "slow", times=50, seconds=10.0)
    capsys.readouterr()
    assert mirror.run(*READ_TIMEOUT, "--retries", "0") == cli_support.EXIT_FAILED
    assert_one_clear_error(capsys.readouterr().err, "changelog_since_serial", "timed out")
    assert mirror.state.read_bytes() == before


@pytest.mark.parametrize("fault", ["connection-reset", "rate-limit-fault", "malformed-xml"])
def test_xmlrpc_fault_that_passes_is_retried(mirror: Mirror, pypi: FakePyPI, fault: str) -> None:
    kind, params, _, _ = XMLRPC_FAULTS[fault]
    pypi.add_release("numpy", "2.0")
    pypi.inject("changelog_since_serial", kind, times=1, **params)
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)


def test_failure_on_a_later_changelog_page_applies_nothing(tmp_path: Path) -> None:
    with FakePyPI(page_cap=3) as pypi:
        pypi.add_release("alpha", "1.0")
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        for index in range(4):
            pypi.add_release(f"proj{index}", "1.0", files=1)
        before, state_before = tree(mirror.root), mirror.state.read_bytes()
        pypi.inject("changelog_since_serial", "slow", times=1, seconds=0)  # page 1 answers
        pypi.inject("changelog_since_serial", "status", times=50, code=503)
        assert mirror.run() == cli_support.EXIT_FAILED
        assert tree(mirror.root) == before and mirror.state.read_bytes() == state_before
        pypi.clear_faults()
        assert mirror.run() == 0
        assert_mirror_matches_upstream(mirror)


# --- hostile names ---------------------------------------------------------------------

# Names XML 1.0 can carry: each must be skipped with a warning.
HOSTILE = [
    "..",
    ".",
    "../x",
    "../../escape",
    "a/b",
    "/abs",
    "/tmp/pypi-mirror-hostile",
    "a\\b",
    "..\\..\\x",
    "numpy/../../x",
    "x" * 1000,
    "a" * 151,
    "n\u03c5mpy",  # Greek upsilon
    "\uff4eumpy",  # fullwidth n
    "dj\u0430ngo",  # Cyrillic a
    "numpy\u200b",  # zero-width space
    "\ufeffnumpy",  # byte order mark
    "a\nb",
    "a\tb",
    "a\x7fb",
    "a\u2028b",
    "",
    " ",
    "-",
    "_",
    "%2e%2e",
    "~root",
    "*",
]
# Valid names that normalize to a project that exists: mapped to it, nothing else.
LOOK_ALIKES = ["NUMPY", "Zope_Interface", "foo.bar", "DJANGO"]
# Characters XML 1.0 cannot carry at all: PyPI's answer would be malformed XML.
UNCARRIABLE = ["a\x00b", "\x01", "a\x1b[31mred", "\x08x"]


def test_hostile_names_in_listing_and_changelog_touch_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Extends test_mirror's hostile-names test: more names, renames, look-alikes."""
    root = tmp_path / "deep" / "er" / "m"  # so that ../../ stays inside tmp_path, and is seen
    absolute = [Path(name) for name in HOSTILE if name.startswith("/")]
    assert not any(path.exists() for path in absolute)
    with FakePyPI() as pypi:
        for name in PROJECTS:
            pypi.add_release(name, "1.0", files=2)
        for name in HOSTILE + LOOK_ALIKES:
            pypi.add_raw_listing_entry(name, 1)
        mirror = Mirror(root, tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        for name in HOSTILE + LOOK_ALIKES:
            pypi.add_journal_row(name, None, "create")
            pypi.add_journal_row(name, "1.0", "remove project")
            pypi.add_journal_row("numpy", None, f"rename from {name}")
        for name in PROJECTS:  # warehouse bumps a project's serial with every row naming it
            pypi.add_role(name, "alice")
        pypi.add_release("numpy", "2.0")
        assert mirror.run() == 0
        stderr = capsys.readouterr().err
        assert files_outside(tmp_path, root) == [tmp_path / "state.json"]
        assert not any(path.exists() for path in absolute)
        inside = {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()}
        assert inside <= {"pypi_mirror", ".lock", ".mirror-id", "status.json"}
        simple = sorted(p.name for p in mirror.layout.simple_dir.iterdir())
        assert simple == sorted(project_dir_name(name) for name in PROJECTS)
        assert mirror.root_projects() == {project_dir_name(name): name for name in PROJECTS}
        for name in simple:
            assert mirror.page(name) == upstream_page(pypi.url, name)
        assert_consistent(mirror)
        skipped = [line for line in stderr.splitlines() if "WARNING skipping" in line]
        # each hostile name: once in the listing, three times in the changelog
        assert len(skipped) == 4 * len(HOSTILE), "\n".join(skipped)


@pytest.mark.parametrize("where", ["listing", "changelog"])
@pytest.mark.parametrize("name", UNCARRIABLE, ids=repr)
def test_names_xml_cannot_carry_fail_the_run_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, name: str
) -> None:
    with FakePyPI() as pypi:
        pypi.add_release("good", "1.0")
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        if where == "listing":
            pypi.add_raw_listing_entry(name, 1)
        else:
            assert mirror.run() == 0
            pypi.add_journal_row(name, None, "create")
            pypi.add_release("good", "2.0")
        before = tree(tmp_path)
        capsys.readouterr()
        assert mirror.run() == cli_support.EXIT_FAILED
        assert_one_clear_error(capsys.readouterr().err, "malformed")
        assert tree(tmp_path) == before


HOSTILE_SERIALS = {"negative": -1, "bool": True, "text": "7", "float": 1.5, "nil": None}


def test_hostile_serials_in_the_listing_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listed serial that is no serial is skipped: a negative one once became the state's
    serial, which the next run then refused as corrupt (the mirror stuck until repaired)."""
    with FakePyPI() as pypi:  # an empty journal: the listing alone sets the first serial
        for name, serial in HOSTILE_SERIALS.items():
            pypi.add_raw_listing_entry(name, serial)  # type: ignore[arg-type]
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        assert capsys.readouterr().err.count("is not a serial") == len(HOSTILE_SERIALS)
        assert mirror.serial() == 0
        assert mirror.run() == 0, "the state the first run wrote was refused"
        pypi.add_release("good", "1.0")
        assert mirror.run() == 0
        assert mirror.root_projects() == {"good": "good"}


def test_a_last_serial_that_is_no_serial_fails_the_run(tmp_path: Path) -> None:
    client = pypi_client.PypiClient("http://127.0.0.1:9", settings.Config())
    for answer in (-3, True, "12", 1.0):
        client._xmlrpc = lambda method, answer=answer: answer  # type: ignore[method-assign]
        with pytest.raises(upstream_errors.UpstreamError, match="not a serial"):
            client.changelog_last_serial()


@pytest.mark.parametrize("source", ["xmlrpc", "json-root"])
def test_a_listing_past_its_cap_is_refused_once_and_never_retried(
    pypi: FakePyPI, source: str
) -> None:
    """The listing streams into its parser; past `max_xmlrpc_bytes` (512 MiB by default,
    here 200 bytes) the transfer stops, nothing more reaches the sink, and the run is
    told why: an answer that large is no hiccup, asking again would bring it again."""
    config = settings.Config(pypi_url=pypi.url, max_xmlrpc_bytes=200, xmlrpc_interval=0)
    client = pypi_client.PypiClient(pypi.url, config)
    seen: list[object] = []
    pypi.reset_log()
    try:
        with pytest.raises(upstream_errors.UpstreamError, match="over the 200-byte limit") as info:
            if source == "xmlrpc":
                client.list_packages_with_serial(lambda name, serial: seen.append(name))
            else:
                client.list_projects_json(lambda name, serial: seen.append(name))
    finally:
        client.close()
    assert not isinstance(info.value, upstream_errors.Transient)
    assert client.requests_made == 1
    assert len(seen) < len(pypi.project_names())
    assert pypi.count("list_packages_with_serial" if source == "xmlrpc" else "root") == 1


def test_a_closed_client_calls_again_on_a_new_handle(pypi: FakePyPI) -> None:
    """close() ends the streaming calls' handles; a client used after it makes new ones
    rather than use a closed one (libcurl refuses those)."""
    client = pypi_client.PypiClient(pypi.url, settings.Config(xmlrpc_interval=0))
    assert client.changelog_last_serial() == pypi.last_serial
    client.close()
    assert client.changelog_last_serial() == pypi.last_serial
    client.close()


CONTROL = [chr(code) for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]]


def test_the_name_gate_refuses_every_control_character() -> None:
    """What XML cannot bring must still never pass the gate (another transport might)."""
    names = [f"a{char}b" for char in CONTROL] + [*CONTROL, *HOSTILE]
    for name in names:
        with pytest.raises(InvalidProjectName):
            project_dir_name(name)
    listing = {name: 7 for name in names} | {"NumPy": 5}
    wanted = changelog.Listing()
    for display, serial in listing.items():
        changelog.add_listed(wanted, display, serial)
    assert list(wanted) == ["numpy"]
    rows = [[name, None, 0, "create", serial] for serial, name in enumerate(names, start=1)]
    rows.append(["numpy", None, 0, f"rename from {names[0]}", len(rows) + 1])
    entries = changelog.parse_changelog_rows(rows, 0)
    assert list(changelog.projects_to_refresh(entries)) == ["numpy"]
    assert changelog.identity_changes(entries) == {"numpy"}


# --- local faults: disk full, read-only, damaged state ----------------------------------


def run_with_file_size_limit(
    mirror: Mirror, limit: int, *extra: str
) -> subprocess.CompletedProcess:
    """The CLI with RLIMIT_FSIZE: a write past `limit` bytes fails with EFBIG, as on a full disk.

    SIGXFSZ is ignored (Python does by default; made explicit), so the write
    fails with an error instead of killing the process.
    """

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, str(REPO / "pypi_mirror.py"), *mirror.args(*extra)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_file_size,
    )


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(step=0.01) as fake:
        yield fake


def with_rstuf(mirror: Mirror, rstuf: FakeRstuf) -> Mirror:
    bootstrap(rstuf, mirror_view(mirror.layout))
    mirror.rstuf_url = rstuf.url
    return mirror


def test_disk_full_while_writing_pages(mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf) -> None:
    with_rstuf(mirror, rstuf)
    serial, old = mirror.serial(), mirror.page("numpy")
    pypi.add_release("Django", "2.0")
    pypi.add_release("numpy", "2.0", files=400)  # a page far over the limit
    result = run_with_file_size_limit(mirror, 32 * 1024, *RSTUF_FAST)
    assert result.returncode == cli_support.EXIT_FAILED, result.stderr
    page = mirror.layout.project_page("numpy")
    assert_one_clear_error(
        result.stderr,
        f"local I/O error: {page}: File too large: a file size limit stopped the write: "
        "raise it (ulimit -f, LimitFSIZE=), then run again; nothing is lost",
    )
    assert mirror.serial() == serial, "the serial moved past pages that are not on disk"
    assert mirror.page("numpy") == old
    assert_consistent(mirror)
    assert mirror.run(*RSTUF_FAST) == 0
    assert_mirror_matches_upstream(mirror)
    assert rstuf.view == mirror_view(mirror.layout), "a change was lost"


def test_disk_full_while_writing_state(tmp_path: Path) -> None:
    with FakePyPI() as pypi:
        names = [f"tiny{index}" for index in range(30)]
        for name in names:
            pypi.add_release(name, "1.0", files=1)
        mirror = Mirror(tmp_path / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        mirror.had_rstuf = True  # RSTUF not configured yet: the changes are owed to it
        for name in names:  # 30 changes owed and 30 copies to retire: a state of ~6 kB
            pypi.add_release(name, "2.0", files=1)
        before, state_before = tree(mirror.root), mirror.state.read_bytes()
        result = run_with_file_size_limit(mirror, 4096)
        assert result.returncode == cli_support.EXIT_FAILED, result.stderr
        assert_one_clear_error(
            result.stderr, f"local I/O error: {mirror.state}: File too large: ", "run again"
        )
        assert tree(mirror.root) == before, "pages written before their intent was saved"
        assert mirror.state.read_bytes() == state_before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "state.json"]
        assert mirror.run() == cli_support.EXIT_PARTIAL  # done, RSTUF still owed
        assert_mirror_matches_upstream(mirror)


@contextlib.contextmanager
def mounted(*args: str, target: Path) -> Iterator[None]:
    """mount(8) `args` on `target` for the block; skip the test where mounting is refused."""
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here: variant not faked")
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip()}): variant not faked")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def fill(directory: Path) -> None:
    """Write a ballast file until the filesystem is full."""
    with open(directory / "ballast", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)


def test_full_filesystem_under_the_mirror(
    tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real ENOSPC (a small tmpfs) while pages are written; the state lives elsewhere."""
    volume = tmp_path / "volume"
    volume.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=256k", "tmpfs", target=volume):
        mirror = Mirror(volume / "m", tmp_path / "state.json", pypi.url)
        assert mirror.run() == 0
        with_rstuf(mirror, rstuf)
        serial = mirror.serial()
        pypi.add_release("numpy", "2.0", files=3)
        pypi.add_release("Django", "2.0", files=3)
        fill(volume)
        capsys.readouterr()
        assert mirror.run(*RSTUF_FAST) == cli_support.EXIT_FAILED
        line = assert_one_clear_error(
            capsys.readouterr().err,
            "No space left on device: the filesystem is full: free space or inodes on it",
            "then run again; nothing is lost",
        )
        assert f"local I/O error: {mirror.layout.simple_dir}/" in line  # the page written
        assert mirror.serial() == serial
        assert_consistent(mirror)
        (volume / "ballast").unlink()
        assert mirror.run(*RSTUF_FAST) == 0
        assert_mirror_matches_upstream(mirror)
        assert rstuf.view == mirror_view(mirror.layout)


@pytest.mark.parametrize("read_only", ["mirror", "served", "state"])
def test_read_only_directory_fails_cleanly(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str], read_only: str
) -> None:
    """A read-only bind mount (root ignores permission bits, so chmod would prove nothing).

    Seen with a read-only served tree: the line named a temp file of .staging."""
    target = {"mirror": mirror.root, "served": mirror.layout.served_dir}.get(
        read_only, mirror.state.parent / "ro"
    )
    if read_only == "state":  # the state file alone in a directory made read-only
        target.mkdir()
        moved = Mirror(mirror.root, target / "state.json", mirror.pypi_url)
        mirror.state.rename(moved.state)
        mirror = moved
    pypi.add_release("numpy", "2.0")
    before, state_before = tree(mirror.root), mirror.state.read_bytes()
    with mounted("--bind", str(target), target=target):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        capsys.readouterr()
        assert mirror.run() == cli_support.EXIT_FAILED
        line = assert_one_clear_error(
            capsys.readouterr().err,
            f"local I/O error: {target}/",
            ": Read-only file system: the filesystem is mounted read-only: make it writable",
            "then run again; nothing is lost",
        )
        assert ".staging" not in line
    if read_only != "served":  # there the intent of the first page was saved before its write
        assert tree(mirror.root) == before and mirror.state.read_bytes() == state_before
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)


def test_a_directory_where_a_page_copy_goes_is_named_not_the_temp_file(
    mirror: Mirror, pypi: FakePyPI
) -> None:
    """Seen: a failed rename or link named the temp file in .staging, not the place."""
    pypi.add_release("numpy", "2.0")
    page = upstream_page(pypi.url, "numpy")
    assert page is not None
    copy = mirror.layout.project_dir("numpy") / prefixed_name(digest_bytes(page).hexdigest)
    (copy / "in-the-way").mkdir(parents=True)
    result = mirror.cli()
    assert result.returncode == cli_support.EXIT_FAILED, result.stderr
    line = assert_one_clear_error(
        result.stderr,
        f"local I/O error: {copy}: Is a directory: a directory stands where a file is needed: "
        "move it away, then run again; nothing is lost",
    )
    assert ".tmp-" not in line
    shutil.rmtree(copy)
    assert mirror.run() == 0
    assert_mirror_matches_upstream(mirror)


@pytest.mark.parametrize("script", ["pypi_mirror.py", "generate_csv.py"])
def test_a_mirror_dir_that_is_not_a_directory_is_named(script: str, tmp_path: Path) -> None:
    """Seen: ``--mirror-dir /dev/null`` ended in 'File exists'."""
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--mirror-dir", "/dev/null"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    code = cli_support.EXIT_USAGE if script == "pypi_mirror.py" else cli_support.EXIT_FAILED
    assert result.returncode == code, result.stderr
    assert_one_clear_error(result.stderr, "/dev/null", "not a directory", "--mirror-dir")
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_the_mirror_directory_goes_is_named(tmp_path: Path, pypi: FakePyPI) -> None:
    (tmp_path / "srv").write_text("a file, not a directory")
    mirror = Mirror(tmp_path / "srv" / "m", tmp_path / "state.json", pypi.url)
    result = subprocess.run(
        [sys.executable, str(REPO / "pypi_mirror.py"), *mirror.args()],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == cli_support.EXIT_FAILED, result.stderr
    assert_one_clear_error(
        result.stderr,
        f"local I/O error: {mirror.root}: Not a directory: a file stands where a directory is "
        "needed: move it away, or give another --mirror-dir or --state, then run again",
    )


def _with_schema(good: bytes, schema: object) -> bytes:
    document = json.loads(good)
    document["schema"] = schema
    return json.dumps(document).encode()


def _with_serial(good: bytes, serial: object) -> bytes:
    document = json.loads(good)
    document["serial"] = serial
    return json.dumps(document).encode()


DAMAGED_STATES = {
    "truncated": (lambda good: good[: len(good) // 2], "--full-check"),
    "empty": (lambda good: b"", "--full-check"),
    "zeros": (lambda good: b"\0" * len(good), "--full-check"),
    "not-json": (lambda good: b"\x89PNG\r\n\x1a\n\xff garbage", "--full-check"),
    "json-list": (lambda good: b"[]", "--full-check"),
    "serial-a-string": (lambda good: _with_serial(good, "12"), "--full-check"),
    "unknown-schema": (lambda good: _with_schema(good, 3), "release that wrote it"),
    "no-schema": (lambda good: _with_schema(good, None), "release that wrote it"),
}


@pytest.mark.parametrize("damage", DAMAGED_STATES)
def test_damaged_state_is_refused_with_recovery_advice(
    mirror: Mirror, pypi: FakePyPI, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    make, advice = DAMAGED_STATES[damage]
    damaged = make(mirror.state.read_bytes())
    mirror.state.write_bytes(damaged)
    pypi.add_release("numpy", "2.0")
    before = tree(mirror.root)
    pypi.reset_log()
    capsys.readouterr()
    assert mirror.run() == cli_support.EXIT_FAILED
    assert_one_clear_error(capsys.readouterr().err, str(mirror.state), advice)
    assert mirror.state.read_bytes() == damaged, "the damaged state was overwritten"
    assert tree(mirror.root) == before
    assert pypi.requests == [], "a run with an untrusted state went on"


def test_state_that_is_a_directory_is_refused(
    mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror.state.unlink()
    mirror.state.mkdir()
    capsys.readouterr()
    assert mirror.run() == cli_support.EXIT_FAILED
    assert_one_clear_error(capsys.readouterr().err, str(mirror.state))
    assert mirror.state.is_dir()


# --- RSTUF down across several updates ----------------------------------------------------


def owed(mirror: Mirror) -> list[str]:
    box = load_state(mirror.state).outbox
    return sorted(box.dirty | box.in_flight_paths())


def sent_since(rstuf: FakeRstuf, start: int) -> list[str]:
    """Every path sent (added or removed) in requests accepted after `start`."""
    paths = []
    for request in rstuf.accepted[start:]:
        if request.action != PUBLISH:
            for item in request.body["artifacts"]:
                paths.append(item["path"] if isinstance(item, dict) else item)
    return sorted(paths)


ROUNDS = [
    lambda p: (
        p.add_release("numpy", "2.0"),
        p.create_project("Brand-New"),
        p.remove_project("Django"),
    ),
    lambda p: (
        p.add_release("numpy", "3.0"),
        p.remove_project("Brand-New"),
        p.add_release("Django", "5.0"),
    ),
    lambda p: (p.rename_project("requests", "requests3"), p.yank_release("zope.interface", "1.0")),
]
OUTAGES = [
    "unreachable",
    "server-error",
    "not-bootstrapped",
    "refused",
    "task-errored",
    "task-failure",
]


@pytest.mark.parametrize("outage", OUTAGES)
def test_rstuf_down_across_updates_then_each_change_goes_once_in_its_final_state(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf, outage: str
) -> None:
    with_rstuf(mirror, rstuf)
    with FakeRstuf(step=0.01) as broken:
        down_url = broken.url
        if outage == "unreachable":
            down_url = "http://127.0.0.1:9"
        elif outage == "server-error":
            broken.fail_requests(500, times=10**6)
        elif outage == "not-bootstrapped":
            rstuf.set_bootstrapped(False)
            down_url = rstuf.url
        elif outage == "refused":
            broken.fail_requests(422, times=10**6, detail=[{"msg": "refused", "loc": ["body"]}])
        else:
            broken.fail_tasks("ERRORED" if outage == "task-errored" else "FAILURE", times=10**6)
        mirror.rstuf_url = down_url
        for change in ROUNDS:
            change(pypi)
            assert mirror.run(*RSTUF_FAST, "--retries", "1") == cli_support.EXIT_PARTIAL
            assert_mirror_matches_upstream(mirror)
            assert mirror.serial() == pypi.last_serial, "RSTUF must not hold the mirror back"
    owed_paths = owed(mirror)
    assert "simple/brand-new/index.html" in owed_paths  # added then removed while down
    rstuf.set_bootstrapped(True)
    mirror.rstuf_url = rstuf.url
    start = len(rstuf.accepted)
    assert mirror.run(*RSTUF_FAST) == 0
    assert sent_since(rstuf, start) == owed_paths, "each owed change exactly once"
    assert rstuf.view == mirror_view(mirror.layout)
    assert owed(mirror) == []


def test_task_that_never_finishes_is_sent_again_once_it_expires(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    with_rstuf(mirror, rstuf)
    rstuf.hang_tasks(times=1)
    for change in ROUNDS:  # the first task hangs; its paths wait, others go
        change(pypi)
        # each run waits its whole budget for the hung task: room for the others to finish
        assert mirror.run(*RSTUF_FAST, "--rstuf-wait", "1.5") == cli_support.EXIT_PARTIAL
    state = load_state(mirror.state)
    assert len(state.outbox.tasks) == 1
    stuck = set(owed(mirror))
    published = {path: info for path, info in rstuf.view.items() if path not in stuck}
    expected = {
        path: info for path, info in mirror_view(mirror.layout).items() if path not in stuck
    }
    assert published == expected, "a stuck task held back every later change"
    for task in state.outbox.tasks:  # seven hours later
        task.sent_at -= 7 * 3600
    save_state(mirror.state, state)
    owed_paths = owed(mirror)
    start = len(rstuf.accepted)
    assert mirror.run(*RSTUF_FAST) == 0
    assert sent_since(rstuf, start) == owed_paths, "each owed change exactly once"
    assert rstuf.view == mirror_view(mirror.layout)
