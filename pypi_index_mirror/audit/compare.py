"""The served tree held against the signed targets: what is on disk, and each difference.

Each difference is one ``KIND PATH`` line:

- ``unsigned``: a page on disk that no target signs;
- ``mismatch``: a page whose length or hashes differ from its target;
- ``missing``: a target with no page on disk;
- ``copy-missing``: a target whose hash-prefixed copy ``<dir>/<first hash>.<basename>``
  (what a TUF client with consistent snapshots downloads) is missing or holds other bytes.

Pure functions over small records, and the reads of the disk (or of a bucket's
listing) the comparison needs; they run in the audit's worker processes and in
the repair, which checks each path it rewrote. No python-tuf here: what TUF
signs for a path arrives as a `SignedTarget` (``audit.metadata`` makes them).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from pypi_index_mirror.mirror.store import HASH_FACTORIES, TUF_HASH_ALGORITHM, digest_file

log = logging.getLogger(__name__)


UNSIGNED = "unsigned"
MISMATCH = "mismatch"
MISSING = "missing"
COPY_MISSING = "copy-missing"
KINDS = (UNSIGNED, MISMATCH, MISSING, COPY_MISSING)


class SignedTarget(NamedTuple):
    """What TUF signs for one path: its length and hashes, in the metadata's order."""

    length: int
    hashes: tuple[tuple[str, str], ...]  # (algorithm, hex digest); never empty

    @property
    def copy_digest(self) -> str:
        """The hex digest a consistent-snapshot client prefixes to the file name: the first."""
        return self.hashes[0][1]


class FileFacts(NamedTuple):
    """What was read from one file on disk."""

    length: int
    hashes: dict[str, str]  # algorithm -> hex digest, for the algorithms asked for


class DiskFacts(NamedTuple):
    """What was read from disk for one target path."""

    page: FileFacts | None  # None: no regular file at the path
    copy: FileFacts | None  # the copy named by the target's first hash; None: none


NO_FILE = DiskFacts(None, None)


class Difference(NamedTuple):
    kind: str  # one of KINDS
    path: str
    signed: SignedTarget | None = None  # what the metadata signs for `path`, if anything

    def line(self) -> str:
        return f"{self.kind} {self.path}"


def copy_path(path: str, hexdigest: str) -> str:
    """The hash-prefixed name a TUF client downloads `path` from (consistent snapshots)."""
    directory, slash, basename = path.rpartition("/")
    return f"{directory}{slash}{hexdigest}.{basename}"


def is_safe_target(path: str) -> bool:
    """Whether `path` names a file inside the served tree (signed paths are still input)."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def matches(target: SignedTarget, facts: FileFacts) -> bool:
    """Whether the file has the target's length and every hash it lists.

    A hash whose algorithm was not computed (one this tool cannot compute) does
    not match: the mirror cannot vouch for it.
    """
    if facts.length != target.length:
        return False
    return all(facts.hashes.get(algorithm) == digest for algorithm, digest in target.hashes)


def differences(path: str, target: SignedTarget | None, disk: DiskFacts) -> list[Difference]:
    """The differences of one path. A missing page is only `missing`: nothing else to compare."""
    if target is None:
        return [Difference(UNSIGNED, path)] if disk.page is not None else []
    if disk.page is None:
        return [Difference(MISSING, path, target)]
    found = []
    if not matches(target, disk.page):
        found.append(Difference(MISMATCH, path, target))
    if disk.copy is None or not matches(target, disk.copy):
        found.append(Difference(COPY_MISSING, path, target))
    return found


def compare(
    signed: Mapping[str, SignedTarget], on_disk: Mapping[str, DiskFacts]
) -> list[Difference]:
    """Every difference between signed targets and what was read from disk, sorted by path.

    A path absent from `on_disk` has no file.
    """
    found = []
    for path in sorted(signed.keys() | on_disk.keys()):
        found.extend(differences(path, signed.get(path), on_disk.get(path, NO_FILE)))
    return found


def _read_file(path: str, algorithms: Iterable[str]) -> tuple[os.stat_result, FileFacts] | None:
    """Stat and hash a regular file; None if there is none (a directory counts as none)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    hashes, length = {}, info.st_size
    for algorithm in algorithms:
        digest = digest_file(path, algorithm)
        hashes[algorithm], length = digest.hexdigest, digest.length
    return info, FileFacts(length, hashes)


def read_disk_facts(served_dir: str, path: str, target: SignedTarget | None) -> DiskFacts:
    """Read what the comparison needs for `path`: its page and, if signed, its copy.

    An unsigned page is only stat'ed (nothing to compare its bytes with). The
    copy is the file named by the target's first hash; when it is the page's
    own inode (the mirror hard-links them) it is not read twice.
    """
    if not is_safe_target(path):
        return NO_FILE
    if target is None:
        found = _read_file(f"{served_dir}/{path}", ())
        return DiskFacts(found[1] if found else None, None)
    algorithms = {TUF_HASH_ALGORITHM}
    algorithms.update(a for a, _ in target.hashes if a in HASH_FACTORIES)
    found = _read_file(f"{served_dir}/{path}", sorted(algorithms))
    page_info, page = found if found else (None, None)
    copy_file = f"{served_dir}/{copy_path(path, target.copy_digest)}"
    try:
        copy_info = os.stat(copy_file)
    except (FileNotFoundError, NotADirectoryError):
        return DiskFacts(page, None)
    if page_info is not None and os.path.samestat(copy_info, page_info):
        return DiskFacts(page, page)
    copy = _read_file(copy_file, sorted(algorithms))
    return DiskFacts(page, copy[1] if copy else None)


class Listed(NamedTuple):
    """A page as a bucket's listing shows it (``--storage``): no byte of it is read here."""

    length: int
    digest: str  # blake2b-256
    # the digest in each copy's name -> the copy's length; None: only the page's own copy
    # (the usual case, kept as None: 700,000 pages are held at once)
    copies: dict[str, int] | None


def listed_disk_facts(listed: Listed | None, target: SignedTarget | None) -> DiskFacts:
    """`read_disk_facts` from a listing: the page's blake2b-256, and the copy the target names.

    Only blake2b-256 is known (the mirror names copies by it, and it is all
    the mirror sends RSTUF); a target that lists another hash does not match.
    """
    if listed is None:
        return NO_FILE
    page = FileFacts(listed.length, {TUF_HASH_ALGORITHM: listed.digest})
    if target is None:
        return DiskFacts(FileFacts(listed.length, {}), None)
    copies = listed.copies if listed.copies is not None else {listed.digest: listed.length}
    length = copies.get(target.copy_digest)
    if length is None:
        return DiskFacts(page, None)
    return DiskFacts(page, FileFacts(length, {TUF_HASH_ALGORITHM: target.copy_digest}))
