"""The audit: every page the mirror serves held against the targets RSTUF's TUF metadata signs.

The invariant the mirror exists for is *every page a client downloads is the
page TUF signs*. An audit checks it the way a TUF client would see it:

1. RSTUF's metadata is fetched and verified with python-tuf, from a trusted
   root file, on every run (``audit.metadata``);
2. each bin's targets are compared with the pages on disk that hash into the
   same bin (``mirror.store.iter_targets``), and with the hash-prefixed copy a
   client with consistent snapshots downloads; each difference is one
   ``KIND PATH`` line (``audit.compare``).

This module runs one audit, streaming: bins are fetched by a few threads (one
urllib3 pool each) a window ahead, and each group of bins is verified and
compared in a worker process (``parallel``, the pool ``generate_csv.py`` hashes
with) together with the pages that hash into it; only the page paths (packed
per bin) and the bins in flight are held at once. At 700,000 targets in 16,384
bins see docs/audit.md for time and memory.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from tuf.api.metadata import Metadata, MetaFile, SuccinctRoles, Targets

from pypi_index_mirror.audit.compare import (
    KINDS,
    Difference,
    Listed,
    SignedTarget,
    compare,
    listed_disk_facts,
    read_disk_facts,
)
from pypi_index_mirror.audit.metadata import (
    AuditConfig,
    MetadataReader,
    bin_meta,
    signed_targets,
    split_misplaced,
    succinct_roles_of,
    verify_bin,
)
from pypi_index_mirror.http.environment import HttpEnvironment
from pypi_index_mirror.mirror.store import MirrorLayout, iter_targets
from pypi_index_mirror.sync.parallel import make_executor, ordered_map

log = logging.getLogger(__name__)

# A group of bins handed to one worker holds about this many pages and targets:
# big enough that the pool's per-task cost (~0.3 ms in the parent) stays small
# next to hashing, small enough that every worker gets work on a small mirror.
GROUP_ITEMS = 256
GROUP_MAX_BINS = 64


@dataclass
class GroupReport:
    """What one worker found in its group of bins."""

    differences: list[Difference] = field(default_factory=list)
    targets: int = 0
    misplaced: list[str] = field(default_factory=list)  # targets in a bin not theirs


@dataclass
class AuditReport:
    """The whole audit's counts; `line()` is its summary."""

    targets: int = 0
    pages: int = 0
    bins: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    misplaced: int = 0
    elapsed: float = 0.0

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        counts = " ".join(f"{kind}={self.counts[kind]}" for kind in KINDS)
        return (
            f"summary targets={self.targets} pages={self.pages} bins={self.bins} {counts} "
            f"elapsed={self.elapsed:.1f}s"
        )


class BinWork(NamedTuple):
    """One bin's share of the audit, as handed to a worker."""

    role: str
    meta: MetaFile | None  # None: the top-level targets' own (already verified) targets
    data: bytes | None  # the bin's metadata as fetched
    pages: bytes  # the pages on disk that hash into this bin, packed (`unpack_paths`)
    top_level: dict[str, SignedTarget]  # top-level targets in this bin: a client finds these first


@functools.lru_cache(maxsize=4)
def _delegator(targets_bytes: bytes) -> tuple[Targets, SuccinctRoles | None]:
    """Parse the verified top-level targets once per worker (they are sent as bytes)."""
    targets = Metadata[Targets].from_bytes(targets_bytes).signed
    delegations = targets.delegations
    return targets, delegations.succinct_roles if delegations else None


def audit_group(
    served_dir: str | dict[str, Listed],
    targets_bytes: bytes,
    reference_time: datetime,
    group: tuple[BinWork, ...],
) -> GroupReport:
    """Verify a group of bins and compare each with its pages on disk (runs in a worker).

    `targets_bytes` is the top-level targets metadata the parent verified.
    Raises MetadataRejected (a bin fails verification) or OSError (a page
    cannot be read).
    """
    delegator, succinct = _delegator(targets_bytes)
    report = GroupReport()
    for work in group:
        if work.data is None or work.meta is None or succinct is None:
            signed: dict[str, SignedTarget] = {}
        else:
            verified = verify_bin(work.data, work.role, work.meta, delegator, reference_time)
            signed, misplaced = split_misplaced(signed_targets(verified), work.role, succinct)
            report.misplaced.extend(misplaced)
        signed.update(work.top_level)
        paths = set(unpack_paths(work.pages)) | signed.keys()
        if isinstance(served_dir, dict):  # a bucket's listing (--storage)
            on_disk = {p: listed_disk_facts(served_dir.get(p), signed.get(p)) for p in paths}
        else:
            on_disk = {p: read_disk_facts(served_dir, p, signed.get(p)) for p in paths}
        report.differences.extend(compare(signed, on_disk))
        report.targets += len(signed)
    return report


class PagesByBin:
    """The page paths on disk, grouped by the bin a client looks each up in.

    Each bin's paths are packed into one buffer of NUL-separated file-system
    bytes (a NUL cannot occur in a path): at 700,000 pages that is ~25 MB,
    where a list of str per bin would be ~65 MB. Without bins, one group.
    """

    def __init__(self, succinct: SuccinctRoles | None, roles: list[str]) -> None:
        self.succinct = succinct
        self._position = {role: position for position, role in enumerate(roles)}
        self._packed = [bytearray() for _ in roles] if succinct else [bytearray()]
        self.count = 0

    def position(self, path: str) -> int:
        if self.succinct is None:
            return 0
        return self._position[self.succinct.get_role_for_target(path)]

    def add_all(self, paths: Iterable[str]) -> PagesByBin:
        for path in paths:
            self._packed[self.position(path)] += os.fsencode(path) + b"\0"
            self.count += 1
        return self

    def take(self, position: int) -> bytes:
        """The packed paths of one bin, released here (each bin is handed on once)."""
        packed, self._packed[position] = bytes(self._packed[position]), bytearray()
        return packed


def unpack_paths(packed: bytes) -> list[str]:
    """The paths `PagesByBin.take` packed."""
    return [os.fsdecode(path) for path in packed.split(b"\0")[:-1]]


def group_work(work: Iterable[BinWork]) -> Iterator[tuple[BinWork, ...]]:
    """Bundle consecutive bins into tasks of about GROUP_ITEMS pages, in order."""
    group: list[BinWork] = []
    items = 0
    for item in work:
        group.append(item)
        items += item.pages.count(0) + len(item.top_level) + 1
        if items >= GROUP_ITEMS or len(group) >= GROUP_MAX_BINS:
            yield tuple(group)
            group, items = [], 0
    if group:
        yield tuple(group)


def audit(
    config: AuditConfig,
    layout: MirrorLayout,
    emit: Callable[[Difference], None],
    environment: HttpEnvironment | None = None,
    listing: Iterable[tuple[str, int, str, dict[str, int]]] | None = None,
) -> AuditReport:
    """Compare the served tree with every target RSTUF's metadata signs.

    Calls `emit` with each difference, in bin order and by path within a bin,
    as they are found (so memory does not grow with them). Raises AuditError
    when the audit cannot run (metadata unreachable or failing verification;
    `listing`: the served tree is a bucket's, as ``storage.audit_listing``
    yields it, and no page is read here;
    differences of the bins before it were emitted, none of the bin that
    failed), or OSError when a page cannot be read. `environment`: the run's HTTP
    environment (the process environment's by default).
    """
    started = time.monotonic()
    report = AuditReport()
    with MetadataReader(config, environment) as reader:
        trusted = reader.top_level()
        reference_time = config.now()
        succinct = succinct_roles_of(trusted.targets)
        roles = list(succinct.get_roles()) if succinct else []
        metas = [bin_meta(trusted.snapshot, role) for role in roles]
        top_level = signed_targets(trusted.targets)
        listed: dict[str, Listed] | None = None
        if listing is not None:
            listed = {
                path: Listed(size, digest, None if copies == {digest: size} else copies)
                for path, size, digest, copies in listing
            }
        paths = iter_targets(layout, ordered=False) if listed is None else iter(listed)
        pages = PagesByBin(succinct, roles).add_all(paths)
        report.pages, report.bins = pages.count, len(roles)
        log.info(
            "auditing %d pages against %d bins at %s", report.pages, len(roles), reader.base_url
        )
        fetch_pool = ThreadPoolExecutor(config.fetch_workers, thread_name_prefix="tuf-fetch")
        hash_pool = make_executor(config.executor, config.hash_workers, preload=[__name__])
        try:
            if succinct is None:
                work: Iterable[BinWork] = [
                    BinWork(Targets.type, None, None, pages.take(0), top_level)
                ]
            else:
                fetched = ordered_map(
                    fetch_pool,
                    reader.fetch,
                    (
                        (role, meta, trusted.root.consistent_snapshot)
                        for role, meta in zip(roles, metas, strict=True)
                    ),
                    config.fetch_workers * 4,
                )
                work = _bin_work(fetched, pages, top_level)
            served = os.fspath(layout.served_dir)
            tasks = (
                (
                    served if listed is None else _listed_of(listed, group),
                    trusted.targets_bytes,
                    reference_time,
                    group,
                )
                for group in group_work(work)
            )
            for _, found in ordered_map(hash_pool, audit_group, tasks, config.hash_workers * 4):
                report.targets += found.targets
                for path in found.misplaced[: max(0, 3 - report.misplaced)]:  # the first few
                    log.warning("target %s is listed in a bin a client never reads for it", path)
                report.misplaced += len(found.misplaced)
                for difference in found.differences:
                    report.counts[difference.kind] += 1
                    emit(difference)
        finally:
            hash_pool.shutdown(wait=True, cancel_futures=True)
            fetch_pool.shutdown(wait=True, cancel_futures=True)
    if report.misplaced:
        log.warning("%d targets are listed in bins that do not hold their path", report.misplaced)
    report.elapsed = time.monotonic() - started
    return report


def _listed_of(listed: dict[str, Listed], group: tuple[BinWork, ...]) -> dict[str, Listed]:
    """The listed pages of a group's bins: what its worker compares (sent, not shared)."""
    return {path: listed[path] for work in group for path in unpack_paths(work.pages)}


def _bin_work(
    fetched: Iterable[tuple[tuple[str, MetaFile, bool | None], bytes]],
    pages: PagesByBin,
    top_level: dict[str, SignedTarget],
) -> Iterator[BinWork]:
    """Pair each fetched bin with its pages on disk and the top-level targets in its range."""
    top_by_bin: dict[int, dict[str, SignedTarget]] = {}
    for path, target in top_level.items():  # RSTUF signs none at the top: usually empty
        top_by_bin.setdefault(pages.position(path), {})[path] = target
    for position, ((role, meta, _), data) in enumerate(fetched):
        yield BinWork(role, meta, data, pages.take(position), top_by_bin.get(position, {}))
