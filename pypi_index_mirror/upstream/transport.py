"""PyPI's HTTP over libcurl (pycurl): project pages, the hot path, and the few large answers.

One way to drive the pages: `PageLoop`, one thread with many GETs in flight
(libcurl's multi interface): every page of a run (``sync.fetch_loop``), and a
single page (``PypiClient.get_page``) as a loop of one. `_Transfer` sets a GET
up and judges its end. XML-RPC and the JSON root, answers of up to 60 MB
parsed as they arrive, go through a `StreamingCall` with the same settings.

A first sync is 700,000 GETs of small pages. Over urllib3 a page cost the
client 0.47-0.58 ms of CPU (http.client's header parsing alone a fifth of
it); libcurl parses in C and ``perform()`` releases the GIL for the whole
transfer: 0.14-0.15 ms, at twice the pages a second, measured side by side
on one stand-in by ``tests/bench/bench_transport.py``.

What requests would do with the same settings, this does with libcurl's
options: the proxy the caller chose (``user:password@`` in its URL becomes
Proxy-Authorization), the CA bundle, Basic credentials, gzip and
deflate accepted and decoded, keep-alive. Nothing of libcurl's own is read
from the environment: the caller has already decided (``http.environment``),
and an empty proxy tells libcurl not to look. No redirect is followed, no
request is retried here: ``PypiClient``'s retry loop does that.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import pycurl

from pypi_index_mirror.http.environment import USER_AGENT
from pypi_index_mirror.http.retry import BodyTooLarge

# libcurl's error codes (curl/curl.h) that, once an answer has begun, mean its body was
# cut short or spoilt on the wire
_CUT_OFF = {pycurl.E_PARTIAL_FILE, pycurl.E_RECV_ERROR, pycurl.E_BAD_CONTENT_ENCODING}


class PageTransportError(Exception):
    """A GET that brought no answer: connection, timeout or body cut off (`too_large`: refused)."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class ResponseHeaders:
    """An answer's status line and header block as they came, looked up by name on demand.

    A page is read for two or three headers of its fifteen or so: finding those
    in the block is cheaper than splitting every line into a dict. Every header
    line follows a newline (the status line's first), so a lookup tries only
    where a line starts.
    """

    __slots__ = ("_block",)

    def __init__(self, block: bytes) -> None:
        self._block = block

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of header `name` (any case), the last one if repeated, else `default`."""
        pattern = _HEADER_PATTERNS.get(name)
        if pattern is None:
            pattern = _HEADER_PATTERNS[name] = re.compile(
                rb"(?m)\n(?i:" + re.escape(name.encode("ascii")) + rb")[ \t]*:[ \t]*(.*?)[ \t]*\r?$"
            )
        found = pattern.findall(self._block)
        return found[-1].decode("latin-1") if found else default


_HEADER_PATTERNS: dict[str, re.Pattern[bytes]] = {}


@dataclass(slots=True)
class PageAnswer:
    """What one GET brought: status, headers, and the decoded body (read to its end)."""

    status: int
    headers: ResponseHeaders
    body: bytes


@dataclass(frozen=True)
class TransportSettings:
    """Everything a handle is set up with, decided once by the caller."""

    base_url: str
    proxy: str | None  # None: straight to the host
    ca_bundle: str | None  # a file or a directory of certificates (https)
    auth: tuple[str, str] | None  # Basic credentials (.netrc's)
    connect_timeout: float
    read_timeout: float  # seconds without a byte
    max_body_bytes: int
    user_agent: str = USER_AGENT


class _Body:
    """The write callback: keeps the decoded chunks, refusing any past the cap."""

    __slots__ = ("chunks", "limit", "over", "received")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.limit = limit
        self.over = False

    def write(self, chunk: bytes) -> int | None:
        self.received += len(chunk)
        if self.received > self.limit:
            self.over = True
            return 0  # libcurl stops the transfer (CURLE_WRITE_ERROR)
        self.chunks.append(chunk)
        return None

    def take(self) -> bytes:
        """The body as it came, emptying this for the handle's next GET."""
        content = b"".join(self.chunks)
        self.clear()
        return content

    def clear(self) -> None:
        self.chunks.clear()
        self.received = 0
        self.over = False


class _Transfer:
    """A handle and the body and header lines its GETs collect as they come.

    Made once per handle and reused for every GET on it: the callbacks stay
    set, and the Accept header is set again only when it changes.
    """

    __slots__ = ("accept", "base_url", "body", "extra", "handle", "lines")

    def __init__(self, settings: TransportSettings) -> None:
        self.handle = new_handle(settings)
        self.base_url = settings.base_url
        self.body = _Body(settings.max_body_bytes)
        self.lines: list[bytes] = []
        self.accept: str | None = None
        self.extra: tuple[str, ...] = ()
        self.handle.setopt(pycurl.WRITEFUNCTION, self.body.write)
        self.handle.setopt(pycurl.HEADERFUNCTION, self.lines.append)

    def begin(self, path: str, accept: str, extra: tuple[str, ...] = ()) -> None:
        """Set the handle up for a GET of `base_url` + `path` with this Accept (and the
        `extra` header lines: a conditional GET's)."""
        self.handle.setopt(pycurl.URL, self.base_url + path)
        if accept != self.accept or extra or self.extra:
            self.handle.setopt(pycurl.HTTPHEADER, [f"Accept: {accept}", *extra])
            self.accept, self.extra = accept, extra

    def answer(self) -> PageAnswer:
        """The answer of a GET that completed."""
        status = self.handle.getinfo(pycurl.RESPONSE_CODE)
        headers = ResponseHeaders(last_header_block(self.lines))
        self.lines.clear()
        return PageAnswer(status, headers, self.body.take())

    def failure(self, code: int, message: str) -> PageTransportError:
        """What libcurl's error `code` means for this GET (the handle is closed after it)."""
        self.body.chunks.clear()
        return transfer_failure(code, message, self.lines, self.body.over, self.body.limit)

    def close(self) -> None:
        self.handle.close()


def transfer_failure(
    code: int, message: str, lines: list[bytes], over: bool, limit: int
) -> PageTransportError:
    """What libcurl's error `code` means for a transfer that got these header `lines`
    (`over`: its body passed `limit` bytes as it came)."""
    if over or code == pycurl.E_FILESIZE_EXCEEDED:
        # refused on its Content-Length, unread (a gzipped one may declare fewer bytes
        # than it inflates to), else on the bytes as they came
        length = ResponseHeaders(last_header_block(lines)).get("Content-Length") or ""
        size = int(length) if length.isdigit() and int(length) > limit else None
        return PageTransportError(str(BodyTooLarge(limit, size)), True)
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return PageTransportError(f"timed out ({message})")
    if lines and code in _CUT_OFF:  # the answer had begun
        return PageTransportError(f"body cut off: {message}")
    return PageTransportError(f"connection failed: {message}")


def new_handle(settings: TransportSettings) -> pycurl.Curl:
    """A handle with the options every page GET shares."""
    handle = pycurl.Curl()
    handle.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for timeouts
    handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
    handle.setopt(pycurl.USERAGENT, settings.user_agent)
    handle.setopt(pycurl.ACCEPT_ENCODING, "gzip, deflate")
    handle.setopt(pycurl.FOLLOWLOCATION, 0)
    handle.setopt(pycurl.PROXY, settings.proxy or "")  # "": not even libcurl's *_proxy
    handle.setopt(pycurl.NOPROXY, "")  # the caller applied NO_PROXY (as requests reads it)
    handle.setopt(pycurl.NETRC, pycurl.NETRC_IGNORED)  # the caller read .netrc already
    handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, round(settings.connect_timeout * 1000)))
    # A read timeout as libcurl counts one: under a byte a second for that many whole seconds.
    handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)
    handle.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(settings.read_timeout)))
    handle.setopt(pycurl.MAXFILESIZE_LARGE, settings.max_body_bytes)  # a declared length over it
    if settings.auth:
        handle.setopt(pycurl.HTTPAUTH, pycurl.HTTPAUTH_BASIC)  # sent with the first request
        handle.setopt(pycurl.USERNAME, settings.auth[0])
        handle.setopt(pycurl.PASSWORD, settings.auth[1])
    if settings.ca_bundle:
        where = pycurl.CAPATH if os.path.isdir(settings.ca_bundle) else pycurl.CAINFO
        handle.setopt(where, settings.ca_bundle)
    return handle


def last_header_block(lines: list[bytes]) -> bytes:
    """The final answer's status and header lines from libcurl's: an interim 1xx answer
    (103 Early Hints, say) comes first, with its own status line and headers."""
    block = b"".join(lines)
    return block[block.rfind(b"\nHTTP/") + 1 :]  # from the last status line (-1: the first)


class PageLoop:
    """Page GETs in flight together, all driven from one thread (libcurl's multi interface).

    Threads each blocked in a transfer wake for every header line libcurl hands
    back, and contend for the GIL each time: with five of them, every piece of a
    page's work costs about three times what it costs alone (measured per thread
    with ``time.thread_time``). One thread that starts transfers and collects
    the finished ones takes the GIL without a rival. Not thread-safe: the
    thread that made it uses it. Connections are kept alive in the multi
    handle, shared by its transfers.
    """

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self._multi = pycurl.CurlMulti()
        self._idle: list[_Transfer] = []
        self._running: dict[pycurl.Curl, tuple[_Transfer, object]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def start(self, path: str, accept: str, tag: object, extra: tuple[str, ...] = ()) -> None:
        """Begin a GET of `base_url` + `path` (with the `extra` header lines: a conditional
        GET's); `wait` hands back its answer with `tag`."""
        transfer = self._idle.pop() if self._idle else _Transfer(self.settings)
        transfer.begin(path, accept, extra)
        self._running[transfer.handle] = (transfer, tag)
        self._multi.add_handle(transfer.handle)

    def wait(self, timeout: float) -> list[tuple[object, PageAnswer | PageTransportError]]:
        """The transfers that ended, (tag, outcome) each, waiting at most `timeout` seconds
        on their sockets if none has yet."""
        ended = self._perform()
        if not ended and self._running:
            self._multi.select(min(timeout, _libcurl_timeout(self._multi)))
            ended = self._perform()
        return ended

    def _perform(self) -> list[tuple[object, PageAnswer | PageTransportError]]:
        """Let libcurl read and write what its sockets allow, then collect what ended."""
        while self._multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        return self._collect()

    def _collect(self) -> list[tuple[object, PageAnswer | PageTransportError]]:
        ended: list[tuple[object, PageAnswer | PageTransportError]] = []
        while True:
            queued, succeeded, failed = self._multi.info_read()
            for handle in succeeded:
                transfer, tag = self._release(handle)
                ended.append((tag, transfer.answer()))
                self._idle.append(transfer)
            for handle, code, message in failed:
                transfer, tag = self._release(handle)
                ended.append((tag, transfer.failure(code, message)))
                transfer.close()  # nothing of a failed transfer is reused (half-read connection)
            if not queued:
                return ended

    def _release(self, handle: pycurl.Curl) -> tuple[_Transfer, object]:
        self._multi.remove_handle(handle)
        return self._running.pop(handle)

    def close(self) -> None:
        """End every transfer and close every connection."""
        for handle in list(self._running):
            transfer, _ = self._release(handle)
            transfer.close()
        for transfer in self._idle:
            transfer.close()
        self._idle.clear()
        self._multi.close()


def _libcurl_timeout(multi: pycurl.CurlMulti) -> float:
    """Seconds until libcurl next needs `perform` for its timers (-1 from it: none set)."""
    milliseconds = multi.timeout()
    return 1.0 if milliseconds < 0 else milliseconds / 1000


@dataclass(slots=True)
class StreamedAnswer:
    """What a `StreamingCall` brought: status and headers; the body of an answer that was not
    a 200 (at most `ERROR_BODY_BYTES` of it: a 200's went to the caller as it came)."""

    status: int
    headers: ResponseHeaders
    body: bytes


ERROR_BODY_BYTES = 64 << 10


class StreamingCall:
    """One request at a time whose 200 answer is handed to a callback as it arrives.

    For PyPI's few large answers (XML-RPC, the JSON root: 60 MB at PyPI's size),
    parsed as they stream so no second copy is ever held; over libcurl like the
    pages, with the same settings, so one HTTP stack speaks to PyPI. The
    transfer is driven by a multi handle, returning to Python at least once a
    second (a signal's handler runs then).

    Each call has a connection of its own: a run makes two or three, a second
    apart (XML-RPC's pacing), and libcurl sends a request again, once, on a
    kept-alive connection that closes before answering, an attempt that
    ``--retries`` would not count.
    """

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self._multi = pycurl.CurlMulti()
        self._handle: pycurl.Curl | None = None

    def _new_handle(self) -> pycurl.Curl:
        handle = new_handle(self.settings)
        handle.setopt(pycurl.FORBID_REUSE, 1)
        return handle

    def request(
        self,
        path: str,
        headers: list[str],
        feed: Callable[[bytes], None],
        data: bytes | None = None,
        start: Callable[[ResponseHeaders], None] | None = None,
    ) -> StreamedAnswer:
        """GET `path` (POST `data`, if given) with these header lines; a 200's body goes to
        `feed` chunk by chunk, once `start` has seen its headers. Raises what `start` or
        `feed` raised, or PageTransportError (no answer, cut off, over
        `settings.max_body_bytes`: `too_large`)."""
        handle = self._handle if self._handle is not None else self._new_handle()
        self._handle = None  # given back only once the transfer ended cleanly
        lines: list[bytes] = []
        sink = _StreamSink(lines, feed, start, self.settings.max_body_bytes)
        handle.setopt(pycurl.URL, self.settings.base_url + path)
        handle.setopt(pycurl.HTTPHEADER, headers)
        if data is None:
            handle.setopt(pycurl.HTTPGET, 1)
        else:
            handle.setopt(pycurl.POSTFIELDS, data)
        handle.setopt(pycurl.WRITEFUNCTION, sink.write)
        handle.setopt(pycurl.HEADERFUNCTION, lines.append)
        self._multi.add_handle(handle)
        try:
            failure = self._drive()
        finally:
            self._multi.remove_handle(handle)
        if sink.raised is not None:
            handle.close()
            raise sink.raised
        if failure is not None:
            handle.close()
            code, message = failure
            raise transfer_failure(code, message, lines, sink.over, self.settings.max_body_bytes)
        self._handle = handle
        status = handle.getinfo(pycurl.RESPONSE_CODE)
        return StreamedAnswer(status, ResponseHeaders(last_header_block(lines)), sink.error_body())

    def _drive(self) -> tuple[int, str] | None:
        """Run the one transfer to its end: None, or libcurl's (error code, message)."""
        while True:
            while self._multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            _queued, succeeded, failed = self._multi.info_read()
            if succeeded:
                return None
            if failed:
                _handle, code, message = failed[0]
                return code, message
            self._multi.select(min(1.0, _libcurl_timeout(self._multi)))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._multi.close()


class _StreamSink:
    """`StreamingCall`'s write callback: a 200's chunks to `feed`, any other's kept (capped)."""

    __slots__ = ("feed", "kept", "limit", "lines", "over", "raised", "received", "start", "status")

    def __init__(
        self,
        lines: list[bytes],
        feed: Callable[[bytes], None],
        start: Callable[[ResponseHeaders], None] | None,
        limit: int,
    ) -> None:
        self.lines = lines
        self.feed = feed
        self.start = start
        self.limit = limit
        self.received = 0
        self.over = False
        self.status: int | None = None
        self.kept: list[bytes] = []
        self.raised: BaseException | None = None

    def write(self, chunk: bytes) -> int | None:
        try:
            if self.status is None:  # the headers are in by the body's first byte
                block = last_header_block(self.lines)
                status_line = block.split(b"\n", 1)[0].split()  # libcurl's getinfo waits
                self.status = int(status_line[1]) if len(status_line) > 1 else 0
                if self.status == 200 and self.start is not None:
                    self.start(ResponseHeaders(block))
        except BaseException as exc:  # handed to the caller once libcurl stops
            self.raised = exc
            return 0
        self.received += len(chunk)
        if self.received > self.limit:
            self.over = True
            return 0  # libcurl stops the transfer (CURLE_WRITE_ERROR)
        if self.status != 200:
            if self.received <= ERROR_BODY_BYTES:
                self.kept.append(chunk)
            return None
        try:
            self.feed(chunk)
        except BaseException as exc:  # handed to the caller once libcurl stops
            self.raised = exc
            return 0
        return None

    def error_body(self) -> bytes:
        return b"".join(self.kept)
