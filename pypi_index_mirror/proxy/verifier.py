"""The python-tuf side of the proxy: one verified metadata state, shared by every request.

python-tuf's ``Updater`` is not thread-safe and refreshes once in its life, so
the proxy keeps one Updater (the *state*) behind one lock:

- a request takes the lock, refreshes the state if it is *due*, and looks its
  target up (``get_targetinfo``, which loads the one hash bin it needs); then
  it releases the lock and downloads the page itself, so downloads of many
  clients run at once;
- a state is due when it was verified more than ``max_age`` seconds ago
  (RSTUF publishes a new timestamp at every change: this is how long a change
  can take to reach clients) or when any top-level role it holds has expired;
- a target that is not signed makes one refresh too (a project signed since
  the last one), unless the state is younger than ``miss_interval`` or was
  refreshed while this request waited: unknown names cannot cost a refresh each;
- a refresh is one new ``Updater`` over the same metadata directory, trusting
  the root the previous refresh verified (the first one trusts ``--tuf-root``):
  the timestamp and snapshot verified before stay on disk, so python-tuf
  refuses a rollback across refreshes and restarts;
- at most one refresh runs: requests that arrive meanwhile wait on the lock
  and then use its result. A refresh that fails is the answer to every request
  for ``retry_interval`` seconds (no refresh per request against a server that
  is down); the previous state is dropped, never served unverified.

The page is fetched from the mirror by its hash-prefixed name (consistent
snapshots: ``simple/<p>/<blake2b-256>.index.html``) and checked with
``TargetFile.verify_length_and_hashes``, python-tuf's own check, before a
byte is served. Verified pages are kept in memory (`PageCache`, least recently
used first out) under their path, length and every hash TUF signs for them:
the same key can only ever name the same bytes, so a page is fetched again
only when the metadata signs other bytes for it. A copy damaged on the mirror
after its bytes were cached goes unnoticed until then: the `--audit` of
``pypi_mirror.py`` is what watches the mirror's disk.

Every refusal is a `Refusal` with the HTTP status and the one-line reason the
client and the log get.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib import parse

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Snapshot, TargetFile, Targets, Timestamp
from tuf.ngclient import Updater, UpdaterConfig

from pypi_index_mirror.audit import compare as audit_compare
from pypi_index_mirror.audit import metadata as tuf_metadata
from pypi_index_mirror.http.environment import read_environment
from pypi_index_mirror.ops.cli import VERSION, ToolError

log = logging.getLogger(__name__)

USER_AGENT = f"pypi-index-mirror/{VERSION} proxy (+urllib3/{urllib3.__version__})"


@dataclass(frozen=True)
class VerifierConfig:
    """What the verifier is told; seconds and bytes in the names or comments."""

    metadata_url: str  # where RSTUF's metadata is served (1.root.json, timestamp.json, ...)
    mirror_url: str  # where the mirror's served tree is (pages and their hash-prefixed copies)
    trusted_root: Path  # the only metadata trusted without verification
    cache_dir: Path  # python-tuf's metadata directory
    max_age: float = 60.0  # seconds a verified timestamp is used before asking for a new one
    miss_interval: float = 1.0  # seconds: a younger state is not refreshed for an unknown target
    retry_interval: float = 2.0  # seconds a failed refresh is answered before trying again
    connect_timeout: float = 5.0
    timeout: float = 30.0  # read timeout of one request to the mirror or metadata server
    retries: int = 1  # per metadata request, on connection errors, 429 and 5xx
    backoff: float = 0.2  # seconds before a metadata retry
    max_page_bytes: int = 64 << 20  # a target signed longer than this is refused
    connections: int = 32  # keep-alive connections kept to the mirror
    page_cache_bytes: int = (
        64 << 20
    )  # verified pages kept in memory by their signed hashes; 0: none
    monotonic: Callable[[], float] = time.monotonic  # injectable for tests
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


# --- refusals ---------------------------------------------------------------------------


class Refusal(Exception):
    """A request answered with an HTTP error; the message is its one line."""

    status = 502
    retry_after: float | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(one_line(reason))


class NotSigned(Refusal):
    """The metadata signs no page for the URL (an unknown or unregistered project)."""

    status = 404


class PageRejected(Refusal):
    """The mirror's bytes are not what TUF signs (or it has no copy of them)."""


class MetadataRefused(Refusal):
    """The TUF metadata failed verification: bad signature, expired, rolled back..."""


class Unreachable(Refusal):
    """The mirror or the metadata server did not answer; worth trying again."""

    status = 503
    retry_after = 5.0


class ProxyStartError(ToolError):
    """The proxy cannot start (an unusable trusted root or cache directory)."""


def one_line(text: str) -> str:
    """`text` on one line of printable ASCII (an HTTP reason phrase must be latin-1)."""
    flat = " ".join(str(text).split()) or "no detail"
    return flat.encode("ascii", "backslashreplace").decode("ascii")[:400]


def refusal_of(exc: Exception) -> Refusal:
    """The Refusal for an error python-tuf raised, classified as the audit classifies it."""
    error = tuf_metadata.rejection(exc)
    if isinstance(error, tuf_metadata.MetadataUnreachable):
        return Unreachable(str(error))
    return MetadataRefused(str(error))


# --- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedPage:
    """Bytes python-tuf's check passed for `target`, and the hex digest that names them."""

    target: str
    data: bytes
    digest: str  # the first hash TUF lists: names the mirror's copy, and the ETag


@dataclass
class _State:
    updater: Updater
    verified_at: float  # monotonic
    expires: datetime  # the earliest expiry of timestamp, snapshot and top-level targets
    snapshot_version: int


class PageCache:
    """Verified page bytes by (path, length, hashes), least recently used dropped first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._pages: OrderedDict[tuple[str, int, tuple[tuple[str, str], ...]], bytes] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    @staticmethod
    def key(info: TargetFile) -> tuple[str, int, tuple[tuple[str, str], ...]]:
        return info.path, info.length, tuple(sorted(info.hashes.items()))

    def get(self, info: TargetFile) -> bytes | None:
        key = self.key(info)
        with self._lock:
            data = self._pages.get(key)
            if data is not None:
                self._pages.move_to_end(key)
            return data

    def put(self, info: TargetFile, data: bytes) -> None:
        """Keep `data`, which must have been verified against `info`."""
        if len(data) > self.max_bytes // 4:  # one huge page must not empty the cache
            return
        key = self.key(info)
        with self._lock:
            if key in self._pages:
                return
            self._pages[key] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _, dropped = self._pages.popitem(last=False)
                self.size -= len(dropped)


# --- the verifier -----------------------------------------------------------------------


class Verifier:
    """One verified metadata state for all threads; pages fetched and checked per request."""

    def __init__(self, config: VerifierConfig) -> None:
        self.config = config
        self.mirror_url = config.mirror_url.rstrip("/") + "/"
        self.metadata_url = config.metadata_url.rstrip("/") + "/"
        self._root = self._read_trusted_root()
        try:
            config.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProxyStartError(
                f"cache directory {config.cache_dir}: {exc.strerror or exc}"
            ) from None
        audit_config = tuf_metadata.AuditConfig(
            metadata_url=config.metadata_url,
            trusted_root=config.trusted_root,
            connect_timeout=config.connect_timeout,
            timeout=config.timeout,
            retries=config.retries,
            backoff=config.backoff,
        )
        # only ever used under the lock, so one fetcher (one urllib3 pool) is enough
        # the one HTTP environment (proxy, CA bundle), with the proxy's own User-Agent
        environment = dataclasses.replace(read_environment(), user_agent=USER_AGENT)
        self._fetcher = tuf_metadata.MetadataFetcher(audit_config, environment=environment)
        self._mirror = environment.urllib3_pool(config.mirror_url, config.connections)
        self._mirror_timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.timeout)
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._cache = PageCache(config.page_cache_bytes)
        self._failure: tuple[Refusal, float] | None = None
        self.refreshes = 0  # how many refreshes ran (tests and the benchmark read it)
        self._check_root()

    def close(self) -> None:
        self._fetcher.close()
        self._mirror.clear()

    # -- trust -------------------------------------------------------------------------

    def _read_trusted_root(self) -> bytes:
        path = self.config.trusted_root
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ProxyStartError(f"trusted root {path}: {exc.strerror or exc}") from None

    def _check_root(self) -> None:
        """Refuse to start with a file that is not root metadata (nothing fetched yet)."""
        try:
            Updater(
                metadata_dir=str(self.config.cache_dir),
                metadata_base_url=self.metadata_url,
                fetcher=self._fetcher,
                bootstrap=self._root,
            )
        except (tuf_errors.RepositoryError, ValueError, KeyError, TypeError) as exc:
            raise ProxyStartError(
                f"trusted root {self.config.trusted_root}: not usable TUF root metadata "
                f"({one_line(str(exc))})"
            ) from None
        except OSError as exc:
            raise ProxyStartError(
                f"cache directory {self.config.cache_dir}: {exc.strerror or exc}"
            ) from None

    # -- the state ---------------------------------------------------------------------

    def _due(self, state: _State) -> bool:
        age = self.config.monotonic() - state.verified_at
        return age >= self.config.max_age or self.config.now() >= state.expires

    def _current(self) -> _State:
        """The state to answer from, refreshed if due; call with the lock held."""
        if self._failure is not None:
            refusal, failed_at = self._failure
            if self.config.monotonic() - failed_at < self.config.retry_interval:
                raise refusal
        state = self._state
        if state is None or self._due(state):
            state = self._refresh()
        return state

    def _refresh(self) -> _State:
        """Verify the newest metadata with a new Updater; call with the lock held."""
        self.refreshes += 1
        self._state = None  # never answer from a state that was due and failed
        try:
            state = self._new_state()
        except Refusal as refusal:
            self._failure = (refusal, self.config.monotonic())
            log.warning("TUF metadata refresh failed: %s", refusal)
            raise
        self._failure = None
        self._state = state
        log.debug("TUF metadata verified: snapshot v%d", state.snapshot_version)
        return state

    def _new_state(self) -> _State:
        directory = self.config.cache_dir
        updater_config = UpdaterConfig(
            prefix_targets_with_hash=True,
            targets_max_length=64 << 20,
            snapshot_max_length=64 << 20,
        )
        try:
            updater = Updater(
                metadata_dir=str(directory),
                metadata_base_url=self.metadata_url,
                fetcher=self._fetcher,
                config=updater_config,
                bootstrap=self._root,
            )
            updater.refresh()
            self._root = (directory / "root.json").read_bytes()  # as verified, maybe rotated
            expires, snapshot_version = self._expiry(directory)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise refusal_of(exc) from None
        except (OSError, ValueError, KeyError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else f"unreadable: {exc}"
            raise Unreachable(f"TUF metadata cache {directory}: {reason or exc}") from None
        return _State(updater, self.config.monotonic(), expires, snapshot_version)

    @staticmethod
    def _expiry(directory: Path) -> tuple[datetime, int]:
        """The earliest expiry of the top-level roles just verified, and the snapshot version.

        Read back from the files python-tuf persisted after verifying them (its
        trusted set is private), as the audit reads them; with the json module
        rather than `Metadata`: at 16,384 bins the snapshot is ~0.6 MB, which
        `Metadata.from_file` takes 4x as long to read, all under the lock.
        """
        signed = {}
        for role in (Timestamp.type, Snapshot.type, Targets.type):
            document = json.loads((directory / f"{role}.json").read_bytes())
            signed[role] = document["signed"]
        expires = min(
            datetime.strptime(part["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            for part in signed.values()
        )
        return expires, int(signed[Snapshot.type]["version"])

    def _lookup(self, state: _State, target: str) -> TargetFile | None:
        try:
            return state.updater.get_targetinfo(target)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise refusal_of(exc) from None

    def target_info(self, candidates: list[str], started: float) -> TargetFile | None:
        """The first of `candidates` the metadata signs (None: none), refreshing as needed.

        `started` is the monotonic time the request arrived: a state verified
        after it is already as new as a refresh could make it.
        """
        with self._lock:
            state = self._current()
            for target in candidates:
                info = self._lookup(state, target)
                if info is not None:
                    return info
            age = self.config.monotonic() - state.verified_at
            if state.verified_at < started and age >= self.config.miss_interval:
                state = self._refresh()
                for target in candidates:
                    info = self._lookup(state, target)
                    if info is not None:
                        return info
            return None

    def snapshot_version(self) -> int | None:
        state = self._state
        return state.snapshot_version if state else None

    # -- pages -------------------------------------------------------------------------

    def copy_url(self, info: TargetFile) -> str:
        """The hash-prefixed copy python-tuf would download for `info` (consistent snapshots)."""
        digest = next(iter(info.hashes.values()))
        return self.mirror_url + parse.quote(audit_compare.copy_path(info.path, digest))

    def download(self, info: TargetFile) -> VerifiedPage:
        """The page's bytes verified against `info`, cached or from the mirror; raises Refusal."""
        digest = next(iter(info.hashes.values()))
        cached = self._cache.get(info)
        if cached is not None:
            return VerifiedPage(info.path, cached, digest)
        page = self.fetch(info)
        self._cache.put(info, page.data)
        return page

    def fetch(self, info: TargetFile) -> VerifiedPage:
        """The page's bytes from the mirror, verified against `info`; raises Refusal."""
        if info.length > self.config.max_page_bytes:
            raise PageRejected(
                f"{info.path}: TUF signs {info.length} bytes, over this proxy's limit of "
                f"{self.config.max_page_bytes}"
            )
        url = self.copy_url(info)
        try:
            response = self._mirror.request(
                "GET",
                url,
                preload_content=False,
                timeout=self._mirror_timeout,
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(f"mirror {url}: {tuf_metadata.urllib3_reason(exc)}") from None
        try:
            if response.status != 200:
                raise self._status_refusal(info, url, response.status)
            data = self._read_capped(response, url, info.length)
        finally:
            response.release_conn()
        try:
            info.verify_length_and_hashes(data)
        except tuf_errors.LengthOrHashMismatchError as exc:
            raise PageRejected(
                f"{info.path}: the mirror's bytes ({url}) are not what TUF signs: {exc}"
            ) from None
        return VerifiedPage(info.path, data, next(iter(info.hashes.values())))

    @staticmethod
    def _status_refusal(info: TargetFile, url: str, status: int) -> Refusal:
        if status >= 500 or status == 429:
            return Unreachable(f"mirror {url} answered HTTP {status}")
        return PageRejected(
            f"{info.path}: the mirror has no copy of the page TUF signs ({url} answered "
            f"HTTP {status})"
        )

    @staticmethod
    def _read_capped(response: urllib3.BaseHTTPResponse, url: str, length: int) -> bytes:
        """At most one byte more than TUF signs (enough to know it is too long)."""
        received = bytearray()
        try:
            for chunk in response.stream(1 << 16):
                received += chunk
                if len(received) > length:
                    break
        except urllib3.exceptions.HTTPError as exc:
            response.close()
            raise Unreachable(
                f"mirror {url}: body cut off: {tuf_metadata.urllib3_reason(exc)}"
            ) from None
        if len(received) > length:
            response.close()  # the rest is not read: this connection cannot be reused
        return bytes(received)

    def not_signed(self, candidates: list[str]) -> NotSigned:
        return NotSigned(
            f"TUF metadata (snapshot v{self.snapshot_version()}) signs no "
            f"{' or '.join(candidates)}: not a project of this mirror, or not registered "
            "with RSTUF yet"
        )

    def page(self, candidates: list[str], started: float | None = None) -> VerifiedPage:
        """The first signed candidate's verified bytes; raises NotSigned or another Refusal."""
        started = self.config.monotonic() if started is None else started
        info = self.target_info(candidates, started)
        if info is None:
            raise self.not_signed(candidates)
        return self.download(info)
