"""http_retry: the one backoff, Retry-After parser, retry loop and capped reader of both clients.

The pure parts are checked with injected randomness and clocks; the reader
against a small HTTP server on loopback that declares, streams and cuts off
bodies the way a proxy or CDN may.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator

import pytest
import requests

from pypi_index_mirror.http.retry import (
    MAX_BACKOFF,
    MAX_RETRY_AFTER,
    BodyTooLarge,
    Retryable,
    RetryPolicy,
    backoff_delay,
    call_with_retries,
    iter_capped,
    parse_retry_after,
    pause_before_retry,
    read_capped,
    retry_after_of,
)

log = logging.getLogger("tests.http_retry")

# --- when to try again -------------------------------------------------------------


def test_backoff_doubles_with_equal_jitter_and_a_cap() -> None:
    assert backoff_delay(0, 1.0, rng=lambda: 0.0) == 0.5
    assert backoff_delay(0, 1.0, rng=lambda: 1.0) == 1.0
    assert backoff_delay(3, 1.0, rng=lambda: 1.0) == 8.0
    assert backoff_delay(3, 1.0, rng=lambda: 0.0) == 4.0  # never less than half
    assert backoff_delay(20, 1.0, rng=lambda: 1.0) == MAX_BACKOFF
    assert backoff_delay(2000, 1.0, rng=lambda: 0.0) == MAX_BACKOFF / 2  # no overflow


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not RFC 9110, but sent by some servers
        ("86400", MAX_RETRY_AFTER),
        (None, None),
        ("", None),
        ("soon", None),
        ("-3", None),
        ("1e3", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # a date without its zone is unusable
    ],
)
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_http_date_is_measured_from_now() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    at = 1445412480.0  # that date as a time.time() value
    assert parse_retry_after(date, now=at - 30) == pytest.approx(30.0)
    assert parse_retry_after(date, now=at + 30) == 0.0  # already past: go now
    assert parse_retry_after(date, now=at - 86400) == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("status", "seconds"), [(429, 4.0), (503, 4.0), (500, None), (502, None), (200, None)]
)
def test_retry_after_counts_only_where_rfc_9110_gives_it_meaning(status, seconds) -> None:
    assert retry_after_of(status, {"Retry-After": "4"}) == seconds


class Flaky:
    """An attempt that fails with the given errors, in order, then answers "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(retries: int, slept: list[float]) -> RetryPolicy:
    return RetryPolicy(retries, backoff=1.0, sleep=slept.append, rng=lambda: 1.0)


def test_retries_back_off_until_an_attempt_answers(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    attempt = Flaky(Retryable("HTTP 502"), Retryable("HTTP 503"), Retryable("reset"))
    with caplog.at_level(logging.INFO, log.name):
        assert call_with_retries(attempt, policy(3, slept), "GET /x", log) == "ok"
    assert attempt.calls == 4
    assert slept == [1.0, 2.0, 4.0]
    assert [r.getMessage() for r in caplog.records] == [
        "GET /x: HTTP 502; retry 1/3 in 1.0s",
        "GET /x: HTTP 503; retry 2/3 in 2.0s",
        "GET /x: reset; retry 3/3 in 4.0s",
    ]


def test_a_server_hint_replaces_the_backoff_and_is_capped() -> None:
    slept: list[float] = []
    attempt = Flaky(Retryable("429", retry_after=0.0), Retryable("429", retry_after=1e9))
    assert call_with_retries(attempt, policy(2, slept), "x", log) == "ok"
    assert slept == [0.0, MAX_RETRY_AFTER]


def test_the_last_failure_is_raised_once_retries_are_spent() -> None:
    slept: list[float] = []
    last = Retryable("third")
    attempt = Flaky(Retryable("first"), Retryable("second"), last)
    with pytest.raises(Retryable) as caught:
        call_with_retries(attempt, policy(2, slept), "x", log)
    assert caught.value is last
    assert attempt.calls == 3 and len(slept) == 2


def test_other_errors_are_not_retried() -> None:
    slept: list[float] = []
    attempt = Flaky(ValueError("bad answer"))
    with pytest.raises(ValueError, match="bad answer"):
        call_with_retries(attempt, policy(5, slept), "x", log)
    assert attempt.calls == 1 and slept == []


def test_no_retries_means_one_attempt() -> None:
    slept: list[float] = []
    with pytest.raises(Retryable):
        call_with_retries(Flaky(Retryable("down")), policy(0, slept), "x", log)
    assert slept == []


def test_a_first_attempt_made_elsewhere_counts_as_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`failed`: the page loop made the first request; the retries go on from its failure,
    with the pauses and the attempt count a first attempt made here would have had."""
    slept: list[float] = []
    attempt = Flaky(Retryable("HTTP 503"))
    with caplog.at_level(logging.INFO, log.name):
        result = call_with_retries(attempt, policy(3, slept), "x", log, failed=Retryable("reset"))
    assert result == "ok"
    assert attempt.calls == 2 and slept == [1.0, 2.0]
    assert [r.getMessage() for r in caplog.records] == [
        "x: reset; retry 1/3 in 1.0s",
        "x: HTTP 503; retry 2/3 in 2.0s",
    ]


def test_the_engine_s_pauses_are_the_ones_call_with_retries_sleeps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fetch engine sets timers of `pause_before_retry`: the same backoff, hint, cap,
    attempt count and log line as the pauses `call_with_retries` sleeps."""
    slept: list[float] = []
    failures = [Retryable("HTTP 502"), Retryable("429", retry_after=1e9), Retryable("reset")]
    with caplog.at_level(logging.INFO, log.name):
        with pytest.raises(Retryable):
            call_with_retries(Flaky(*failures, Retryable("last")), policy(3, slept), "x", log)
        slept_lines = [r.getMessage() for r in caplog.records]
        caplog.clear()
        pauses = [
            pause_before_retry(exc, number, policy(3, []), "x", log, logging.WARNING)
            for number, exc in enumerate([*failures, Retryable("last")])
        ]
    assert pauses == [*slept, None] == [1.0, MAX_RETRY_AFTER, 4.0, None]
    assert [r.getMessage() for r in caplog.records] == slept_lines


def test_a_first_attempt_made_elsewhere_with_no_retries_left_is_raised() -> None:
    slept: list[float] = []
    failed = Retryable("down")
    attempt = Flaky()
    with pytest.raises(Retryable) as caught:
        call_with_retries(attempt, policy(0, slept), "x", log, failed=failed)
    assert caught.value is failed and attempt.calls == 0 and slept == []


# --- how much to read --------------------------------------------------------------

BODY = b"0123456789" * 1000  # 10,000 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        if self.path == "/chunked":  # no Content-Length: the cap must count as it reads
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for start in range(0, len(BODY), 1000):
                    piece = BODY[start : start + 1000]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except ConnectionError:  # the client's cap hung up mid-body, as it should
                pass
            return
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.path == "/cut":  # announces it all, sends half, hangs up
            self.wfile.write(BODY[: len(BODY) // 2])
            return
        self.wfile.write(BODY)


@pytest.fixture(scope="module")
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def get(server: http.server.ThreadingHTTPServer, path: str) -> requests.Response:
    host, port = server.server_address[:2]
    return requests.get(f"http://{host}:{port}{path}", stream=True, timeout=5)


@pytest.mark.parametrize("path", ["/declared", "/chunked"])
def test_a_body_within_the_cap_is_read_whole(server, path: str) -> None:
    with get(server, path) as response:
        assert read_capped(response, len(BODY)) == BODY


def test_a_declared_length_over_the_cap_is_refused_before_reading(server) -> None:
    with get(server, "/declared") as response:
        chunks = iter_capped(response, 9999)
        with pytest.raises(BodyTooLarge, match="10000 bytes, over the 9999-byte limit") as caught:
            next(chunks)
        assert caught.value.declared == len(BODY)
        assert not response.raw.tell(), "nothing of the body was read"


def test_an_undeclared_body_is_cut_at_the_cap(server) -> None:
    with get(server, "/chunked") as response:
        with pytest.raises(BodyTooLarge, match="over the 5000-byte limit") as caught:
            read_capped(response, 5000)
        assert caught.value.declared is None


def test_a_body_cut_off_raises_requests_error_for_the_caller_to_retry(server) -> None:
    with get(server, "/cut") as response, pytest.raises(requests.RequestException):
        read_capped(response, len(BODY))
