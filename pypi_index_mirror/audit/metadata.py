"""The audit's python-tuf side: RSTUF's metadata fetched and verified as a TUF client would.

Read from RSTUF's base URL (the directory its storage is served from),
trusting only a given root file, and verified whole on every run (no client
cache survives between audits): ``tuf.ngclient.Updater.refresh()`` rotates the
root (``N+1.root.json`` until 404) and verifies timestamp, snapshot and
top-level targets; then every hash bin the targets role delegates to
succinctly (TAP 15; RSTUF names them ``bins-<hex>``) is fetched as
``<version>.bins-<hex>.json`` and verified with python-tuf's public API
(``Metadata``, ``MetaFile``, ``Targets.verify_delegate``), in the client
workflow's order: length and hashes where snapshot lists them, the
delegator's signature threshold, the version snapshot names, expiry.

Layers, as in python-tuf's ngclient: `MetadataFetcher` only moves bytes (the
proxy fetches with it too); the pure functions verify bins; `MetadataReader`
walks the top-level metadata and fetches bins; `signed_target` answers for one
path. Errors that stop the audit are `AuditError`s whose one-line message
names what failed (which metadata, which URL). The audit run that drives all
this over every bin is ``audit.tuf``'s.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib import parse

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, SuccinctRoles, Targets
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import CanonicalJSONSerializer
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from pypi_index_mirror.audit.compare import SignedTarget
from pypi_index_mirror.http.environment import HttpEnvironment, read_environment
from pypi_index_mirror.http.retry import (
    Retryable,
    RetryPolicy,
    call_with_retries,
    retry_after_of,
)
from pypi_index_mirror.ops.cli import ToolError, UsageError
from pypi_index_mirror.sync.parallel import usable_cpus

if TYPE_CHECKING:
    from pypi_index_mirror.ops.settings import Config

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class AuditConfig:
    """What one audit is told; seconds and bytes in the names or comments."""

    metadata_url: str  # the directory RSTUF's storage is served from
    trusted_root: Path  # the only metadata trusted without verification
    fetch_workers: int = 8  # threads fetching bins, one HTTP session each
    hash_workers: int = field(default_factory=usable_cpus)  # processes verifying and hashing
    executor: str = "processes"  # or "threads" (parallel.EXECUTORS)
    connect_timeout: float = 10.0
    timeout: float = 60.0  # read timeout of one request
    retries: int = 3  # per request, on connection errors, 429 and 5xx
    backoff: float = 0.5  # first retry delay, doubled each retry
    max_root_bytes: int = 512 << 10
    max_timestamp_bytes: int = 64 << 10
    max_snapshot_bytes: int = 64 << 20  # 16,384 bins are listed in it
    max_targets_bytes: int = 64 << 20  # top-level targets and each bin
    # the time metadata expiry is judged against (injectable for tests)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def audit_settings(config: Config) -> AuditConfig:
    """The audit's settings from the run's (its timeouts, retries and fetch threads)."""
    if config.tuf_metadata_url is None or config.tuf_root is None:
        raise UsageError("--tuf-metadata-url and --tuf-root are needed")
    return AuditConfig(
        metadata_url=config.tuf_metadata_url,
        trusted_root=config.tuf_root,
        fetch_workers=config.workers,
        connect_timeout=config.connect_timeout,
        timeout=config.timeout,
        retries=config.retries,
        backoff=config.backoff,
    )


# --- errors ---------------------------------------------------------------------------


class AuditError(ToolError):
    """The audit cannot run; the message is one line that names what failed (exit 1)."""


class TrustedRootUnusable(AuditError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"trusted root {path}: {reason}")
        self.path, self.reason = path, reason


class MetadataUnreachable(AuditError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"TUF metadata unreachable: {reason}")
        self.reason = reason

    def __reduce__(self):  # may cross a process boundary
        return (type(self), (self.reason,))


class MetadataRejected(AuditError):
    """Metadata failed verification: `problem` is e.g. 'bad signature', 'expired'."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"TUF metadata rejected: {problem}: {detail}")
        self.problem, self.detail = problem, detail

    def __reduce__(self):  # raised in worker processes
        return (type(self), (self.problem, self.detail))


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "no detail"


def rejection(exc: Exception) -> AuditError:
    """The AuditError for an error python-tuf raised while verifying or downloading."""
    detail = _one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return MetadataRejected("too large", detail)
    if isinstance(exc, tuf_errors.DownloadError):
        cause = exc.__cause__
        if cause is not None and str(cause) and str(cause) not in detail:
            detail = f"{detail}: {_one_line(str(cause))}"
        return MetadataUnreachable(detail)
    problems: tuple[tuple[type[Exception], str], ...] = (
        (tuf_errors.UnsignedMetadataError, "bad signature"),
        (tuf_errors.ExpiredMetadataError, "expired"),
        (tuf_errors.BadVersionNumberError, "wrong version"),
        (tuf_errors.LengthOrHashMismatchError, "length or hashes differ from snapshot"),
    )
    for kind, problem in problems:
        if isinstance(exc, kind):
            return MetadataRejected(problem, detail)
    return MetadataRejected("invalid", detail)


# --- verifying what python-tuf fetched ----------------------------------------------


def signed_targets(targets: Targets) -> dict[str, SignedTarget]:
    """The (path -> SignedTarget) of a verified targets role."""
    return {
        path: SignedTarget(info.length, tuple(info.hashes.items()))
        for path, info in targets.targets.items()
    }


def verify_bin(
    data: bytes,
    role: str,
    meta: MetaFile,
    delegator: Targets,
    reference_time: datetime,
) -> Targets:
    """Verify one delegated bin's bytes as a TUF client does; return its signed part.

    Checks, in the client workflow's order: length and hashes against the
    snapshot's entry (when it lists them), that it is targets metadata, the
    delegator's signature threshold for `role`, the version snapshot names,
    expiry. Raises MetadataRejected.
    """
    try:
        meta.verify_length_and_hashes(data)
        metadata = parse_metadata(data, role)
        if metadata.signed.type != Targets.type:
            raise tuf_errors.RepositoryError(
                f"{role}: expected targets metadata, got {metadata.signed.type!r}"
            )
        delegator.verify_delegate(role, signed_payload(metadata.signed), metadata.signatures)
        if metadata.signed.version != meta.version:
            raise tuf_errors.BadVersionNumberError(
                f"expected {role} v{meta.version}, got v{metadata.signed.version}"
            )
        if metadata.signed.is_expired(reference_time):
            raise tuf_errors.ExpiredMetadataError(
                f"{role} expired at {metadata.signed.expires:%Y-%m-%dT%H:%M:%SZ}"
            )
    except tuf_errors.RepositoryError as exc:
        raise rejection(exc) from None
    except ValueError as exc:  # e.g. the delegator does not delegate `role`
        raise MetadataRejected("invalid", f"{role}: {_one_line(str(exc))}") from None
    if metadata.signed.delegations is not None:
        raise MetadataRejected(
            "unsupported delegation",
            f"{role} delegates further; this audit reads one level of hash bins, as RSTUF "
            "publishes",
        )
    return metadata.signed


def _no_float(text: str) -> object:
    raise ValueError(f"{text}: canonical JSON has integers only")


def parse_metadata(data: bytes, role: str) -> Metadata[Targets]:
    """Deserialize metadata as python-tuf's JSON deserializer does, refusing non-integer numbers.

    Canonical JSON (what TUF signs) has no floats, NaN or infinities, so
    python-tuf can never verify metadata holding one; refusing them here keeps
    `signed_payload`'s shortcut exact. Raises DeserializationError.
    """
    try:
        document = json.loads(data, parse_float=_no_float, parse_constant=_no_float)
        return Metadata.from_dict(document)
    except Exception as exc:  # as python-tuf's JSONDeserializer: any failure is bad data
        raise DeserializationError(f"{role}: not TUF metadata ({_one_line(str(exc))})") from None


def signed_payload(signed: Targets) -> bytes:
    """The canonical JSON bytes of `signed` that signatures cover (``Metadata.signed_bytes``).

    securesystemslib's canonical encoder is pure Python: at 700,000 targets it
    was a third of the audit's CPU. For data without floats (`parse_metadata`
    refuses them) and without a backslash or control character in any string,
    canonical JSON (OLPC: keys sorted, no whitespace, only '\\' and '"'
    escaped, UTF-8) is byte for byte what ``json.dumps(sort_keys=True)`` with
    compact separators writes; anything else takes python-tuf's own encoder.
    """
    try:
        text = json.dumps(
            signed.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        if "\\" not in text:  # json escapes control characters, canonical JSON does not
            return text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        pass
    return CanonicalJSONSerializer().serialize(signed)


def split_misplaced(
    targets: dict[str, SignedTarget], role: str, succinct: SuccinctRoles
) -> tuple[dict[str, SignedTarget], list[str]]:
    """Separate the targets a client can find in `role` from those it never looks for there.

    A client looks a path up only in the bin its SHA-256 names, so a target
    listed in another bin signs nothing a client can download.
    """
    misplaced = [path for path in targets if succinct.get_role_for_target(path) != role]
    for path in misplaced:
        del targets[path]
    return targets, misplaced


# --- the network -----------------------------------------------------------------------------


class MetadataFetcher(FetcherInterface):
    """Moves bytes only (python-tuf's fetcher interface), over one urllib3 pool.

    Every request has a (connect, read) timeout and this tool's User-Agent;
    connection errors, 429 and 5xx are retried with backoff (GETs of
    metadata are idempotent); a 4xx is final (a 404 ends the root rotation).
    Each answer is read with the size cap python-tuf passes (``max_length``).
    urllib3 rather than requests: 16,384 bins are 16,384 requests, and
    requests' per-request machinery cost 2.3 ms of CPU each against 0.85 ms
    (measured on loopback). Proxy, CA bundle and User-Agent come from the
    run's `HttpEnvironment`, as for every other client (the process
    environment's, read here, without one).
    """

    CHUNK = 1 << 16

    def __init__(
        self,
        config: AuditConfig,
        sleep: Callable[[float], None] = time.sleep,
        environment: HttpEnvironment | None = None,
    ) -> None:
        self.config = config
        self.sleep = sleep
        self.timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.timeout)
        environment = environment if environment is not None else read_environment()
        self.pool = environment.urllib3_pool(config.metadata_url)

    def close(self) -> None:
        self.pool.clear()

    def _fetch(self, url: str) -> Iterator[bytes]:
        policy = RetryPolicy(self.config.retries, self.config.backoff, self.sleep)
        try:
            return call_with_retries(lambda: self._attempt(url), policy, url, log, logging.INFO)
        except _Transient as exc:  # retries spent: the error python-tuf's callers know
            raise exc.final from None

    def _attempt(self, url: str) -> Iterator[bytes]:
        """One GET; raises _Transient (worth another try) or DownloadHTTPError (final)."""
        try:
            response = self.pool.request(
                "GET", url, preload_content=False, timeout=self.timeout, retries=False
            )
        except urllib3.exceptions.NewConnectionError as exc:  # a TimeoutError to urllib3
            raise _Transient(tuf_errors.DownloadError(f"{url}: {urllib3_reason(exc)}")) from None
        except urllib3.exceptions.TimeoutError:
            raise _Transient(tuf_errors.SlowRetrievalError(f"{url}: timed out")) from None
        except urllib3.exceptions.HTTPError as exc:
            raise _Transient(tuf_errors.DownloadError(f"{url}: {urllib3_reason(exc)}")) from None
        status = response.status
        if status < 400:
            return self._chunks(url, response)
        hint = retry_after_of(status, response.headers)
        response.close()
        final = tuf_errors.DownloadHTTPError(f"{url} answered HTTP {status}", status)
        if status in _TRANSIENT_STATUS:
            raise _Transient(final, hint)
        raise final

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        complete = False
        try:
            yield from response.stream(self.CHUNK)
            complete = True
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_errors.DownloadError(f"{url}: body cut off: {urllib3_reason(exc)}") from None
        finally:
            if complete:
                response.release_conn()  # keep-alive for the next bin
            else:
                response.close()  # a half-read answer must not be reused

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """As python-tuf's, but in memory (no temp file per bin), naming the URL if too large."""
        received = bytearray()
        for chunk in self.fetch(url):
            received += chunk
            if len(received) > max_length:
                raise tuf_errors.DownloadLengthMismatchError(
                    f"{url}: larger than the {max_length}-byte limit"
                )
        return bytes(received)


class _Transient(Retryable):
    """A failed attempt worth repeating; `final` is what is raised once retries are spent."""

    def __init__(self, final: tuf_errors.DownloadError, retry_after: float | None = None) -> None:
        super().__init__(str(final), retry_after)
        self.final = final


def urllib3_reason(exc: BaseException) -> str:
    """The innermost words of a urllib3 error ("Connection refused"), not its reprs."""
    inner = exc
    for _ in range(5):  # urllib3 errors wrap socket errors
        cause = getattr(inner, "reason", None)
        if not isinstance(cause, BaseException):
            cause = next((a for a in reversed(inner.args) if isinstance(a, BaseException)), None)
        if cause is None:
            break
        inner = cause
    text = str(inner)
    if "] " in text:  # "...: [Errno 111] Connection refused"
        text = text.rpartition("] ")[2]
    return _one_line(text or type(inner).__name__)


@dataclass(frozen=True)
class TrustedMetadata:
    """The top-level metadata after verification."""

    root: Root
    snapshot: Snapshot
    targets: Targets
    targets_bytes: bytes  # as verified, sent to the workers


class MetadataReader:
    """Fetches and verifies RSTUF's metadata; one fetcher (HTTP session) per thread."""

    def __init__(self, config: AuditConfig, environment: HttpEnvironment | None = None) -> None:
        self.config = config
        self.environment = environment if environment is not None else read_environment()
        self.base_url = config.metadata_url.rstrip("/") + "/"
        self._local = threading.local()
        self._fetchers: list[MetadataFetcher] = []
        self._lock = threading.Lock()

    def __enter__(self) -> MetadataReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            for fetcher in self._fetchers:
                fetcher.close()
            self._fetchers.clear()

    @property
    def fetcher(self) -> MetadataFetcher:
        fetcher = getattr(self._local, "fetcher", None)
        if fetcher is None:
            fetcher = self._local.fetcher = MetadataFetcher(
                self.config, environment=self.environment
            )
            with self._lock:
                self._fetchers.append(fetcher)
        return fetcher

    def trusted_root(self) -> bytes:
        path = self.config.trusted_root
        try:
            return path.read_bytes()
        except OSError as exc:
            raise TrustedRootUnusable(path, exc.strerror or str(exc)) from None

    def top_level(self) -> TrustedMetadata:
        """Root rotation, timestamp, snapshot and targets, verified by python-tuf's Updater.

        The Updater works in a temporary directory that is deleted afterwards:
        every audit starts again from the trusted root. What it verified is
        read back from the files it persisted after each verification.
        """
        root_bytes = self.trusted_root()
        updater_config = UpdaterConfig(
            root_max_length=self.config.max_root_bytes,
            timestamp_max_length=self.config.max_timestamp_bytes,
            snapshot_max_length=self.config.max_snapshot_bytes,
            targets_max_length=self.config.max_targets_bytes,
        )
        with tempfile.TemporaryDirectory(prefix="tuf-audit-") as directory:
            try:
                updater = Updater(
                    metadata_dir=directory,
                    metadata_base_url=self.base_url,
                    fetcher=self.fetcher,
                    config=updater_config,
                    bootstrap=root_bytes,
                )
            except (tuf_errors.RepositoryError, ValueError, KeyError, TypeError) as exc:
                reason = f"not usable TUF root metadata ({_one_line(str(exc))})"
                raise TrustedRootUnusable(self.config.trusted_root, reason) from None
            try:
                updater.refresh()
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
                raise rejection(exc) from None
            return self._read_verified(Path(directory))

    @staticmethod
    def _read_verified(directory: Path) -> TrustedMetadata:
        targets_bytes = (directory / f"{Targets.type}.json").read_bytes()
        return TrustedMetadata(
            root=Metadata[Root].from_file(str(directory / f"{Root.type}.json")).signed,
            snapshot=Metadata[Snapshot].from_file(str(directory / f"{Snapshot.type}.json")).signed,
            targets=Metadata[Targets].from_bytes(targets_bytes).signed,
            targets_bytes=targets_bytes,
        )

    def bin_url(self, role: str, meta: MetaFile, consistent: bool) -> str:
        """``<version>.<role>.json`` with consistent snapshots, as python-tuf's client asks."""
        name = parse.quote(role, "")
        return (
            f"{self.base_url}{meta.version}.{name}.json"
            if consistent
            else f"{self.base_url}{name}.json"
        )

    def fetch(self, role: str, meta: MetaFile, consistent: bool) -> bytes:
        """One bin's bytes (verified later, in a worker); raises MetadataUnreachable."""
        url = self.bin_url(role, meta, consistent)
        limit = min(meta.length, self.config.max_targets_bytes) if meta.length else None
        try:
            return self.fetcher.download_bytes(url, limit or self.config.max_targets_bytes)
        except tuf_errors.DownloadError as exc:
            raise rejection(exc) from None


# --- the walk: top-level metadata, then the bin a path hashes into -------------------


def succinct_roles_of(targets: Targets) -> SuccinctRoles | None:
    """The succinct hash-bin delegation of the top-level targets (None: no delegation).

    Raises MetadataRejected for delegations to named roles, which this audit
    does not walk.
    """
    delegations = targets.delegations
    if delegations is None:
        return None
    if delegations.succinct_roles is None:
        names = ", ".join(sorted(delegations.roles or {})[:3])
        raise MetadataRejected(
            "unsupported delegation",
            f"targets delegates to named roles ({names}); this audit reads succinct hash "
            "bins (TAP 15), as RSTUF publishes them",
        )
    return delegations.succinct_roles


def bin_meta(snapshot: Snapshot, role: str) -> MetaFile:
    """Snapshot's entry for bin `role` (its version, length, hashes); raises MetadataRejected."""
    meta = snapshot.meta.get(f"{role}.json")
    if meta is None:
        raise MetadataRejected("invalid", f"snapshot has no entry for {role}")
    return meta


def signed_target(
    config: AuditConfig, path: str, environment: HttpEnvironment | None = None
) -> SignedTarget | None:
    """What the metadata signs for one path (None: not a target), verified as `audit` does.

    Reads the top-level metadata and the one bin that holds `path`. Raises AuditError.
    """
    with MetadataReader(config, environment) as reader:
        trusted = reader.top_level()
        found = signed_targets(trusted.targets).get(path)
        if found is not None:
            return found
        succinct = succinct_roles_of(trusted.targets)
        if succinct is None:
            return None
        role = succinct.get_role_for_target(path)
        meta = bin_meta(trusted.snapshot, role)
        data = reader.fetch(role, meta, trusted.root.consistent_snapshot)
        verified = verify_bin(data, role, meta, trusted.targets, config.now())
        return signed_targets(verified).get(path)
