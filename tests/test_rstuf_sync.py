"""pypi_mirror.py with RSTUF in the loop: the outbox, final states, faults, publishing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.store import digest_file
from pypi_index_mirror.ops import cli as cli_support
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import ADD, PUBLISH, REMOVE, FakeRstuf
from tests.mirror_helpers import (
    Mirror,
    assert_consistent,
    assert_mirror_matches_upstream,
    mirror_view,
    signed_mirror,
    upstream_page,
)

RSTUF_FAST = ["--rstuf-poll", "0.05"]


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(step=0.02) as fake:
        yield fake


@pytest.fixture
def mirror(tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf) -> Mirror:
    return signed_mirror(tmp_path, pypi.url, rstuf)  # the first sync had no RSTUF yet


def sent_paths(rstuf: FakeRstuf, action: str) -> list[str]:
    found = []
    for request in rstuf.accepted:
        if request.action != action:
            continue
        for item in request.body["artifacts"]:
            found.append(item["path"] if isinstance(item, dict) else item)
    return found


def test_first_sync_sends_nothing(tmp_path: Path, pypi: FakePyPI, rstuf: FakeRstuf) -> None:
    mirror = Mirror(tmp_path / "m", tmp_path / "s.json", pypi.url, rstuf.url)
    assert mirror.run(*RSTUF_FAST) == 0
    assert rstuf.accepted == []


def test_update_sends_final_state_of_each_changed_page(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    pypi.rename_project("requests", "requests3")
    pypi.create_project("Brand-New")
    assert mirror.run(*RSTUF_FAST) == 0
    assert_mirror_matches_upstream(mirror)
    assert rstuf.view == mirror_view(mirror.layout)
    assert sorted(sent_paths(rstuf, ADD)) == [
        "index.html",
        "simple/brand-new/index.html",
        "simple/numpy/index.html",
        "simple/requests3/index.html",
    ]
    assert sorted(sent_paths(rstuf, REMOVE)) == [
        "simple/django/index.html",
        "simple/requests/index.html",
    ]
    state = load_state(mirror.state)
    assert not state.outbox.dirty and not state.outbox.tasks


def test_removed_and_recreated_project_is_only_added(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    pypi.remove_project("numpy")
    pypi.create_project("numpy")
    pypi.add_release("numpy", "3.0")
    assert mirror.run(*RSTUF_FAST) == 0
    assert "simple/numpy/index.html" in sent_paths(rstuf, ADD)
    assert "simple/numpy/index.html" not in sent_paths(rstuf, REMOVE)
    assert rstuf.view == mirror_view(mirror.layout)


def test_artifacts_carry_length_and_blake2b_of_the_bytes_served(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    pypi.add_release("numpy", "2.0")
    assert mirror.run(*RSTUF_FAST) == 0
    (request,) = [r for r in rstuf.accepted if r.action == ADD]
    item = next(a for a in request.body["artifacts"] if a["path"] == "simple/numpy/index.html")
    page = mirror.layout.project_page("numpy").read_bytes()
    import hashlib

    assert item["info"] == {
        "length": len(page),
        "hashes": {"blake2b-256": hashlib.blake2b(page, digest_size=32).hexdigest()},
    }
    # sent unpublished, then covered by a publish the mirror posts and follows
    assert request.body["publish_artifacts"] is False
    (publish,) = [r for r in rstuf.accepted if r.action == PUBLISH]
    assert rstuf.task_states()[publish.task_id] == "SUCCESS"


def test_large_update_is_batched_and_published(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    for index in range(12):
        pypi.add_release(f"bulk{index}", "1.0", files=1)
    assert mirror.run(*RSTUF_FAST, "--rstuf-batch", "5") == 0
    adds = [r for r in rstuf.accepted if r.action == ADD]
    publishes = [r for r in rstuf.accepted if r.action == PUBLISH]
    assert len(adds) == 3 and all(r.body["publish_artifacts"] is False for r in adds)
    # 3 requests, 2 worker processes: at least one publish per round of processes
    assert 2 <= len(publishes) <= 4
    assert rstuf.view == mirror_view(mirror.layout)
    assert set(rstuf.task_states().values()) == {"SUCCESS"}


def test_without_rstuf_url_changes_wait_then_go(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    url, mirror.rstuf_url = mirror.rstuf_url, None
    pypi.add_release("numpy", "2.0")
    result = mirror.cli()
    assert result.returncode == cli_support.EXIT_PARTIAL
    assert result.stderr.count("wait in the outbox") == 1
    assert rstuf.accepted == []
    mirror.rstuf_url = url
    assert mirror.run(*RSTUF_FAST) == 0
    assert rstuf.view == mirror_view(mirror.layout)


@pytest.mark.parametrize(
    "fault",
    [
        "unreachable",
        "server_error",
        "not_bootstrapped",
        "refused",
        "task_errored",
        "task_failure",
        "success_status_false",
    ],
)
def test_rstuf_fault_keeps_changes_for_next_run(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf, fault: str
) -> None:
    url = mirror.rstuf_url
    if fault == "unreachable":
        mirror.rstuf_url = "http://127.0.0.1:9"
    elif fault == "server_error":
        rstuf.fail_requests(500, times=2)  # both attempts of --retries 1
    elif fault == "not_bootstrapped":
        rstuf.set_bootstrapped(False)
    elif fault == "refused":
        rstuf.fail_requests(422, times=1, detail=[{"msg": "field required", "loc": ["body"]}])
    elif fault == "task_errored":
        rstuf.fail_tasks("ERRORED", times=1, error="database is gone")
    elif fault == "task_failure":
        rstuf.fail_tasks("FAILURE", times=1, error="worker crashed")
    elif fault == "success_status_false":
        rstuf.fail_tasks("SUCCESS", times=1, error="bin broken")
    pypi.add_release("numpy", "2.0")
    pypi.remove_project("Django")
    result = mirror.cli(*RSTUF_FAST, "--retries", "1")
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    assert "RSTUF" in result.stderr
    assert mirror.page("numpy") is not None and mirror.page("django") is None  # mirror updated
    state = load_state(mirror.state)
    assert state.serial == pypi.last_serial
    owed = state.outbox.dirty | state.outbox.in_flight_paths()
    changed = {"index.html", "simple/django/index.html", "simple/numpy/index.html"}
    # a refused request keeps everything; a failed task keeps what that task carried
    assert owed == changed if not fault.startswith(("task", "success")) else owed < changed
    assert owed
    # the next healthy run delivers each change once, in its final state
    mirror.rstuf_url = url
    rstuf.set_bootstrapped(True)
    before = len(rstuf.accepted)
    assert mirror.run(*RSTUF_FAST) == 0
    assert rstuf.view == mirror_view(mirror.layout)
    later = rstuf.accepted[before:]
    paths = [
        p
        for r in later
        if r.action != PUBLISH
        for p in (a["path"] if isinstance(a, dict) else a for a in r.body["artifacts"])
    ]
    assert sorted(paths) == sorted(owed), "each owed change delivered exactly once"
    assert not load_state(mirror.state).outbox.tasks


def test_unfinished_task_is_remembered_not_resent(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.hang_tasks(times=1)
    pypi.add_release("numpy", "2.0")
    assert mirror.run(*RSTUF_FAST, "--rstuf-wait", "0.3") == cli_support.EXIT_PARTIAL
    state = load_state(mirror.state)
    assert len(state.outbox.tasks) == 1 and not state.outbox.dirty
    sent = len(sent_paths(rstuf, ADD))
    assert mirror.run(*RSTUF_FAST, "--rstuf-wait", "0.3") == cli_support.EXIT_PARTIAL
    assert len(sent_paths(rstuf, ADD)) == sent, "a task still running must not be sent again"


def test_path_in_flight_waits_for_its_task(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.hang_tasks(times=1)
    pypi.add_release("numpy", "2.0")
    assert mirror.run(*RSTUF_FAST, "--rstuf-wait", "0.2") == cli_support.EXIT_PARTIAL
    pypi.add_release("numpy", "3.0")
    assert mirror.run(*RSTUF_FAST, "--rstuf-wait", "0.2") == cli_support.EXIT_PARTIAL
    numpy_adds = sent_paths(rstuf, ADD).count("simple/numpy/index.html")
    assert numpy_adds == 1, "the newer state waits until the older task has ended"
    assert "simple/numpy/index.html" in load_state(mirror.state).outbox.dirty


def test_token_comes_from_environment_and_is_never_logged(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    pypi.add_release("numpy", "2.0")
    secret = "s3cr3t-token-value"
    before = len(rstuf.request_log)
    result = mirror.cli(*RSTUF_FAST, "-v", env={"RSTUF_API_TOKEN": secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stderr + result.stdout
    posts = [r for r in rstuf.request_log[before:] if r.method == "POST"]
    assert posts and all(r.headers.get("authorization") == f"Bearer {secret}" for r in posts)


def test_no_authorization_header_without_token(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    pypi.add_release("numpy", "2.0")
    assert mirror.run(*RSTUF_FAST) == 0
    assert all("authorization" not in r.headers for r in rstuf.request_log)


def test_old_prefixed_copies_are_kept_for_the_grace_period(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    directory = mirror.layout.project_dir("numpy")
    old_copy = next(p for p in directory.iterdir() if p.name != "index.html")
    pypi.add_release("numpy", "2.0")
    assert mirror.run(*RSTUF_FAST) == 0
    assert old_copy.exists(), "a client between metadata refresh and download still needs it"
    assert_consistent(mirror)
    assert mirror.run(*RSTUF_FAST, "--grace", "0") == 0
    assert not old_copy.exists()
    assert_consistent(mirror)
    current = directory / f"{digest_file(directory / 'index.html').hexdigest}.index.html"
    assert current.exists() and os.path.samefile(current, directory / "index.html")
    assert load_state(mirror.state).retired == {}


def test_removed_project_directory_goes_once_rstuf_confirmed(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    pypi.remove_project("Django")
    url, mirror.rstuf_url = mirror.rstuf_url, None
    assert mirror.run("--grace", "0") == cli_support.EXIT_PARTIAL  # owed to RSTUF
    assert mirror.layout.project_dir("django").exists(), "RSTUF still signs its old page"
    mirror.rstuf_url = url
    assert mirror.run(*RSTUF_FAST, "--grace", "0") == 0
    assert "simple/django/index.html" not in rstuf.view
    assert not mirror.layout.project_dir("django").exists()


# --- what waiting cannot fix: a misconfigured RSTUF, and deletes RSTUF never held ----------


def status_json(mirror: Mirror) -> dict:
    return json.loads((mirror.root / "status.json").read_text())


@pytest.mark.parametrize("fault", ["401", "403", "api-v1-twice", "not-rstuf"])
def test_a_misconfigured_rstuf_fails_the_run_and_keeps_every_change(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf, fault: str
) -> None:
    """401, 403 and a URL that is no RSTUF API end in exit 1 with RSTUF's words, the mirror
    updated, the changes kept in the outbox and no success recorded; RSTUF's own 404 before
    its bootstrap stays a wait (exit 75, test_rstuf_fault_keeps_changes_for_next_run)."""
    url = mirror.rstuf_url
    if fault == "401":
        rstuf.fail_requests(401, times=100, detail="Not authenticated")
        words = "HTTP 401): Not authenticated; check the RSTUF token (RSTUF_API_TOKEN)"
    elif fault == "403":
        rstuf.fail_requests(403, times=100, detail="Not enough permissions")
        words = "HTTP 403): Not enough permissions; check the RSTUF token's scopes"
    elif fault == "api-v1-twice":  # FastAPI's {"detail": "Not Found"} for a route it lacks
        mirror.rstuf_url = f"{url}/api/v1"
        words = "the RSTUF URL is not an RSTUF API: POST /api/v1/artifacts/ answered HTTP 404"
    else:  # a web server that is no RSTUF
        page = "<html>404 Not Found</html>"
        rstuf.fail_requests(404, times=100, body=page, content_type="text/html")
        words = "answered HTTP 404 (<html>404 Not Found</html>); check the RSTUF URL"
    success_before = status_json(mirror)["last_success"]
    pypi.add_release("numpy", "2.0")
    result = mirror.cli(*RSTUF_FAST)
    assert result.returncode == cli_support.EXIT_FAILED, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert words in error and "wait in the outbox" in error
    assert "Traceback" not in result.stderr
    assert "exit=1" in result.stderr.splitlines()[-1]
    assert mirror.page("numpy") == upstream_page(pypi.url, "numpy")  # the mirror is updated
    state = load_state(mirror.state)
    assert state.serial == pypi.last_serial
    assert state.outbox.dirty == {"simple/numpy/index.html"}
    assert not state.outbox.tasks and rstuf.accepted == []
    status = status_json(mirror)
    assert status["last_run"]["exit_code"] == 1 and words in status["last_run"]["error"]
    assert status["last_success"] == success_before
    # fixed: the next run delivers what waited
    mirror.rstuf_url = url
    rstuf.clear_request_faults()
    assert mirror.run(*RSTUF_FAST) == 0
    assert rstuf.view == mirror_view(mirror.layout)


def test_a_delete_rstuf_never_held_is_warned_counted_and_not_quiet(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf, tmp_path: Path
) -> None:
    """RSTUF's database lost rows the mirror had registered (a backup restored): the deletes
    it answers with not_found_artifacts are named once, counted, and the run exits 75."""
    view = rstuf.view
    gone = [f"simple/{name}/index.html" for name in ("django", "numpy", "requests")]
    rstuf.restore_backup({path: info for path, info in view.items() if path not in gone})
    for name in ("Django", "numpy", "requests"):
        pypi.remove_project(name)
    metrics_file = tmp_path / "mirror.prom"
    result = mirror.cli(*RSTUF_FAST, "--metrics-file", str(metrics_file))
    assert result.returncode == cli_support.EXIT_PARTIAL, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "not_found_artifacts" in line]
    assert len(warnings) == 1, result.stderr
    assert "RSTUF answered 3 delete(s) with not_found_artifacts" in warnings[0]
    assert all(path in warnings[0] for path in gone) and "run --audit" in warnings[0]
    assert "rstuf_not_found=3 " in result.stderr.splitlines()[-1]
    status = status_json(mirror)
    assert status["last_run"]["counts"]["rstuf_not_found"] == 3
    assert status["totals"]["rstuf_not_found"] == 3
    prom = metrics_file.read_text()
    assert "pypi_mirror_rstuf_deletes_not_found_total 3\n" in prom
    assert "# TYPE pypi_mirror_rstuf_deletes_not_found_total counter\n" in prom
    assert "pypi_mirror_last_run_rstuf_deletes_not_found 3\n" in prom
    assert not load_state(mirror.state).outbox  # nothing is owed: RSTUF holds none of them
    assert rstuf.view == mirror_view(mirror.layout)
    assert mirror.run(*RSTUF_FAST) == 0  # said once: the next run has nothing to report


def test_a_delete_of_a_page_rstuf_never_heard_of_is_no_surprise(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    """Created and removed while RSTUF was not configured: RSTUF's not_found_artifacts is
    what the mirror expected (it recorded that RSTUF held nothing there)."""
    url, mirror.rstuf_url = mirror.rstuf_url, None
    pypi.create_project("Brand_New")
    assert mirror.run() == cli_support.EXIT_PARTIAL  # owed to RSTUF, no URL
    pypi.remove_project("Brand_New")
    assert mirror.run() == cli_support.EXIT_PARTIAL
    mirror.rstuf_url = url
    result = mirror.cli(*RSTUF_FAST)
    assert result.returncode == 0, result.stderr
    assert "simple/brand-new/index.html" in sent_paths(rstuf, REMOVE)
    assert "not_found" not in result.stderr.replace("rstuf_not_found=0", "")
    assert rstuf.view == mirror_view(mirror.layout)


# --- honest counts: what this run sent, and what RSTUF confirmed of an earlier run's ------


def test_paths_an_earlier_run_sent_are_counted_when_rstuf_confirms_them(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    first = mirror.cli(*RSTUF_FAST, "--rstuf-wait", "0")  # sent; not waited for
    assert first.returncode == cli_support.EXIT_PARTIAL, first.stderr
    assert " rstuf_sent=2 rstuf_confirmed=0 " in first.stderr.splitlines()[-1]
    second = mirror.cli(*RSTUF_FAST)
    assert second.returncode == 0, second.stderr
    assert " rstuf_sent=0 rstuf_confirmed=2 " in second.stderr.splitlines()[-1]
    status = status_json(mirror)
    assert status["last_run"]["counts"]["rstuf_confirmed"] == 2
    assert status["totals"]["rstuf_sent"] == status["totals"]["rstuf_confirmed"] == 2


def test_a_run_stopped_while_waiting_on_rstuf_counts_what_it_sent(
    mirror: Mirror, pypi: FakePyPI, rstuf: FakeRstuf
) -> None:
    rstuf.hang_tasks(times=1)  # the add never ends: the run waits on it
    pypi.add_release("numpy", "2.0")
    pypi.add_release("Django", "2.0")
    process = mirror.popen(*RSTUF_FAST, "--rstuf-wait", "60")
    deadline = time.monotonic() + 60
    while not rstuf.accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # the answer is recorded; the run polls
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == cli_support.EXIT_TERMINATED, stderr
    assert " rstuf_sent=2 " in stderr.splitlines()[-1], stderr
    assert status_json(mirror)["last_run"]["counts"]["rstuf_sent"] == 2
    assert len(load_state(mirror.state).outbox.tasks) == 1  # followed up next run
