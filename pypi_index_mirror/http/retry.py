"""What every HTTP client shares besides its environment: when to retry, how much to read.

``upstream.client`` (PyPI), ``rstuf.client`` (RSTUF) and ``audit.metadata`` each decide
which failures are worth another attempt and raise `Retryable` for them; everything
about *when* to try again (one backoff, one Retry-After parser and cap) and
*how much* of an answer to read lives here, so a fix lands in both clients.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import requests

T = TypeVar("T")

MAX_BACKOFF = 30.0  # seconds: cap of one exponential backoff delay
# seconds: never sleep longer than this on one server hint. PyPI's XML-RPC rate
# limit (3600 calls an hour per IP by default) may say "reset in" up to an hour:
# waiting five minutes and asking again costs one call; sleeping an hour inside
# a cron run every five minutes would stack runs behind the lock.
MAX_RETRY_AFTER = 300.0
CHUNK_BYTES = 1 << 16
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


class Retryable(Exception):
    """An attempt that failed in a way another attempt may not (connection, 5xx, 429...).

    `retry_after` is the server's hint in seconds (from `parse_retry_after` or a
    rate-limit message), or None to back off exponentially.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BodyTooLarge(Exception):
    """An answer over its size cap (declared in Content-Length, or as it streamed)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"{declared} bytes" if declared is not None else "more bytes"
        super().__init__(f"{size}, over the {limit}-byte limit")
        self.limit = limit
        self.declared = declared


# --- when to try again


def backoff_delay(attempt: int, base: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry `attempt` (0 = the first retry): exponential, capped, jittered.

    Equal jitter: half the delay is fixed, so a stale CDN page or a restarting
    server gets at least that long; half is random, so clients that failed
    together do not all come back at the same instant.
    """
    delay = min(MAX_BACKOFF, base * 2.0 ** min(attempt, 64))  # no float overflow
    return delay / 2 + rng() * delay / 2


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header, capped at MAX_RETRY_AFTER; None if unusable.

    Both forms of RFC 9110 section 10.2.3: delay-seconds (``120``; a decimal
    such as ``1.5``, which some servers send, is read too) and an HTTP-date
    (``Wed, 21 Oct 2015 07:28:00 GMT``, measured from `now`, a ``time.time()``
    value). A date in the past means "now".
    """
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return cap_retry_after(float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return cap_retry_after(when.timestamp() - (time.time() if now is None else now))


class Headers(Protocol):
    """An answer's headers as every client here reads them: by name, in any case
    (requests', urllib3's and `upstream.transport.ResponseHeaders` alike)."""

    def get(self, name: str, default: None = None, /) -> str | None: ...


def retry_after_of(status: int, headers: Headers) -> float | None:
    """The Retry-After hint of an answer where RFC 9110 gives it meaning (429, 503), else None."""
    if status not in (429, 503):
        return None
    return parse_retry_after(headers.get("Retry-After"))


def cap_retry_after(seconds: float) -> float:
    """A server's hint (header or message) clamped to [0, MAX_RETRY_AFTER]."""
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def retry_delay(
    attempt: int, base: float, hint: float | None, rng: Callable[[], float] = random.random
) -> float:
    """The server's hint when it gave one, otherwise `backoff_delay`."""
    return cap_retry_after(hint) if hint is not None else backoff_delay(attempt, base, rng)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to repeat a `Retryable` attempt; `sleep` is injectable."""

    retries: int  # attempts after the first
    backoff: float  # seconds before the first retry, doubling after
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random


def call_with_retries(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    log: logging.Logger,
    level: int = logging.WARNING,
    failed: Retryable | None = None,
) -> T:
    """Return `attempt()`, repeating it after each `Retryable` while retries are left.

    Re-raises the last `Retryable` once they are spent: the caller turns it
    into the error its operator reads. Each retry is logged with its reason.
    `failed`: the first attempt was made elsewhere and failed so; this goes on
    from its retry, as if it had been made here.
    """
    first = 0
    if failed is not None:
        _pause_or_raise(failed, 0, policy, what, log, level)
        first = 1
    for number in range(first, policy.retries + 1):
        try:
            return attempt()
        except Retryable as exc:
            _pause_or_raise(exc, number, policy, what, log, level)
    raise AssertionError("unreachable")  # pragma: no cover


def _pause_or_raise(
    exc: Retryable, number: int, policy: RetryPolicy, what: str, log: logging.Logger, level: int
) -> None:
    """After attempt `number` (0: the first) failed with `exc`: re-raise it if no retry is
    left, else log why and sleep until the next."""
    delay = pause_before_retry(exc, number, policy, what, log, level)
    if delay is None:
        raise exc
    policy.sleep(delay)


def pause_before_retry(
    exc: Retryable, number: int, policy: RetryPolicy, what: str, log: logging.Logger, level: int
) -> float | None:
    """After attempt `number` (0: the first) failed with `exc`: the seconds to wait before the
    next, logged with why; None when no retry is left.

    `call_with_retries` sleeps them; the page engine (``sync.fetch_loop``) sets a
    timer on its loop instead, so both keep the same attempts, backoff, jitter
    and Retry-After cap.
    """
    if number >= policy.retries:
        return None
    delay = retry_delay(number, policy.backoff, exc.retry_after, policy.rng)
    log.log(level, "%s: %s; retry %d/%d in %.1fs", what, exc, number + 1, policy.retries, delay)
    return delay


# --- how much to read


def iter_capped(
    response: requests.Response, limit: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """Yield the body of a ``stream=True`` response; raise BodyTooLarge past `limit` bytes.

    A Content-Length over the limit is refused before any byte is read. A
    connection cut mid-body raises requests' own exception, for the caller to
    judge (both clients retry it).
    """
    yield from capped(response.iter_content(chunk_bytes), response.headers, limit)


def capped(chunks: Iterable[bytes], headers: Mapping[str, str], limit: int) -> Iterator[bytes]:
    """`chunks` of a body with these `headers`, refused (BodyTooLarge) past `limit` bytes.

    The one cap of the requests clients (XML-RPC, RSTUF, the JSON root), whatever
    yields the chunks; project pages are capped inside `upstream.transport`.
    """
    declared = headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, int(declared))
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(limit)
        yield chunk


def read_capped(response: requests.Response, limit: int) -> bytes:
    """The whole body of a ``stream=True`` response, at most `limit` bytes (see `iter_capped`)."""
    buffer = bytearray()
    for chunk in iter_capped(response, limit):
        buffer += chunk
    return bytes(buffer)
