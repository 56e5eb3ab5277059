"""rstuf_client against the stand-in RSTUF (tests/fake_rstuf.py): no mocks of the client.

Each test asserts what reached the server (paths, bodies, headers, how many
attempts) and what the caller sees (return values, exception classes and their
one-line messages). Steps, poll intervals and deadlines are small so the whole
file runs in a few seconds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pypi_index_mirror.http.environment import USER_AGENT
from pypi_index_mirror.mirror.store import digest_bytes
from pypi_index_mirror.ops.cli import VERSION
from pypi_index_mirror.rstuf import client as rstuf_client
from pypi_index_mirror.rstuf import errors as rstuf_errors
from pypi_index_mirror.rstuf import tasks as rstuf_tasks
from pypi_index_mirror.rstuf.artifacts import Artifact
from pypi_index_mirror.rstuf.client import RstufClient
from pypi_index_mirror.rstuf.errors import (
    InvalidArtifact,
    RstufBadResponse,
    RstufNotBootstrapped,
    RstufRefused,
    RstufServerError,
    RstufUnreachable,
    TaskFailed,
)
from pypi_index_mirror.rstuf.tasks import TaskResult
from tests.fake_rstuf import (
    ADD,
    NOT_BOOTSTRAPPED_DETAIL,
    PUBLISH,
    REMOVE,
    FakeRstuf,
    validate_add_payload,
)

STEP = 0.03  # seconds per task state change in the stand-in
TOKEN = "s3cret-token-value"
HEX64 = "ab" * 32
HEX128 = "cd" * 64


def page(path: str, data: bytes | None = None) -> Artifact:
    """An artifact whose length and blake2b-256 come from real bytes, as the mirror makes them."""
    digest = digest_bytes(data if data is not None else path.encode())
    return Artifact(path, digest.length, {digest.algorithm: digest.hexdigest})


def soon(seconds: float = 3.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture
def rstuf() -> Iterator[FakeRstuf]:
    with FakeRstuf(step=STEP) as fake:
        yield fake


def make_client(fake: FakeRstuf, **overrides) -> RstufClient:
    options = {"retries": 2, "backoff": 0.01, "poll_interval": 0.01, "timeout": (2.0, 5.0)}
    return RstufClient(fake.url, **{**options, **overrides})


@pytest.fixture
def client(rstuf: FakeRstuf) -> Iterator[RstufClient]:
    with make_client(rstuf) as rstuf_api:
        yield rstuf_api


# --- pure helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "written"),
    [("RUNNING", True), ("SUCCESS", True), ("PENDING", False), ("STARTED", False),
     ("PRE_RUN", False), ("RECEIVED", False), ("ERRORED", False), ("FAILURE", False)],
)  # fmt: skip
def test_is_waiting_for_publish_only_once_rows_are_written(state: str, written: bool) -> None:
    assert rstuf_tasks.is_waiting_for_publish(state) is written


def test_terminal_failure_states() -> None:
    assert {"FAILURE", "ERRORED", "REVOKED", "REJECTED"} <= rstuf_tasks.TERMINAL_FAILURE_STATES
    for on_the_way in ("PENDING", "RECEIVED", "STARTED", "PRE_RUN", "RUNNING", "RETRY"):
        assert on_the_way not in rstuf_tasks.TERMINAL_FAILURE_STATES
        assert rstuf_tasks.task_failure(TaskResult("t", on_the_way, None)) is None
    assert "SUCCESS" not in rstuf_tasks.TERMINAL_FAILURE_STATES


@pytest.mark.parametrize(
    ("state", "result", "failed"),
    [
        ("SUCCESS", {"status": True, "details": {"invalid_paths": []}}, None),
        ("RUNNING", {"message": "Publishing"}, None),
        ("PENDING", None, None),
        ("SUCCESS", {"status": False, "error": "boom"}, "boom"),
        ("SUCCESS", {"message": "done"}, "done"),
        ("SUCCESS", {"status": True, "details": {"invalid_paths": ["x/y"]}}, "x/y"),
        ("ERRORED", {"message": "Adding artifact(s) Failed", "error": "disk"}, "disk"),
        ("FAILURE", {"message": "ChordError('publish')"}, "ChordError"),
        ("REVOKED", None, "no details"),
    ],
)
def test_task_failure_judges_like_rstuf(state: str, result: dict | None, failed: str | None):
    verdict = rstuf_tasks.task_failure(TaskResult("t", state, result))
    if failed is None:
        assert verdict is None
    else:
        assert verdict is not None and failed in verdict


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b'{"detail": {"message": "Task not accepted.", "error": "It requires bootstrap"}}',
         "Task not accepted.: It requires bootstrap"),
        (b'{"detail": [{"type": "missing", "loc": ["body", "artifacts"], "msg": "Required"}]}',
         "body.artifacts: Required"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"<html>\n<h1>502 Bad Gateway</h1>\n</html>", "<html> <h1>502 Bad Gateway</h1> </html>"),
    ],
)  # fmt: skip
def test_error_detail_reads_rstuf_fastapi_and_proxy_bodies(body: bytes, text: str) -> None:
    assert rstuf_client.error_detail(body) == text


# --- exact requests ---------------------------------------------------------------


def test_add_sends_rstuf_body_to_the_slash_path_with_headers(rstuf, client) -> None:
    numpy = page("simple/numpy/index.html", b"<html>numpy</html>")
    root = page("index.html", b"<html>root</html>")
    task_id = client.add([numpy, root], publish=False)

    [request] = rstuf.request_log
    assert (request.method, request.path, request.status) == ("POST", "/api/v1/artifacts/", 202)
    assert request.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith(f"pypi-index-mirror/{VERSION} ")
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    [accepted] = rstuf.accepted
    assert (accepted.action, accepted.task_id) == (ADD, task_id)
    assert accepted.body == {
        "artifacts": [
            {"path": "simple/numpy/index.html",
             "info": {"length": 18, "hashes": {"blake2b-256": numpy.hashes["blake2b-256"]}}},
            {"path": "index.html", "info": {"length": 17, "hashes": root.hashes}},
        ],
        "add_task_id_to_custom": False,
        "publish_artifacts": False,
    }  # fmt: skip
    assert json.loads(request.body) == accepted.body


def test_custom_is_sent_only_when_set(rstuf, client) -> None:
    client.add([Artifact("a/index.html", 1, {"sha256": HEX64}, custom={"serial": 7})])
    client.add([Artifact("b/index.html", 1, {"sha256": HEX64})])
    first, second = (a.body["artifacts"][0]["info"] for a in rstuf.accepted)
    assert first == {"length": 1, "hashes": {"sha256": HEX64}, "custom": {"serial": 7}}
    assert second == {"length": 1, "hashes": {"sha256": HEX64}}
    assert [a.body["publish_artifacts"] for a in rstuf.accepted] == [True, True]


def test_remove_and_publish_use_rstuf_paths_and_bodies(rstuf, client) -> None:
    remove_id = client.remove(["simple/gone/index.html"], publish=False)
    publish_id = client.publish()
    assert [(r.method, r.path) for r in rstuf.request_log] == [
        ("POST", "/api/v1/artifacts/delete"),
        ("POST", "/api/v1/artifacts/publish/"),
    ]
    assert [(a.action, a.task_id) for a in rstuf.accepted] == [
        (REMOVE, remove_id),
        (PUBLISH, publish_id),
    ]
    assert rstuf.accepted[0].body == {
        "artifacts": ["simple/gone/index.html"],
        "publish_artifacts": False,
    }
    assert rstuf.request_log[1].body == b""


def test_task_and_bootstrap_are_gets_on_slash_paths(rstuf, client) -> None:
    assert client.bootstrapped() is True
    assert client.task("abc123") == TaskResult("abc123", "PENDING", None)
    assert [(r.method, r.path) for r in rstuf.request_log] == [
        ("GET", "/api/v1/bootstrap/"),
        ("GET", "/api/v1/task/?task_id=abc123"),
    ]


# --- validation before sending ------------------------------------------------------


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        (Artifact("/simple/a/index.html", 1, {"blake2b-256": HEX64}), "relative"),
        (Artifact("simple/../etc/passwd", 1, {"blake2b-256": HEX64}), "'..'"),
        (Artifact("simple/./a/index.html", 1, {"blake2b-256": HEX64}), "'.'"),
        (Artifact("simple//index.html", 1, {"blake2b-256": HEX64}), "empty segment"),
        (Artifact("simple/a/", 1, {"blake2b-256": HEX64}), "empty segment"),
        (Artifact("", 1, {"blake2b-256": HEX64}), "empty"),
        (Artifact("simple\\a\\index.html", 1, {"blake2b-256": HEX64}), "backslash"),
        (Artifact("simple/a\n/index.html", 1, {"blake2b-256": HEX64}), "control"),
        (Artifact("simple/a\x7f/index.html", 1, {"blake2b-256": HEX64}), "control"),
        (Artifact("simple/\ud800/index.html", 1, {"blake2b-256": HEX64}), "surrogate"),
        (Artifact("a", -1, {"blake2b-256": HEX64}), "length"),
        (Artifact("a", 1.0, {"blake2b-256": HEX64}), "length"),  # type: ignore[arg-type]
        (Artifact("a", True, {"blake2b-256": HEX64}), "length"),
        (Artifact("a", "12", {"blake2b-256": HEX64}), "length"),  # type: ignore[arg-type]
        (Artifact("a", 1, {}), "at least one hash"),
        (Artifact("a", 1, {"blake2b-32": HEX64}), "not one TUF clients accept"),
        (Artifact("a", 1, {"SHA-256": HEX64}), "not one TUF clients accept"),
        (Artifact("a", 1, {"blake2b-256": HEX64.upper()}), "lowercase hex"),
        (Artifact("a", 1, {"blake2b-256": HEX64[:-1]}), "64 lowercase hex"),
        (Artifact("a", 1, {"sha512": HEX64}), "128 lowercase hex"),
        (Artifact("a", 1, {"sha256": HEX64 + "\n"}), "lowercase hex"),
        (Artifact("a", 1, {"sha256": HEX64}, custom=["x"]), "custom"),  # type: ignore[arg-type]
    ],
)
def test_add_refuses_unfit_artifacts_and_sends_nothing(rstuf, client, artifact, reason) -> None:
    good = page("simple/ok/index.html")
    with pytest.raises(InvalidArtifact, match="refusing to send artifact") as caught:
        client.add([good, artifact])
    assert reason in caught.value.reason
    assert caught.value.path == artifact.path
    assert isinstance(caught.value, ValueError)
    assert rstuf.request_log == []


@pytest.mark.parametrize("path", ["/index.html", "../x", "a//b", "a\\b", "a/\tb", "a/b/", "", None])
def test_remove_refuses_unfit_paths_and_sends_nothing(rstuf, client, path) -> None:
    with pytest.raises(InvalidArtifact):
        client.remove(["simple/ok/index.html", path])
    assert rstuf.request_log == []


def test_empty_lists_duplicates_and_a_bare_string_are_refused(rstuf, client) -> None:
    with pytest.raises(ValueError, match="no artifacts"):
        client.add([])
    with pytest.raises(ValueError, match="no artifacts"):
        client.remove([])
    with pytest.raises(InvalidArtifact, match="twice"):
        client.add([page("a/index.html"), page("a/index.html", b"other bytes")])
    with pytest.raises(TypeError):
        client.remove("simple/a/index.html")
    assert rstuf.request_log == []


def test_every_accepted_hash_name_and_a_root_page_are_sent(rstuf, client) -> None:
    artifact = Artifact("index.html", 0, {"blake2b-256": HEX64, "sha256": HEX64, "sha512": HEX128})
    client.add([artifact])
    assert rstuf.accepted[0].body["artifacts"][0]["info"]["hashes"] == artifact.hashes


# --- the token ------------------------------------------------------------------------


def test_bearer_token_is_sent_only_when_configured(rstuf) -> None:
    with make_client(rstuf) as anonymous, make_client(rstuf, token=TOKEN) as authorized:
        anonymous.publish()
        authorized.publish()
        authorized.task("x")
    first, *rest = rstuf.request_log
    assert "authorization" not in first.headers
    assert [r.headers["authorization"] for r in rest] == [f"Bearer {TOKEN}"] * 2


def test_token_never_appears_in_repr_or_errors(rstuf) -> None:
    with make_client(rstuf, token=TOKEN, retries=0) as authorized:
        assert TOKEN not in repr(authorized) and "token=<set>" in repr(authorized)
        rstuf.fail_requests(401, detail=f"invalid bearer {TOKEN}")
        with pytest.raises(RstufRefused) as refused:
            authorized.publish()
    closed = RstufClient("http://127.0.0.1:9", token=TOKEN, retries=0, timeout=(1.0, 1.0))
    with closed, pytest.raises(RstufUnreachable) as unreachable:
        closed.publish()
    for error in (refused.value, unreachable.value):
        assert TOKEN not in str(error) and TOKEN not in repr(error)
    assert "RSTUF_API_TOKEN" in str(refused.value) and "***" in str(refused.value)


def test_credentials_in_the_url_are_left_out_of_messages() -> None:
    with RstufClient("http://user:pw@127.0.0.1:9", retries=0) as closed:
        assert "pw" not in repr(closed)
        with pytest.raises(RstufUnreachable) as caught:
            closed.publish()
    assert "pw" not in str(caught.value) and "127.0.0.1:9" in str(caught.value)


# --- errors ------------------------------------------------------------------------------


def test_artifacts_before_bootstrap_raise_not_bootstrapped_with_rstuf_text(rstuf, client):
    rstuf.set_bootstrapped(False)
    assert client.bootstrapped() is False
    for call in (lambda: client.add([page("index.html")]), lambda: client.remove(["index.html"])):
        with pytest.raises(RstufNotBootstrapped) as caught:
            call()
        message = str(caught.value)
        assert "It requires bootstrap finished. State: None" in message
        assert "rstuf admin ceremony / import-artifacts" in message
    assert [r.status for r in rstuf.request_log[1:]] == [404, 404]  # never retried
    assert client.publish()  # RSTUF accepts a publish anyway; its task does nothing
    assert rstuf.accepted[-1].action == PUBLISH


def test_older_rstuf_answering_200_without_task_id_is_not_bootstrapped() -> None:
    legacy = FakeRstuf(bootstrapped=False, not_bootstrapped_status=200)
    with legacy, make_client(legacy) as c, pytest.raises(RstufNotBootstrapped, match="requires"):
        c.add([page("index.html")])


def test_a_wrong_base_url_is_not_mistaken_for_a_missing_bootstrap(rstuf) -> None:
    wrong = RstufClient(rstuf.url + "/api/v1", retries=0)
    with wrong, pytest.raises(RstufRefused) as caught:
        wrong.add([page("index.html")])
    assert caught.value.status == 404 and "check the RSTUF URL" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (401, {"detail": "Not authenticated"}),
        (403, {"detail": "Not enough permissions"}),
        (404, {"detail": "Not Found"}),  # FastAPI: no such route
        (404, "<html><body>404 Not Found</body></html>"),  # a web server that is no RSTUF
    ],
)
def test_401_403_and_a_404_that_is_not_rstufs_are_misconfiguration(
    rstuf, client, status: int, answer: object
) -> None:
    """Refused at once, never retried, and told apart from RSTUF's not-bootstrapped 404."""
    if isinstance(answer, dict):
        rstuf.fail_requests(status, times=5, detail=answer["detail"])
    else:
        rstuf.fail_requests(status, times=5, body=str(answer), content_type="text/html")
    for call in (lambda: client.add([page("index.html")]), client.publish):
        with pytest.raises(rstuf_errors.RstufMisconfigured) as caught:
            call()
        assert caught.value.status == status
    assert len(rstuf.request_log) == 2
    not_bootstrapped = json.dumps({"detail": NOT_BOOTSTRAPPED_DETAIL}).encode()
    assert rstuf_client.is_not_bootstrapped(not_bootstrapped)
    for body in (b'{"detail": "Not Found"}', b"<html>404</html>", b'{"detail": {"x": 1}}'):
        assert not rstuf_client.is_not_bootstrapped(body)


def test_not_found_artifacts_are_read_from_a_deletes_result(rstuf, client) -> None:
    """The paths RSTUF's worker reports it held no row for, as the real worker reports them:
    never held, never covered by a role, or removed and published already."""
    first = page("simple/a/index.html")
    final(client, client.add([first]))
    final(client, client.remove([first.path]))
    removed = final(client, client.remove([first.path, "simple/never/index.html"]))
    assert removed.state == "SUCCESS" and rstuf_tasks.task_failure(removed) is None
    assert removed.result["status"] is True and removed.result["error"] is None
    assert removed.result["details"] == {
        "deleted_artifacts": [],
        "not_found_artifacts": [first.path, "simple/never/index.html"],
    }
    assert rstuf_tasks.not_found_artifacts(removed) == [first.path, "simple/never/index.html"]
    assert rstuf_tasks.not_found_artifacts(TaskResult("t", "SUCCESS", None)) == []


def test_422_is_refused_at_once_with_rstuf_detail(rstuf, client) -> None:
    detail = [{"type": "int_type", "loc": ["body", "artifacts", 0, "info", "length"],
               "msg": "Input should be a valid integer", "input": None}]  # fmt: skip
    rstuf.fail_requests(422, detail=detail, times=5)
    with pytest.raises(RstufRefused) as caught:
        client.add([page("index.html")])
    assert caught.value.status == 422
    assert "body.artifacts.0.info.length: Input should be a valid integer" in str(caught.value)
    assert len(rstuf.request_log) == 1


def test_500_is_retried_then_raised_as_server_error(rstuf, client) -> None:
    rstuf.fail_requests(500, times=10)
    with pytest.raises(RstufServerError) as caught:
        client.publish()
    assert caught.value.status == 500
    assert "Internal Server Error" in str(caught.value)
    assert len(rstuf.request_log) == client.retries + 1
    assert rstuf.accepted == []


def test_500_then_success_sends_one_task(rstuf, client) -> None:
    rstuf.fail_requests(500, times=2, detail="database is locked")
    task_id = client.add([page("index.html")])
    assert [r.status for r in rstuf.request_log] == [500, 500, 202]
    assert [a.task_id for a in rstuf.accepted] == [task_id]


def test_dropped_connections_are_retried(rstuf, client) -> None:
    rstuf.drop_connections(times=2)
    task_id = client.remove(["simple/a/index.html"])
    assert [r.status for r in rstuf.request_log] == [None, None, 202]
    assert rstuf.accepted[0].task_id == task_id


def test_read_timeouts_are_retried(rstuf) -> None:
    # The retry must answer within the read timeout: 1 s holds on a loaded machine, and
    # the stall outlasts it by enough that the first attempt always times out.
    rstuf.slow_requests(2.0, times=1, path="/api/v1/task/")
    with make_client(rstuf, timeout=(1.0, 1.0)) as impatient:
        assert impatient.task("abc").state == "PENDING"
    deadline = soon()
    while len(rstuf.request_log) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the slow attempt is logged once its answer is (too late) sent
    assert [r.path for r in rstuf.request_log] == ["/api/v1/task/?task_id=abc"] * 2


def test_retry_after_is_honoured_on_503_and_429(rstuf, client) -> None:
    rstuf.fail_requests(503, times=1, retry_after="1")
    rstuf.fail_requests(429, times=1, detail="slow down", retry_after="0")
    started = time.monotonic()
    client.publish()
    assert time.monotonic() - started >= 1.0
    assert [r.status for r in rstuf.request_log] == [503, 429, 202]


def test_429_after_the_retries_is_refused(rstuf, client) -> None:
    rstuf.fail_requests(429, times=10, detail="rate limited", retry_after="0")
    with pytest.raises(RstufRefused, match="rate limited") as caught:
        client.publish()
    assert caught.value.status == 429


def test_nothing_listening_is_unreachable() -> None:
    closed = RstufClient("http://127.0.0.1:9", retries=1, backoff=0.01)
    with closed, pytest.raises(RstufUnreachable) as caught:
        closed.bootstrapped()
    assert caught.value.url == "http://127.0.0.1:9/api/v1/bootstrap/"
    assert "refused" in caught.value.reason.lower()


@pytest.mark.parametrize(
    ("status", "body", "content_type", "words"),
    [
        (200, b"<html>hello</html>", "text/html", "not JSON"),
        (202, b"[1, 2]", "application/json", "not an object"),
        (202, b'{"data": {}, "message": "ok"}', "application/json", "without data.task_id"),
        (200, b"x" * (rstuf_client.MAX_RESPONSE_BYTES + 1), "text/plain", "more than"),
        (204, b"", "text/plain", "HTTP 204"),
    ],
)
def test_unusable_answers_are_bad_responses(rstuf, client, status, body, content_type, words):
    rstuf.fail_requests(status, body=body, content_type=content_type)
    with pytest.raises(RstufBadResponse, match=words):
        client.publish()


def test_bootstrap_answer_without_data_is_a_bad_response(rstuf, client) -> None:
    rstuf.fail_requests(200, body=b'{"message": "?"}', content_type="application/json")
    with pytest.raises(RstufBadResponse, match=r"data\.bootstrap"):
        client.bootstrapped()


# --- reading tasks -----------------------------------------------------------------------


def final(client: RstufClient, task_id: str) -> TaskResult:
    """Poll until the task left the states it passes through (a liveness guard, no timing)."""
    deadline = soon(20)
    ended = {rstuf_tasks.SUCCESS_STATE, *rstuf_tasks.TERMINAL_FAILURE_STATES}
    while (result := client.task(task_id)).state not in ended:
        assert time.monotonic() < deadline, f"task still {result.state}"
        time.sleep(0.01)
    return result


def test_a_published_add_succeeds_and_the_view_holds_the_page(rstuf, client) -> None:
    numpy = page("simple/numpy/index.html")
    task_id = client.add([numpy])
    result = final(client, task_id)
    assert result.state == "SUCCESS" and result.task_id == task_id
    assert rstuf_tasks.task_failure(result) is None
    assert result.result["details"]["added_artifacts"] == [numpy.path]
    assert result.result["task"] == ADD and result.result["status"] is True
    assert rstuf.view == {numpy.path: {"length": numpy.length, "hashes": numpy.hashes}}


@pytest.mark.parametrize("state", ["ERRORED", "FAILURE"])
def test_a_failed_task_reads_as_failed_with_rstufs_error(rstuf, client, state) -> None:
    rstuf.fail_tasks(state, error="storage backend unavailable")
    task_id = client.add([page("index.html")], publish=False)
    result = final(client, task_id)
    assert result.state == state
    failure = rstuf_tasks.task_failure(result)
    assert failure is not None and "storage backend unavailable" in failure
    message = str(TaskFailed(task_id, state, failure))
    assert task_id in message and state in message and "storage backend" in message
    assert rstuf.view == {}


def test_success_with_status_false_is_a_failure(rstuf, client) -> None:
    rstuf.fail_tasks("SUCCESS", error="No 'artifacts' in the payload")
    result = final(client, client.remove(["index.html"]))
    assert result.state == "SUCCESS"
    assert "No 'artifacts' in the payload" in rstuf_tasks.task_failure(result)


def test_success_with_invalid_paths_is_a_failure(rstuf, client) -> None:
    rstuf.set_delegations(["simple/*/index.html"])
    result = final(client, client.add([page("simple/a/index.html"), page("index.html")]))
    assert re.search(r"1 path.* not covered .*index\.html", rstuf_tasks.task_failure(result))
    assert list(rstuf.view) == ["simple/a/index.html"]


@pytest.mark.parametrize("state", ["PENDING", "STARTED"])
def test_a_hung_task_keeps_its_state_and_is_no_failure(rstuf, client, state) -> None:
    rstuf.hang_tasks(state=state)
    task_id = client.add([page("index.html")])
    deadline = soon(20)
    while client.task(task_id).state != state:
        assert time.monotonic() < deadline
    time.sleep(0.3)
    result = client.task(task_id)
    assert result.state == state and rstuf_tasks.task_failure(result) is None


def test_an_unknown_task_id_is_pending(client) -> None:
    result = client.task("0123456789abcdef")
    assert result.state == "PENDING" and rstuf_tasks.task_failure(result) is None


def test_deleting_an_absent_path_succeeds_and_re_adding_updates(rstuf, client) -> None:
    first, second = page("simple/a/index.html", b"v1"), page("simple/a/index.html", b"v2!")
    final(client, client.add([first]))
    final(client, client.add([second]))
    assert rstuf.view == {first.path: {"length": 3, "hashes": second.hashes}}
    removed = final(client, client.remove([first.path, "simple/never/index.html"]))
    assert removed.result["details"] == {
        "deleted_artifacts": [first.path],
        "not_found_artifacts": ["simple/never/index.html"],
    }
    assert rstuf.view == {}


# --- attempts that may have started a task unseen -------------------------------------------


def uncertain_attempts(call) -> int:
    calls = []
    call(lambda: calls.append(1))
    return len(calls)


def test_a_post_answered_too_late_is_reported_uncertain_and_retried(rstuf) -> None:
    # a read timeout of 1 s holds for the retry on a loaded machine; the stall outlasts it
    rstuf.slow_requests(2.0, times=1, path="/api/v1/artifacts/")
    with make_client(rstuf, timeout=(1.0, 1.0)) as impatient:
        count = uncertain_attempts(
            lambda note: impatient.add([page("index.html")], on_uncertain=note)
        )
    assert count == 1
    deadline = soon(20)
    while len(rstuf.accepted) < 2:  # the slow attempt is handled after the retry
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert rstuf.accepted[0].body == rstuf.accepted[1].body


@pytest.mark.parametrize(
    ("fault", "uncertain"),
    [("drop", 1), (500, 1), (502, 1), (503, 0), (429, 0)],
)
def test_which_failures_leave_a_task_possible(rstuf, client, fault, uncertain) -> None:
    if fault == "drop":
        rstuf.drop_connections(times=1)
    else:
        rstuf.fail_requests(fault, times=1, retry_after="0")
    assert (
        uncertain_attempts(lambda note: client.remove(["simple/a/index.html"], on_uncertain=note))
        == uncertain
    )
    assert len(rstuf.accepted) == 1


def test_a_refused_connection_is_certain_nothing_started() -> None:
    calls = []
    closed = RstufClient("http://127.0.0.1:9", retries=1, backoff=0.01)
    with closed, pytest.raises(RstufUnreachable):
        closed.add([page("index.html")], on_uncertain=lambda: calls.append(1))
    assert calls == []


# --- the session ------------------------------------------------------------------------------


class CountingSession(requests.Session):
    closes = 0

    def close(self) -> None:
        self.closes += 1
        super().close()


def test_an_injected_session_is_used_and_left_to_its_owner(rstuf) -> None:
    with CountingSession() as session:
        with RstufClient(rstuf.url, session=session) as borrowed:
            borrowed.publish()
        assert session.closes == 0
        assert "user-agent" in rstuf.request_log[0].headers
    assert session.closes == 1


def test_a_bad_base_url_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http"):
        RstufClient("127.0.0.1:8081")


# --- the stand-in itself ----------------------------------------------------------------------


def test_stand_in_redirects_the_slashless_artifacts_path_like_fastapi(rstuf) -> None:
    with requests.Session() as session:
        answer = session.post(rstuf.url + "/api/v1/artifacts", json={}, allow_redirects=False)
        assert answer.status_code == 307
        assert answer.headers["Location"] == rstuf.url + "/api/v1/artifacts/"
        followed = session.post(rstuf.url + "/api/v1/artifacts", json={"artifacts": []})
        assert followed.status_code == 202 and followed.json()["data"]["artifacts"] == []


BAD_BODIES = [
    [],
    {},
    {"artifacts": "simple/a/index.html"},
    {"artifacts": [{"path": "a"}]},
    {"artifacts": [{"path": "a", "info": {"hashes": {"sha256": HEX64}}}]},
    {"artifacts": [{"path": "a", "info": {"length": 1}}]},
    {"artifacts": [{"path": 3, "info": {"length": "x", "hashes": {"sha256": 1}}}]},
    {"artifacts": [{"path": "a", "info": {"length": 1.5, "hashes": [], "custom": 3}}]},
    {"artifacts": [], "publish_artifacts": "maybe"},
    {"artifacts": [], "publish_artifacts": None},
]
GOOD_BODIES = [
    {"artifacts": []},
    {"artifacts": [{"path": "a", "info": {"length": "12", "hashes": {}}}], "unknown": 1},
    {"artifacts": [{"path": "a", "info": {"length": True, "hashes": {}}}]},
    {"artifacts": [], "publish_artifacts": "yes", "add_task_id_to_custom": 0},
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_stand_in_refuses_what_rstuf_models_refuse(rstuf, body) -> None:
    with requests.Session() as session:
        answer = session.post(rstuf.url + "/api/v1/artifacts/", json=body)
    assert answer.status_code == 422
    for error in answer.json()["detail"]:
        assert set(error) == {"type", "loc", "msg", "input"} and error["loc"][0] == "body"
    assert rstuf.accepted == []


def test_stand_in_validation_matches_pydantic_on_rstuf_models() -> None:
    """Compare with models declared as RSTUF declares them (pydantic: requirements-dev.txt)."""
    import pydantic

    class ArtifactInfo(pydantic.BaseModel):
        length: int
        hashes: dict[str, str]
        custom: dict | None = None

    class ArtifactModel(pydantic.BaseModel):
        info: ArtifactInfo
        path: str

    class AddPayload(pydantic.BaseModel):
        artifacts: list[ArtifactModel]
        add_task_id_to_custom: bool = False
        publish_artifacts: bool = True

    adapter = pydantic.TypeAdapter(AddPayload)
    for body in BAD_BODIES + GOOD_BODIES:
        try:
            adapter.validate_python(body, from_attributes=True)
            expected = []
        except pydantic.ValidationError as error:
            expected = [(e["type"], ["body", *e["loc"]]) for e in error.errors()]
        got = [(e["type"], e["loc"]) for e in validate_add_payload(body)]
        assert sorted(map(str, got)) == sorted(map(str, expected)), body


def test_stand_in_task_endpoint_and_bootstrap_shapes(rstuf) -> None:
    with requests.Session() as session:
        missing = session.get(rstuf.url + "/api/v1/task/")
        unknown = session.get(rstuf.url + "/api/v1/task/", params={"task_id": "nope"})
        before = session.get(rstuf.url + "/api/v1/bootstrap/").json()
        rstuf.set_bootstrapped(False)
        after = session.get(rstuf.url + "/api/v1/bootstrap/").json()
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "task_id"]
    assert unknown.json() == {
        "data": {"task_id": "nope", "state": "PENDING"},
        "message": "Task state.",
    }
    assert before["data"]["bootstrap"] is True and before["data"]["state"] == "finished"
    assert after["data"] == {"bootstrap": False}


def test_stand_in_counts_artifacts_per_request(rstuf, client) -> None:
    client.add([page(f"simple/p{n}/index.html") for n in range(500)], publish=False)
    client.remove(["simple/p1/index.html"], publish=False)
    stats = rstuf.stats
    assert (stats.accepted_requests, stats.artifacts, stats.max_artifacts_per_request) == (
        2,
        501,
        500,
    )
    assert stats.artifacts_per_second > 0


def test_stand_in_runs_alone() -> None:
    command = [sys.executable, "-m", "tests.fake_rstuf", "--port", "0", "--step", "0.01"]
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline()
            url = line.rsplit(" ", 1)[-1].strip()
            with RstufClient(url, retries=0) as alone:
                assert alone.bootstrapped() is True
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
    assert process.returncode == 0, line
