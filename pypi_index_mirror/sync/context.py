"""The run context: what every phase of a run shares, handed to each explicitly.

A run's phases (``source``, ``full_sync``, ``update``, ``refresh``, ``roots``,
``delivery``, ``revalidation``, and ``audit.repair``) are separate objects; each
is given this one `RunContext` rather than seeing the whole `Sync`. It holds the
settings and clients, the state and the writer (both replaced when state.json is
read: phases always read them from here, never keep their own), the summary, the
halt and breaker, where the run stands (the state read, the identity verdict, the
signal-safe section entered), and the helpers more than one phase needs: the
durable save, the signal-safe section, the root's members streamed. What one phase
hands the next travels in calls and return values instead (a refresh's `Refreshed`
tells the roots' merge what moved). The run's lifecycle (lock, identity, status,
stops) is `sync.run.Sync`'s.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pypi_index_mirror.mirror.formats import HTML, SIMPLE_FORMATS
from pypi_index_mirror.mirror.roots import iter_json_root, iter_root_index, slice_root_index
from pypi_index_mirror.mirror.safety import (
    CircuitBreaker,
    Halt,
    Verdict,
    canonical_url,
    write_marker,
)
from pypi_index_mirror.mirror.state import State, save_state
from pypi_index_mirror.mirror.store import JSON_ROOT_TARGET, ROOT_TARGET, MirrorLayout, crash_point
from pypi_index_mirror.mirror.writer import MirrorWriter
from pypi_index_mirror.ops.cli import deferred_stops
from pypi_index_mirror.ops.progress import Progress
from pypi_index_mirror.ops.settings import Config
from pypi_index_mirror.upstream.client import PypiClient

if TYPE_CHECKING:  # RSTUF's client (and requests) load only when a run uses RSTUF
    from pypi_index_mirror.mirror.storage import Storage
    from pypi_index_mirror.rstuf import client as rstuf_client

log = logging.getLogger(__name__)
# The one line every run ends with, whatever its exit; INFO even under -q (see `main`).
summary_log = log.getChild("summary")  # kept at INFO under -q


@dataclass
class Summary:
    """The one line every run ends with, whatever its exit (see `main`)."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    requests: int = 0
    rstuf_sent: int = 0  # artifacts this run sent to RSTUF
    rstuf_confirmed: int = 0  # paths RSTUF confirmed in this run, whichever run sent them
    rstuf_not_found: int = 0  # deletes RSTUF answered with not_found_artifacts (see deliver)
    rstuf_waited: float = 0.0  # seconds spent on RSTUF, out of --rstuf-wait
    serial_before: int | None = None
    serial_after: int | None = None
    upstream_serial: int | None = None  # PyPI's last serial, as this run saw it
    upstream_seen: float | None = None  # when (epoch seconds)
    elapsed: float = 0.0
    pending: int | None = None  # projects still to fetch; None: the state was not read
    outbox: int | None = None  # paths owed to RSTUF
    exit: int | None = None
    dry_run: bool = False
    would_fetch: int | None = None  # a dry run: pages a real run would fetch
    started: bool = False  # a sync began (not --help, --version)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        unknown = "?"
        mode = "dry-run " if self.dry_run else ""
        if self.would_fetch is not None:
            mode += f"would_fetch={self.would_fetch} "
        return (
            f"summary {mode}added={self.added} updated={self.updated} removed={self.removed} "
            f"unchanged={self.unchanged} failed={self.failed} requests={self.requests} "
            f"rstuf_sent={self.rstuf_sent} rstuf_confirmed={self.rstuf_confirmed} "
            f"rstuf_not_found={self.rstuf_not_found} rstuf_waited={self.rstuf_waited:.1f}s "
            f"elapsed={self.elapsed:.1f}s "
            f"serial={self.serial_before}->{self.serial_after} "
            f"pending={unknown if self.pending is None else self.pending} "
            f"outbox={unknown if self.outbox is None else self.outbox} exit={self.exit}"
        )


class RunContext:
    """What one run's phases share (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        pypi: PypiClient,
        rstuf: rstuf_client.RstufClient | None,
        progress: Progress,
        out: Callable[[str], None] = print,
        summary: Summary | None = None,
        halt: Halt | None = None,
    ) -> None:
        self.config = config
        self.layout = MirrorLayout(config.mirror_dir)
        self.upstream = canonical_url(config.pypi_url)
        self.pypi = pypi
        self.rstuf = rstuf
        self.progress = progress
        self.out = out
        self.summary = summary or Summary()
        self.summary.dry_run = config.dry_run
        self.state = State()
        self.state_file = config.state_file  # where it is read (see locate_state)
        self.writer = MirrorWriter(self.layout, self.state)
        self.forms = SIMPLE_FORMATS[config.simple_format]
        self.filter = config.project_filter
        self.quarantined_on_disk: set[str] = set()  # listed, current on disk, quarantined
        self.storage: Storage | None = None  # --storage: the served tree's store (bucket)
        # Where the run stands (`sync.run.Sync` moves it on; its stop and error handling,
        # the status record and --watch's next cycle read it):
        self.loaded = False  # self.state is the state file's, read (whatever the verdict)
        self.identity: Verdict | None = None  # state, mirror, upstream belong together
        self.marker_owed = False  # the verdict found no marker: the next save writes it first
        self.applying = False  # in `applying_changes` (still, if a stop cut it): no save then
        self.breaker = CircuitBreaker(config.failure_limit)
        self.halt = halt or Halt()  # the PypiClient's retry pauses should wait on it too
        self.untracked = 0  # pages a full sync still owes that state.pending does not list

    def make_writer(self) -> MirrorWriter:
        """The writer for the served tree: on disk, or in the --storage bucket (opened once)."""
        if not self.config.storage:
            return MirrorWriter(self.layout, self.state)
        # only with --storage: a directory mirror never loads the store's code (or boto3)
        from pypi_index_mirror.mirror.storage import StoreWriter, open_storage

        if self.storage is None:
            self.storage = open_storage(
                self.config.storage, self.layout, self.config.retries, self.config.backoff
            )
        return StoreWriter(self.layout, self.state, self.storage)

    @property
    def form_words(self) -> tuple[str, ...]:
        return tuple(form.word for form in self.forms)

    def pending_count(self) -> int:
        return len(self.state.pending) + self.untracked

    def save(self, why: str = "") -> None:
        """Write state.json (not in a dry run); `why` names the moment for the crash tests.

        The marker goes first, so a state never names an id its mirror lacks.
        """
        if self.config.dry_run:
            return
        if self.marker_owed:
            if self.storage is None:
                write_marker(self.layout, self.state.mirror_id or "")
            else:
                self.storage.write_marker(self.state.mirror_id or "")
            self.marker_owed = False
        crash_point("state-save", (why,))
        save_state(self.state_file, self.state)

    @property
    def owes_rstuf(self) -> bool:
        """Whether changes are kept for RSTUF (everything but --no-rstuf)."""
        return not self.config.no_rstuf

    def owed_for_plan(self) -> set[str]:
        """What a dry run lists as sent to RSTUF: nothing under --no-rstuf."""
        return self.state.outbox.dirty if self.owes_rstuf else set()

    def target_exists(self, target: str) -> bool:
        return self.writer.target_exists(target)

    @contextlib.contextmanager
    def applying_changes(self) -> Iterator[None]:
        """Fetching and writing, up to the serial's move: a signal winds it down, never cuts it.

        A first SIGINT/SIGTERM stops the fetching at once (like the circuit
        breaker: the rest stays pending); the pages fetched are written, the
        root index and the serial follow, and only then is `Stopped` raised,
        at a point where the state in memory is consistent and is saved. A
        second signal cuts the section short and leaves `applying` set: the
        state in memory may be mid-batch then, so the one saved last stands
        (`Sync.save_after_stop`).
        """
        with deferred_stops():
            self.applying = True
            yield
            self.applying = False

    def iter_root_members(self) -> Iterator[tuple[str, str]]:
        """(normalized, display) of every project the mirror lists, streamed from its root."""
        if HTML in self.forms and self.writer.target_exists(ROOT_TARGET):
            with self.writer.open_target(self.layout.root_page) as current:
                yield from iter_root_index(current)
        elif self.writer.target_exists(JSON_ROOT_TARGET):
            with self.writer.open_target(self.layout.json_root_page) as current:
                for name, (display, _serial) in iter_json_root(current):
                    yield name, display

    def root_slice(self, after: str, count: int) -> tuple[list[tuple[str, str]], int]:
        """The revalidation's slice of the root's members after `after` (`slice_root_index`,
        in blocks): from the HTML root when the mirror has one, else from the JSON root."""
        if HTML in self.forms and self.writer.target_exists(ROOT_TARGET):
            with self.writer.open_target(self.layout.root_page) as current:
                return slice_root_index(current, after, count)
        if self.writer.target_exists(JSON_ROOT_TARGET):
            with self.writer.open_target(self.layout.json_root_page) as current:
                return slice_root_index(current, after, count, json_root=True)
        return [], 0

    def allowed_local(self, excluded: set[str] | None = None) -> Iterator[str]:
        """The projects on disk the filter allows, streamed; those it excludes go to `excluded`."""
        for name in self.writer.local_projects():
            if self.filter.allows(name):
                yield name
            elif excluded is not None:
                excluded.add(name)
