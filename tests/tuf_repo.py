"""A small TUF repository laid out like RSTUF's, built with python-tuf's Metadata API.

For end-to-end tests: `TufRepository.publish(view)` signs exactly the artifacts
in `view` (``{path: {"length", "hashes"}}``, what the stand-in RSTUF has
published) and writes the files a TUF repository serves, so that
``tuf.ngclient.Updater`` can verify the mirror's pages against them.

The layout follows RSTUF's bootstrap: root, timestamp, snapshot and targets
with ``consistent_snapshot: true``; targets delegates every path to succinct
hash bins (TAP 15, ``name_prefix="bins"``, so roles ``bins-0`` ... ``bins-f``
for 16 bins) whose names are those RSTUF (and ``tests.fake_rstuf.hash_bin_role``)
assigns. Like RSTUF, a publish bumps only the bins whose artifacts changed,
then snapshot and timestamp.

Files written to `directory`: ``<version>.root.json`` (and ``root.json``),
``<version>.targets.json``, ``<version>.bins-<n>.json``,
``<version>.snapshot.json`` and ``timestamp.json``. Older versions are kept,
so a client that refreshed before a publish can still load the delegated
metadata its snapshot names.

Keys are ed25519, made in memory per repository; nothing here touches the network.

For the audit's tests and benchmark: `expires_by_role` overrides one role's
expiry (an expired timestamp), `rotate_root` publishes ``N+1.root.json``
signed by the old and the new root keys, and `publish_bins` signs bins from
a stream without holding them (700,000 targets in 16,384 bins).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

BINS_PREFIX = "bins"  # RSTUF's name_prefix
TOP_LEVEL_ROLES = (Root.type, Timestamp.type, Snapshot.type, Targets.type)
_SERIALIZER = JSONSerializer(compact=False)


class TufRepository:
    """Signs published artifact views into RSTUF-shaped TUF metadata on disk."""

    def __init__(self, directory: Path, number_of_bins: int = 16) -> None:
        bit_length = number_of_bins.bit_length() - 1
        if number_of_bins < 2 or 2**bit_length != number_of_bins:
            raise ValueError("number_of_bins must be a power of two, at least 2")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.expires = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
        self.signers: dict[str, Signer] = {
            role: CryptoSigner.generate_ed25519() for role in (*TOP_LEVEL_ROLES, BINS_PREFIX)
        }
        bins_key = self.signers[BINS_PREFIX].public_key
        self.succinct_roles = SuccinctRoles([bins_key.keyid], 1, bit_length, BINS_PREFIX)
        self.versions: dict[str, int] = {}
        self.expires_by_role: dict[str, datetime] = {}  # overrides `expires` per role
        self._bins_content: dict[str, dict[str, TargetFile]] = {}

        self.root = Root(expires=self.expires, consistent_snapshot=True)
        for role in TOP_LEVEL_ROLES:
            self.root.add_key(self.signers[role].public_key, role)
        self.root_bytes = self._write(Root.type, Metadata(self.root), versioned=True)
        (directory / "root.json").write_bytes(self.root_bytes)

        targets = Targets(expires=self.expires)
        targets.delegations = Delegations(
            keys={bins_key.keyid: bins_key}, succinct_roles=self.succinct_roles
        )
        self._write(Targets.type, Metadata(targets), versioned=True)

    def role_for(self, path: str) -> str:
        """The hash bin that holds `path`."""
        return self.succinct_roles.get_role_for_target(path)

    def publish(self, view: dict[str, dict[str, Any]]) -> None:
        """Make `view` the repository's targets: new bins, snapshot and timestamp versions."""
        wanted: dict[str, dict[str, TargetFile]] = {
            role: {} for role in self.succinct_roles.get_roles()
        }
        for path, info in view.items():
            target = TargetFile(info["length"], dict(info["hashes"]), path)
            wanted[self.role_for(path)][path] = target
        changed = []
        for role, content in wanted.items():
            if role in self.versions and self._bins_content[role] == content:
                continue
            self._bins_content[role] = content
            changed.append((role, content))
        self.publish_bins(changed)

    def publish_bins(self, contents: Iterable[tuple[str, dict[str, TargetFile]]]) -> None:
        """Sign each (bin, its targets) as the bin's next version, then snapshot and timestamp.

        Streams `contents`: nothing is kept but the versions, so a benchmark can
        sign 700,000 targets without holding them (`targets()` does not see them).
        """
        for role, content in contents:
            bins = Targets(version=self.versions.get(role, 0) + 1, expires=self._expires(role))
            bins.targets = dict(content)
            self._write(role, Metadata(bins), versioned=True)

        snapshot = Snapshot(
            version=self.versions.get(Snapshot.type, 0) + 1, expires=self._expires(Snapshot.type)
        )
        snapshot.meta = {
            f"{role}.json": MetaFile(version=self.versions.get(role, 0))
            for role in (Targets.type, *self.succinct_roles.get_roles())
            if role in self.versions
        }
        self._write(Snapshot.type, Metadata(snapshot), versioned=True)

        timestamp = Timestamp(
            version=self.versions.get(Timestamp.type, 0) + 1,
            expires=self._expires(Timestamp.type),
            snapshot_meta=MetaFile(version=self.versions[Snapshot.type]),
        )
        self._write(Timestamp.type, Metadata(timestamp), versioned=False)

    def sign_timestamp(self, snapshot_version: int) -> None:
        """Sign the next timestamp naming `snapshot_version`: an older one is a rollback
        that only the timestamp key was needed for (what a client must still refuse)."""
        timestamp = Timestamp(
            version=self.versions[Timestamp.type] + 1,
            expires=self._expires(Timestamp.type),
            snapshot_meta=MetaFile(version=snapshot_version),
        )
        self._write(Timestamp.type, Metadata(timestamp), versioned=False)

    def rotate_root(self, role: str = Timestamp.type) -> None:
        """Publish the next root with a new key for `role`, signed by the old and new root keys.

        Clients that trust only an older root must walk ``N+1.root.json`` to
        accept metadata signed with the new key. Call `publish` afterwards.
        """
        old_root_signer = self.signers[Root.type]
        self.root.revoke_key(self.signers[role].public_key.keyid, role)
        self.signers[role] = CryptoSigner.generate_ed25519()
        self.root.add_key(self.signers[role].public_key, role)
        self.root.version += 1
        metadata = Metadata(self.root)
        metadata.sign(old_root_signer)  # the previous root's threshold
        if role == Root.type:
            metadata.sign(self.signers[Root.type], append=True)  # and the new one's
        data = metadata.to_bytes(_SERIALIZER)
        (self.directory / f"{self.root.version}.root.json").write_bytes(data)
        self.versions[Root.type] = self.root.version

    def _expires(self, role: str) -> datetime:
        if self.succinct_roles.is_delegated_role(role):
            return self.expires_by_role.get(
                role, self.expires_by_role.get(BINS_PREFIX, self.expires)
            )
        return self.expires_by_role.get(role, self.expires)

    def targets(self) -> dict[str, TargetFile]:
        """Every target the current metadata signs, by path."""
        return {path: t for content in self._bins_content.values() for path, t in content.items()}

    def _write(self, role: str, metadata: Metadata, versioned: bool) -> bytes:
        signer = self.signers[BINS_PREFIX if self.succinct_roles.is_delegated_role(role) else role]
        metadata.sign(signer)
        data = metadata.to_bytes(_SERIALIZER)
        version = metadata.signed.version
        name = f"{version}.{role}.json" if versioned else f"{role}.json"
        (self.directory / name).write_bytes(data)
        self.versions[role] = version
        return data


# --- serving ------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Files only, as a static web server serves RSTUF's storage; 404 for anything absent."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a real web server answers
    failures: dict[str, list[int]]  # URL path -> statuses to answer first, in order
    requested: list[str]  # every URL path asked, in order

    def setup(self) -> None:
        super().setup()
        # Without it keep-alive clients wait ~40 ms per answer (Nagle meets delayed ACKs).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.requested.append(self.path)
        planned = self.failures.get(self.path)
        if planned:
            self.send_error(planned.pop(0))
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(
    directory: Path,
    failures: dict[str, list[int]] | None = None,
    requested: list[str] | None = None,
) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 from a thread; yields its base URL (with a slash).

    `failures` maps a URL path (``/timestamp.json``) to the statuses answered
    to its first requests (the dict is consumed, so a test can inspect it);
    `requested` receives every URL path asked.
    """
    attributes = {"failures": failures or {}, "requested": [] if requested is None else requested}
    handler = type("Handler", (_QuietHandler,), attributes)
    handler = functools.partial(handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
