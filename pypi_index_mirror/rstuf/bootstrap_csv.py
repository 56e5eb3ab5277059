#!/usr/bin/env python3
"""Write the CSV that bootstraps RSTUF with every page the mirror serves.

Run once, after the first full sync of ``pypi_mirror.py`` has finished and
before its RSTUF updates are switched on::

    python3 generate_csv.py --mirror-dir pypi-index-mirror --output artifacts.csv
    rstuf admin import-artifacts --db-uri postgresql://... --csv artifacts.csv

One row per TUF target, no header, the root indexes first and then the
projects sorted by directory name, as ``mirror.store.iter_targets`` yields
them (two runs over the same mirror produce identical files); with PEP 691
JSON pages (``--simple-format json|all``) each form is its own target::

    index.html;5210;blake2b-256;<64 hex digits>;
    simple/index.v1_json;6120;blake2b-256;<64 hex digits>;
    simple/numpy/index.html;183211;blake2b-256;<64 hex digits>;
    simple/numpy/index.v1_json;250113;blake2b-256;<64 hex digits>;

Why every row ends with ``;``: the released RSTUF CLI (repository-service-tuf
1.0.0b1) parses each line with ``line.split(";")`` and keeps the newline in
the last field, so without the trailing ``;`` every registered hash would end
in ``"\\n"`` and no TUF client could verify a page. The newer CLI reads the
file with ``csv.reader(f, delimiter=";")`` and uses columns 0-3, so to it the
trailing ``;`` is an ignored, empty fifth column. With it, both import the
same four values.

Paths are POSIX and relative to ``<mirror-dir>/pypi_mirror/`` (the served
tree), exactly the targets ``mirror.store.iter_targets`` lists: the roots
``index.html`` and ``simple/index.v1_json``, and each
``simple/<normalized>/index.html`` and ``index.v1_json`` (those the mirror
holds). Hash-prefixed
consistent-snapshot copies, temp files and everything else are not targets.
Sizes and hashes come from the bytes on disk through
``mirror.store.digest_file``, the same function ``pypi_mirror.py`` uses for
the artifacts it sends RSTUF later, so the two can never disagree. The hash
is always blake2b-256: a TUF client with consistent snapshots downloads the
copy named by a target's hash, and the mirror names its copies by blake2b-256,
so a CSV of another hash would register pages no client could download.

The run holds the mirror lock throughout, so a sync cannot change pages
while they are read, and it reports the changelog serial the CSV matches:
updates sent to RSTUF after the import must start from that serial.

Exit codes: 0 written, 1 failed (I/O error, mirror not ready, bad output
path), 2 usage error, 3 the mirror is locked by a running sync, 130
interrupted. An unsuccessful run leaves no CSV and no temp file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pypi_index_mirror.mirror.safety import locate_state, state_elsewhere
from pypi_index_mirror.mirror.state import State, load_state
from pypi_index_mirror.mirror.store import (
    JSON_ROOT_TARGET,
    ROOT_TARGET,
    TUF_HASH_ALGORITHM,
    FileDigest,
    MirrorLayout,
    atomic_file,
    digest_file,
    iter_targets,
    mirror_lock,
    readable_mode,
)
from pypi_index_mirror.ops import settings
from pypi_index_mirror.ops.cli import (
    EXIT_FAILED,
    EXIT_OK,
    VERSION,
    Stopped,
    ToolError,
    configure_logging,
    io_error_line,
    number,
    run_cli,
)
from pypi_index_mirror.ops.options import OPTIONS, Option, path_value
from pypi_index_mirror.ops.settings import DEFAULTS
from pypi_index_mirror.sync.parallel import EXECUTORS, make_executor, ordered_map, usable_cpus

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = "artifacts.csv"
STDOUT = "-"

# Pages handed to a worker at once. Every task costs the parent (which also
# walks the tree) ~0.2 ms in the executor's machinery, so a full mirror wants
# big batches (measured: 64 pages 3.8 s, 256 3.0 s, 2048 2.7 s for 200,000
# pages); batches start small and double so a mirror of a few hundred pages
# still spreads over every core.
FIRST_BATCH_SIZE = 32
LARGEST_BATCH_SIZE = 2048
# Batches submitted but not yet written, per worker. Bounds memory (the rows
# are written in order, so one slow batch, e.g. a page of several MB, holds
# back the others) while keeping every worker busy.
BATCHES_IN_FLIGHT_PER_WORKER = 4

# Measured on the 200,000-page benchmark (tests/bench/bench_csv.py): processes
# beat threads because opening and reading small files holds the GIL.
DEFAULT_EXECUTOR = "processes"

# A field must survive both importers: no ';' (the separator), no quote (the
# csv module's quotechar), no line break or other control character.
_SAFE_FIELD = re.compile(r"[^;\"\x00-\x1f\x7f]+")


# --- errors ------------------------------------------------------------------


class CsvError(ToolError):
    """The CSV cannot be produced; the message tells the operator what to do."""


class MirrorNotReady(CsvError):
    """The mirror is missing or its first sync has not finished."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class OutputInServedTree(CsvError):
    """The CSV would be written where the mirror serves files to the world."""

    def __init__(self, output: Path, served_dir: Path) -> None:
        super().__init__(
            f"refusing to write {output} inside the served tree {served_dir}: "
            "the CSV would be published as a mirror file; choose a path outside it"
        )
        self.output = output
        self.served_dir = served_dir


class UnsafeTargetPath(CsvError):
    """A target path that would corrupt the CSV (';', a quote or a line break)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"target path {path!r} cannot be written to the CSV; "
            "move that directory out of the served tree"
        )
        self.path = path

    def __reduce__(self):  # raised in worker processes, so it must survive pickling
        return (type(self), (self.path,))


# --- pure functions ----------------------------------------------------------


def format_row(path: str, digest: FileDigest) -> str:
    """One CSV row: ``path;size;hash-type;hash;`` and a newline.

    The trailing ``;`` is deliberate (see the module docstring). Raises
    UnsafeTargetPath for a path either importer would misread.
    """
    if not _SAFE_FIELD.fullmatch(path):
        raise UnsafeTargetPath(path)
    return f"{path};{digest.length};{digest.algorithm};{digest.hexdigest};\n"


def growing_batches(items: Iterable[str], first: int, largest: int) -> Iterator[tuple[str, ...]]:
    """Group `items` lazily into tuples of `first`, then twice that, ... up to `largest`.

    The last tuple may be shorter; none is empty.
    """
    size = first
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield tuple(batch)
            batch = []
            size = min(size * 2, largest)
    if batch:
        yield tuple(batch)


def is_inside(path: Path, directory: Path) -> bool:
    """Whether `path` is `directory` or below it, after resolving symlinks."""
    path, directory = path.resolve(), directory.resolve()
    return path == directory or path.is_relative_to(directory)


@dataclass(frozen=True)
class Options:
    """What one run does, as parsed from the command line."""

    mirror_dir: Path
    state_path: Path
    output: Path | None  # None: standard output
    workers: int
    executor: str  # one of EXECUTORS
    state_given: bool = True  # False: the default state file (the previous default's may be around)
    storage: str | None = None  # s3://BUCKET[/PREFIX]: the served tree is there (--storage)


@dataclass(frozen=True)
class Summary:
    """What a successful run wrote."""

    serial: int  # the changelog serial the CSV matches
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


# --- I/O ---------------------------------------------------------------------


def check_mirror_exists(layout: MirrorLayout) -> None:
    """Raise MirrorNotReady unless the mirror and its served tree exist.

    Checked before taking the lock, because taking it would create the
    directory the lock lives in.
    """
    if layout.root.exists() and not layout.root.is_dir():
        raise MirrorNotReady(layout.root, "not a directory (check --mirror-dir)")
    if not layout.root.is_dir():
        raise MirrorNotReady(layout.root, "no such mirror directory (check --mirror-dir)")
    if not layout.served_dir.is_dir():
        raise MirrorNotReady(
            layout.served_dir, "missing; run pypi_mirror.py until its first sync finishes"
        )


def check_output_path(output: Path, layout: MirrorLayout, state_path: Path) -> None:
    """Raise unless `output` can be replaced by a file and is not served to the world."""
    if is_inside(output, layout.served_dir):
        raise OutputInServedTree(output, layout.served_dir)
    if output.resolve() == state_path.resolve():
        raise CsvError(f"--output {output} is the state file; choose another path")
    if output.is_dir():
        raise CsvError(f"--output {output} is a directory; name the CSV file to write")
    if not output.parent.is_dir():
        raise CsvError(f"--output {output}: directory {output.parent} does not exist")


def read_finished_state(layout: MirrorLayout, state_path: Path, check_roots: bool = True) -> State:
    """The mirror's state, whose serial is the changelog serial it is at.

    Raises MirrorNotReady unless the first sync finished, or StateError for a
    state file that cannot be trusted.
    """
    if not state_path.exists():
        elsewhere = state_elsewhere(state_path, layout)
        raise MirrorNotReady(
            state_path,
            "no state file, so the first sync has not finished "
            "(check --state, or run pypi_mirror.py until it finishes)"
            if elsewhere is None
            else f"no state file; {elsewhere} is one: give --state {elsewhere}",
        )
    state = load_state(state_path)
    if state.serial is None or state.full_sync_in_progress:
        what = "the first sync" if state.serial is None else "a full sync (--full-check)"
        raise MirrorNotReady(
            state_path, f"{what} has not finished; run pypi_mirror.py until it does"
        )
    if state.root_stale:
        # The root page would be imported without the projects added last.
        raise MirrorNotReady(
            state_path,
            "the root index.html lags the project pages (a run was interrupted); "
            "run pypi_mirror.py once to rebuild it",
        )
    roots = [layout.root_page, layout.json_root_page]  # HTML, PEP 691 JSON (--simple-format)
    if check_roots and not any(root.is_file() for root in roots):
        raise MirrorNotReady(
            layout.root_page,
            "missing although the state says the first sync finished; "
            "run pypi_mirror.py to rewrite it",
        )
    return state


def rows_for_batch(served_dir: str, targets: Sequence[str], algorithm: str) -> str:
    """Digest a batch of targets and return their CSV rows, in order.

    Runs in a worker (top-level so it pickles): formatting here too leaves the
    parent, which also walks the tree, nothing per page but the write. A read
    error is re-raised naming the file (a failed read(2) does not).
    """
    rows = []
    for target in targets:
        path = os.path.join(served_dir, target)
        try:
            digest = digest_file(path, algorithm)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
        rows.append(format_row(target, digest))
    return "".join(rows)


def iter_rows(
    served_dir: Path,
    targets: Iterable[str],
    algorithm: str,
    executor: Executor,
    window: int,
) -> Iterator[tuple[int, str]]:
    """Yield (row count, CSV text) per batch of targets, in the order of `targets`.

    At most `window` batches are submitted and not yet yielded, so memory
    stays flat however many pages the mirror has.
    """
    served = str(served_dir)
    batches = growing_batches(targets, FIRST_BATCH_SIZE, LARGEST_BATCH_SIZE)
    calls = ((served, batch, algorithm) for batch in batches)
    for (_, batch, _), rows in ordered_map(executor, rows_for_batch, calls, window):
        yield len(batch), rows


@contextlib.contextmanager
def atomic_text_output(path: Path) -> Iterator[TextIO]:
    """Write `path` as UTF-8 text through `mirror.store.atomic_file` (a temp file beside
    it, fsync, rename): no reader ever sees half a CSV, and the CSV of 700,000 pages
    is streamed, never held in memory. Readable by others: whoever imports it."""
    prefix = f".{path.name}.tmp-"
    with atomic_file(path, path.parent, prefix, mode=readable_mode()) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # the raw handle is atomic_file's to close


def emit_rows(chunks: Iterable[tuple[int, str]], output: Path | None, stdout: TextIO) -> int:
    """`write_rows` to `output` atomically (`atomic_text_output`), or to `stdout` (None)."""
    if output is None:
        count = write_rows(stdout, chunks)
        stdout.flush()
        return count
    with atomic_text_output(output) as handle:
        return write_rows(handle, chunks)


def write_rows(handle: TextIO, chunks: Iterable[tuple[int, str]]) -> int:
    """Write each chunk of rows; return how many rows were written."""
    total = 0
    for count, text in chunks:
        handle.write(text)
        total += count
    return total


def generate(options: Options, stdout: TextIO) -> Summary:
    """Check the mirror, hold its lock, and write the CSV; return what was written.

    Raises MirrorNotReady, OutputInServedTree, UnsafeTargetPath, MirrorLocked,
    StateError or OSError; on any of them no CSV is left behind.
    """
    layout = MirrorLayout(options.mirror_dir)
    if options.storage:
        return generate_from_store(options, layout, stdout)
    check_mirror_exists(layout)
    if options.output is not None:
        check_output_path(options.output, layout, options.state_path)
    started = time.monotonic()
    with mirror_lock(layout.lock_path):
        state_path = locate_state(options.state_path, options.state_given, layout)
        state = read_finished_state(layout, state_path)
        serial = state.serial
        assert serial is not None  # read_finished_state refuses a mirror without one
        log.info(
            "the CSV matches changelog serial %d: updates after the import must start "
            "from serial %d",
            serial,
            serial,
        )
        if state.pending:
            log.warning(
                "%d projects are pending (their pages lag serial %d, e.g. %s); the CSV "
                "has their pages as they are on disk, and the next sync sends RSTUF "
                "their updates",
                len(state.pending),
                serial,
                ", ".join(sorted(state.pending)[:3]),
            )
        window = options.workers * BATCHES_IN_FLIGHT_PER_WORKER
        executor = make_executor(options.executor, options.workers, preload=[__name__])
        try:
            chunks = iter_rows(
                layout.served_dir, iter_targets(layout), TUF_HASH_ALGORITHM, executor, window
            )
            count = emit_rows(chunks, options.output, stdout)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    return Summary(serial=serial, rows=count, seconds=time.monotonic() - started)


def generate_from_store(options: Options, layout: MirrorLayout, stdout: TextIO) -> Summary:
    """`generate` for a tree in a bucket (--storage): rows from its listing, not its bytes.

    A page's blake2b-256 is in its hash-prefixed copy's name, and the copy
    with the page's ETag (MD5) and size is the page's: two LIST requests per
    1,000 pages, plus a GET for each root (and for a page without its copy).
    The state, the lock and the output stay local.
    """
    from pypi_index_mirror.mirror.storage import iter_stored_digests, open_storage

    if not layout.root.is_dir():
        raise MirrorNotReady(layout.root, "no such mirror directory (check --mirror-dir)")
    if options.output is not None:
        check_output_path(options.output, layout, options.state_path)
    storage = open_storage(options.storage, layout, DEFAULTS.retries, DEFAULTS.backoff)
    started = time.monotonic()
    with contextlib.closing(storage), mirror_lock(layout.lock_path):
        state = read_finished_state(layout, options.state_path, check_roots=False)
        marker = storage.read_marker()
        if marker != state.mirror_id:
            raise MirrorNotReady(
                options.state_path,
                f"names mirror {state.mirror_id}, but {storage.describe()} holds "
                f"{'no mirror' if marker is None else 'mirror ' + marker}: check --storage",
            )
        digests = iter_stored_digests(storage)
        first = next(digests, None)
        if first is None or first[0] not in (ROOT_TARGET, JSON_ROOT_TARGET):
            raise MirrorNotReady(
                layout.root_page,
                f"no root index in {storage.describe()} although the state says the first "
                "sync finished; run pypi_mirror.py to rewrite it",
            )
        rows = (
            (1, format_row(path, FileDigest(size, TUF_HASH_ALGORITHM, digest)))
            for path, size, digest in itertools.chain([first], digests)
        )
        count = emit_rows(rows, options.output, stdout)
    assert state.serial is not None
    return Summary(serial=state.serial, rows=count, seconds=time.monotonic() - started)


# --- command line ------------------------------------------------------------


# checked as every path option is (an empty one is refused); a str: '-' is standard output
OUTPUT_OPTION = Option("output", "", lambda text: str(path_value(text)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="generate_csv.py",
        description=(
            "Write the CSV that `rstuf admin import-artifacts` reads to bootstrap RSTUF "
            "with every page the mirror serves. Rows are 'path;size;hash-type;hash;' with "
            "NO header, the roots first, then projects sorted by name. The trailing "
            "';' lets both the released CLI (1.0.0b1, line.split(';'), which would keep "
            "the newline in the hash without it) and the newer csv.reader one (columns "
            "0-3) import the same values."
        ),
        epilog=(
            "--mirror-dir, --state and --storage are read like pypi_mirror.py reads them "
            "(environment PYPI_MIRROR_MIRROR_DIR, PYPI_MIRROR_STATE, PYPI_MIRROR_STORAGE, the "
            "--config file; its other keys are pypi_mirror.py's and ignored here). "
            "Exit codes: 0 written, 1 failed (I/O error, mirror not ready), 2 usage error, "
            "3 mirror locked by a running sync, 130 interrupted."
        ),
    )
    # The mirror and its state come from pypi_mirror.py's own settings (flags,
    # PYPI_MIRROR_* variables, the same --config file), so the two always agree.
    settings.add_config_argument(parser)
    settings.add_options(
        parser, [o for o in OPTIONS if o.key in ("mirror-dir", "state", "storage")]
    )
    parser.add_argument(
        "--output",
        type=settings.argparse_type(OUTPUT_OPTION),
        default=DEFAULT_OUTPUT,
        help="CSV to write atomically, '-' for standard output; must not be inside "
        "the served tree (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=number(int, 1, 256),
        default=usable_cpus(),
        help="parallel hashing workers (default: the CPUs this process may use, %(default)s)",
    )
    # For measuring (tests/bench/bench_csv.py), not for operators.
    parser.add_argument(
        "--executor", choices=EXECUTORS, default=DEFAULT_EXECUTOR, help=argparse.SUPPRESS
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="also log debug detail")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log only problems")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    return parser


def parse_options(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Options:
    paths = settings.mirror_config(args, environ)
    return Options(
        mirror_dir=paths.mirror_dir,
        state_path=paths.state_file,
        output=None if args.output == STDOUT else Path(args.output),
        workers=args.workers,
        executor=args.executor,
        state_given=paths.state_path is not None,
        storage=paths.storage,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (errors are mapped in `run_cli`)."""
    configure_logging(False, False)
    return run_cli(log, lambda: run(build_parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    configure_logging(args.verbose, args.quiet)
    options = parse_options(args)
    log.debug(
        "mirror %s, state %s, %d %s",
        options.mirror_dir,
        options.state_path,
        options.workers,
        options.executor,
    )
    incomplete = "the output is incomplete" if options.output is None else "no CSV was written"
    try:
        summary = generate(options, sys.stdout)
    except BrokenProcessPool as exc:
        log.error("a hashing worker process died (%s); %s", exc, incomplete)
        return EXIT_FAILED
    except BrokenPipeError:
        if options.output is not None:
            raise
        # Whoever read stdout went away; keep Python's exit-time flush quiet.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        log.error("standard output was closed before the CSV was complete")
        return EXIT_FAILED
    except OSError as exc:
        log.error("%s; %s", io_error_line(exc), incomplete)
        return EXIT_FAILED
    except (KeyboardInterrupt, Stopped):
        log.error("interrupted; %s", incomplete)
        raise
    destination = "standard output" if options.output is None else str(options.output)
    log.info(
        "wrote %d rows (%s) to %s in %.1f s, %.0f rows/s; import them, then start "
        "RSTUF updates from serial %d",
        summary.rows,
        TUF_HASH_ALGORITHM,
        destination,
        summary.seconds,
        summary.rows_per_second,
        summary.serial,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
