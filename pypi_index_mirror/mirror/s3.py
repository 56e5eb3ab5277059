"""The served tree in an S3-compatible bucket (``--storage s3://BUCKET[/PREFIX]``).

Imported only when a bucket is named, so boto3 is needed only by those who
use one. Credentials, region and endpoint come from where every AWS SDK
reads them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for a
store that is not AWS, ``~/.aws/config`` and ``credentials``), never from the
command line.

Retries: botocore's own are switched off (``total_max_attempts=1``) and every
call goes through ``http.retry.call_with_retries`` with the run's
``--retries`` and ``--backoff``, so a store answering 500, 503 or
``SlowDown`` is retried exactly as PyPI and RSTUF are (one backoff, one
Retry-After cap, one log line per retry) rather than by a second policy with
its own counts.

Requests per page (see docs/s3-storage.md): a first sync puts two objects (the
hash-prefixed copy, then the page); an update of a page reads the old one (a
GET) and puts two; the listing that the CSV and the audit read is one
ListObjectsV2 per 1,000 keys.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from pypi_index_mirror.http.retry import (
    Retryable,
    RetryPolicy,
    call_with_retries,
    retry_after_of,
)
from pypi_index_mirror.mirror.storage import (
    MARKER_KEY,
    Storage,
    StorageUnavailable,
    StoredObject,
    check_marker,
    object_headers,
)
from pypi_index_mirror.ops.cli import ToolError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What S3 (and compatible stores) answer when another attempt may work: 500
# InternalError, 503 SlowDown / ServiceUnavailable (AWS asks clients to back off),
# and 502/504 from a gateway in front.
RETRIED_STATUS = frozenset({500, 502, 503, 504})
RETRIED_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
CONNECTIONS = 32  # a first sync puts from up to --workers threads at once (32 at most)


class StoreFailed(ToolError):
    """A request the store kept failing after every retry, or refused."""


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in ``/`` or empty) of ``s3://BUCKET[/PREFIX]``."""
    rest = url.partition("://")[2]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Storage(Storage):
    """`Storage` over one boto3 S3 client (thread-safe, so the fetch workers share it)."""

    def __init__(self, client: Any, bucket: str, prefix: str, policy: RetryPolicy) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.policy = policy
        self.requests: Counter[str] = Counter()  # PUT/GET/HEAD/LIST/DELETE made (measured)
        self._count_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, retries: int, backoff: float) -> S3Storage:
        """Open the bucket `url` names and check that it is there and ours to read.

        Raises StorageUnavailable (one line, exit 1) for a missing or forbidden
        bucket or missing credentials.
        """
        bucket, prefix = parse_url(url)
        config = BotoConfig(
            retries={"total_max_attempts": 1},  # http_retry's policy instead (module docstring)
            max_pool_connections=CONNECTIONS,
            connect_timeout=10,
            read_timeout=60,
            # S3-compatible stores differ on the newer default CRC32 trailers; MD5 ETags
            # are what the audit compares, and HTTPS (or loopback) protects the bytes.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = boto3.session.Session().client("s3", config=config)
        storage = cls(client, bucket, prefix, RetryPolicy(retries, backoff))
        storage.check_bucket()
        return storage

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # --- one request, retried by the project's policy

    def _call(self, verb: str, key: str, operation: Callable[..., T], **params: Any) -> T:
        """`operation(Bucket=..., **params)` retried on 5xx, SlowDown and broken connections.

        ClientErrors that are answers (404, 403, 412) go to the caller.
        """

        def attempt() -> T:
            with self._count_lock:
                self.requests[verb] += 1
            try:
                return operation(Bucket=self.bucket, **params)
            except ClientError as exc:
                status, code = _status(exc), _code(exc)
                if status in RETRIED_STATUS or code in RETRIED_CODES:
                    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                    hint = retry_after_of(status, _Headers(headers))
                    raise Retryable(f"{code} ({status})", hint) from exc
                raise
            except (BotoConnectionError, HTTPClientError) as exc:
                raise Retryable(str(exc)) from exc

        where = f"{self.describe()}{key}"
        try:
            answer: T = call_with_retries(attempt, self.policy, f"{verb} {where}", log)
            return answer
        except Retryable as exc:
            raise StoreFailed(
                f"{where}: the store kept failing ({exc}) after {self.policy.retries} "
                "retries; the run can be repeated once it answers"
            ) from None
        except NoCredentialsError:
            raise StorageUnavailable(
                f"{self.describe()}: no AWS credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or a profile in ~/.aws/credentials"
            ) from None
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:
                raise
            if _code(exc) == "NoSuchBucket":
                raise self._no_bucket() from None
            status = _status(exc)
            if status == 403:
                raise self._forbidden() from None
            raise StoreFailed(f"{where}: {verb} refused: {_code(exc)} ({status})") from None
        except BotoCoreError as exc:
            raise StoreFailed(f"{where}: {verb} failed: {exc}") from None

    def _no_bucket(self) -> StorageUnavailable:
        return StorageUnavailable(
            f"s3://{self.bucket}: no such bucket at the store's endpoint; create it, or check "
            "--storage and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL"
        )

    def _forbidden(self) -> StorageUnavailable:
        return StorageUnavailable(
            f"s3://{self.bucket}: access denied; check the credentials (AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE) and that they may list, read, write and delete in the bucket"
        )

    def check_bucket(self) -> None:
        try:
            self._call("HEAD", "", self.client.head_bucket)
        except ClientError as exc:  # a HEAD's 404 has no code but "404"
            raise self._no_bucket() from exc

    # --- Storage

    def put(self, key: str, data: bytes) -> None:
        content_type, cache_control = object_headers(key)
        self._call(
            "PUT",
            key,
            self.client.put_object,
            Key=self.prefix + key,
            Body=data,
            ContentType=content_type,
            CacheControl=cache_control,
        )

    def get(self, key: str) -> bytes | None:
        return self._get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        span = f"bytes={start}" if start < 0 else f"bytes={start}-{start + length - 1}"
        try:
            return self._get(key, Range=span)
        except StoreFailed as exc:
            if "InvalidRange" in str(exc):  # an empty object has no byte to give
                return b""
            raise

    def _get(self, key: str, **params: Any) -> bytes | None:
        def read() -> bytes:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **params)
            body: bytes = answer["Body"].read()
            return body

        try:
            return self._call("GET", key, lambda **_bucket: read())
        except ClientError:  # MISSING_CODES
            return None

    def etag(self, key: str) -> str | None:
        try:
            answer = self._call("HEAD", key, self.client.head_object, Key=self.prefix + key)
        except ClientError:
            return None
        etag: str = answer["ETag"].strip('"')
        return etag

    def delete(self, key: str) -> None:
        with contextlib.suppress(ClientError):  # already gone
            self._call("DELETE", key, self.client.delete_object, Key=self.prefix + key)

    def list(self, prefix: str = "", top_level: bool = False) -> Iterator[StoredObject]:
        """ListObjectsV2, 1,000 keys a request, in key order (S3 lists in UTF-8 binary order)."""
        params: dict[str, Any] = {"Prefix": self.prefix + prefix}
        if top_level:
            params["Delimiter"] = "/"  # what is below a further '/' comes as one prefix
        cut = len(self.prefix)
        while True:
            page = self._call("LIST", prefix, self.client.list_objects_v2, **params)
            for item in page.get("Contents", ()):
                key = item["Key"][cut:]
                if key != MARKER_KEY:
                    yield StoredObject(key, item["Size"], item["ETag"].strip('"'))
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    def read_marker(self) -> str | None:
        data = self.get(MARKER_KEY)
        if data is None:
            return None
        return check_marker(data[:100].decode("ascii", "replace"), self.describe() + MARKER_KEY)

    def write_marker(self, mirror_id: str) -> None:
        self._call(
            "PUT",
            MARKER_KEY,
            self.client.put_object,
            Key=self.prefix + MARKER_KEY,
            Body=f"{mirror_id}\n".encode(),
            ContentType="text/plain",
            CacheControl="no-store",
        )

    def close(self) -> None:
        """Close the connections; log (INFO) the requests made, by kind, for the operator."""
        made = ", ".join(f"{count} {verb}" for verb, count in sorted(self.requests.items()))
        log.info("%s: %s requests", self.describe(), made or "no")
        self.client.close()


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _Headers:
    """botocore's header dict (lower-case keys) as http_retry's `Headers`."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = {name.lower(): value for name, value in headers.items()}

    def get(self, name: str, default: None = None, /) -> str | None:
        return self._headers.get(name.lower(), default)
