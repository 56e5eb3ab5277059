"""Benchmark the audit at PyPI's size: 700,000 targets in 16,384 succinct hash bins.

    python -m tests.bench.bench_audit [--targets 700000] [--bins 16384] [--workdir DIR]

Builds (or reuses, keyed by its parameters) in the work directory:

- a synthetic served tree: ``index.html`` plus one small page per project
  (a few hundred bytes: the audit's cost is per file, and at 4 KiB a block the
  tree already takes ~6 GB), each with its hash-prefixed hard link as
  ``pypi_mirror.py`` leaves them;
- RSTUF-shaped TUF metadata signing exactly those pages, built with python-tuf
  (``tests.tuf_repo``: consistent snapshots, ed25519, every bin signed).

Then serves the metadata over loopback (``tests.tuf_repo.serve_directory``:
``http.server`` threads in this process, TCP_NODELAY, keep-alive) and runs
the audit in a subprocess, ``--rounds`` times on a warm page cache: wall
time; CPU (user + system) of the audit's process and of all its processes
(its hashing workers are children of multiprocessing's fork server, so
wait4 never sees them: sampled from /proc), and of the metadata server
(this process); peak RSS of the audit's own process (its
``resource.getrusage``) and of its largest worker (VmHWM). The machine's
load average is recorded too: on a shared machine wall time says little
without it. Prints one line per round and writes a JSON result file. The
module is not named test_*, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tuf.api.metadata import TargetFile

from pypi_index_mirror.audit import compare as audit_compare
from pypi_index_mirror.audit import metadata as tuf_metadata
from pypi_index_mirror.audit import tuf as tuf_audit
from pypi_index_mirror.mirror.state import State, save_state
from pypi_index_mirror.mirror.store import (
    ROOT_TARGET,
    MirrorLayout,
    digest_bytes,
    prefixed_name,
    project_target,
)
from tests.tuf_repo import TufRepository, serve_directory

REPO = Path(__file__).resolve().parents[2]
MARKER = "bench-audit.json"
RSS_LINE = "bench-peak-rss-kib"
MARKER_FORMAT = 1
BENCH_SERIAL = 24_000_000


@dataclass
class Round:
    wall: float  # seconds
    cpu: float  # user + system seconds of the audit's own process (sampled)
    tree_cpu: float  # the same, summed over the audit and all its descendants
    audit_peak_rss_mib: float  # the audit's own process (its getrusage RUSAGE_SELF)
    worker_peak_rss_mib: float  # VmHWM of its largest descendant (a worker), sampled
    returncode: int
    stdout_tail: str
    load_before: float  # 1-minute load average when the round started (2 cores here)
    server_cpu: float  # user + system seconds the metadata server (this process) spent


# --- building -----------------------------------------------------------------------


def page(name: str, rng: random.Random) -> bytes:
    """A small simple page for `name` (a few hundred bytes)."""
    digest = rng.randbytes(32).hex()
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.1">\n'
        f"    <title>Links for {name}</title>\n  </head>\n  <body>\n"
        f'    <a href="https://files.pythonhosted.org/packages/{name}-1.0.tar.gz#sha256={digest}">'
        f"{name}-1.0.tar.gz</a><br />\n  </body>\n</html>\n<!--SERIAL {BENCH_SERIAL}-->\n"
    ).encode()


def write_page(directory: Path, data: bytes) -> str:
    """Write the page and its blake2b-prefixed hard link; return the hex digest."""
    hexdigest = digest_bytes(data).hexdigest
    path = directory / "index.html"
    path.write_bytes(data)
    os.link(path, directory / prefixed_name(hexdigest))
    return hexdigest


def bin_index(path: str, bit_length: int) -> int:
    """The succinct bin of `path` (python-tuf's SuccinctRoles.get_role_for_target)."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") >> (32 - bit_length)


def build(workdir: Path, targets: int, bins: int, seed: int) -> tuple[Path, Path, Path]:
    """Return (mirror dir, metadata dir, trusted root), building them unless cached."""
    mirror, metadata = workdir / "pypi-index-mirror", workdir / "metadata"
    root_file = workdir / "trusted-root.json"
    marker = workdir / MARKER
    wanted = {"format": MARKER_FORMAT, "targets": targets, "bins": bins, "seed": seed}
    try:
        if json.loads(marker.read_text()) == wanted:
            print(f"reusing {targets} targets in {bins} bins in {workdir}", file=sys.stderr)
            return mirror, metadata, root_file
    except (OSError, ValueError):
        pass
    marker.unlink(missing_ok=True)
    shutil.rmtree(mirror, ignore_errors=True)
    shutil.rmtree(metadata, ignore_errors=True)
    started = time.monotonic()
    bit_length = bins.bit_length() - 1
    by_bin: list[list[tuple[str, int, str]]] = [[] for _ in range(bins)]
    layout = MirrorLayout(mirror)
    layout.simple_dir.mkdir(parents=True)
    rng = random.Random(seed)
    print(f"writing {targets} pages into {mirror} ...", file=sys.stderr)
    for number in range(targets - 1):  # the root index is the last target
        name = f"project-{number:x}"
        directory = layout.project_dir(name)
        directory.mkdir()
        data = page(name, rng)
        path = project_target(name)
        by_bin[bin_index(path, bit_length)].append((path, len(data), write_page(directory, data)))
        if (number + 1) % 100_000 == 0:
            print(f"  {number + 1} pages, {time.monotonic() - started:.0f} s", file=sys.stderr)
    root = b"<!DOCTYPE html>\n<html><body>synthetic root index</body></html>\n"
    by_bin[bin_index(ROOT_TARGET, bit_length)].append(
        (ROOT_TARGET, len(root), write_page(layout.served_dir, root))
    )
    save_state(mirror.parent / "state.json", State(serial=BENCH_SERIAL))  # beside the mirror
    written = time.monotonic()
    print(f"signing {bins} bins into {metadata} ...", file=sys.stderr)
    repo = TufRepository(metadata, number_of_bins=bins)
    repo.expires = repo.expires.replace(year=repo.expires.year + 1)  # a cached build lasts
    repo.publish_bins(_bin_contents(repo, by_bin))
    root_file.write_bytes(repo.root_bytes)
    marker.write_text(json.dumps(wanted))
    print(
        f"built in {time.monotonic() - started:.0f} s "
        f"(pages {written - started:.0f} s, metadata {time.monotonic() - written:.0f} s)",
        file=sys.stderr,
    )
    return mirror, metadata, root_file


def _bin_contents(
    repo: TufRepository, by_bin: list[list[tuple[str, int, str]]]
) -> Iterator[tuple[str, dict[str, TargetFile]]]:
    for position, role in enumerate(repo.succinct_roles.get_roles()):
        entries, by_bin[position] = by_bin[position], []
        yield (
            role,
            {
                path: TargetFile(length, {"blake2b-256": digest}, path)
                for path, length, digest in entries
            },
        )


# --- measuring -------------------------------------------------------------------------


class TreeSampler(threading.Thread):
    """Samples VmHWM and CPU time of a process and its descendants from /proc until stopped.

    The pool's workers are children of multiprocessing's fork server, not of
    the audit, so wait4 never accounts for them; sampling every `interval`
    seconds loses at most that much CPU per process.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, int] = {}  # pid -> kB
        self.cpu: dict[int, float] = {}  # pid -> seconds (user + system)
        self._done = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self._done.wait(self.interval):
            for pid in [self.pid, *self._descendants()]:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                except OSError:
                    continue
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / self._tick
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]))

    def _descendants(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    fields = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2]
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields.split()[1])
        found, frontier = [], [self.pid]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, ppid in parents.items() if ppid == parent]
            found.extend(children)
            frontier.extend(children)
        return found

    def stop(self) -> None:
        self._done.set()
        self.join()


def audit_command(mirror: Path, metadata_url: str, root_file: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.bench.bench_audit",
        "--child",
        json.dumps(
            {
                "mirror": str(mirror),
                "metadata_url": metadata_url,
                "root": str(root_file),
                "workers": workers,
            }
        ),
    ]


def run_child(spec: str) -> int:
    """The audit alone in this process, as the measured subprocess."""
    options = json.loads(spec)
    config = tuf_metadata.AuditConfig(
        options["metadata_url"], Path(options["root"]), hash_workers=options["workers"]
    )
    counts: dict[str, int] = {}

    def emit(difference: audit_compare.Difference) -> None:
        counts[difference.kind] = counts.get(difference.kind, 0) + 1
        print(difference.line())

    report = tuf_audit.audit(config, MirrorLayout(Path(options["mirror"])), emit)
    print(report.line())
    print(f"{RSS_LINE} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
    return 0 if report.differences == 0 else 4


def measure(command: list[str]) -> Round:
    load_before = os.getloadavg()[0]
    server_started = time.process_time()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    sampler = TreeSampler(process.pid)
    sampler.start()
    assert process.stdout is not None
    lines = process.stdout.read().splitlines()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    sampler.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    own = [int(line.split()[1]) for line in lines if line.startswith(RSS_LINE)]
    lines = [line for line in lines if not line.startswith(RSS_LINE)]
    return Round(
        wall=wall,
        cpu=sampler.cpu.get(process.pid, usage.ru_utime + usage.ru_stime),
        audit_peak_rss_mib=(own[0] if own else usage.ru_maxrss) / 1024,
        worker_peak_rss_mib=max(
            (kib for pid, kib in sampler.peaks.items() if pid != process.pid), default=0
        )
        / 1024,
        tree_cpu=sum(sampler.cpu.values()),
        load_before=load_before,
        server_cpu=time.process_time() - server_started,
        returncode=process.returncode,
        stdout_tail="\n".join(lines[-3:]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_audit", description=__doc__)
    parser.add_argument("--targets", type=int, default=700_000, help="targets, root included")
    parser.add_argument("--bins", type=int, default=16_384, help="succinct hash bins (2**n)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pypi-mirror-bench-audit",
        help="where the tree and metadata are built and reused (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=458)
    parser.add_argument("--result", type=Path, default=Path("bench-results-audit.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child)

    args.workdir.mkdir(parents=True, exist_ok=True)
    mirror, metadata, root_file = build(args.workdir, args.targets, args.bins, args.seed)
    rounds = []
    with serve_directory(metadata) as metadata_url:
        command = audit_command(mirror, metadata_url, root_file, args.workers)
        for number in range(args.rounds):
            result = measure(command)
            rounds.append(result)
            print(
                f"round {number + 1}: exit {result.returncode}, {result.wall:.1f} s wall, "
                f"{result.cpu:.1f} s CPU (audit process), {result.tree_cpu:.1f} s CPU (with its "
                f"workers), server {result.server_cpu:.1f} s CPU, load {result.load_before:.1f}, "
                f"peak RSS: audit process "
                f"{result.audit_peak_rss_mib:.0f} MiB, largest worker "
                f"{result.worker_peak_rss_mib:.0f} MiB\n"
                f"  {result.stdout_tail}",
                file=sys.stderr,
            )
    best = min(rounds, key=lambda r: r.wall)
    print(
        f"\naudit of {args.targets} targets in {args.bins} bins, {args.workers} workers: "
        f"best {best.wall:.1f} s wall, {best.tree_cpu:.1f} s CPU (all processes), peak RSS "
        f"{max(r.audit_peak_rss_mib for r in rounds):.0f} MiB (audit process), "
        f"{max(r.worker_peak_rss_mib for r in rounds):.0f} MiB (largest worker)"
    )
    document = {
        "benchmark": "audit",
        "targets": args.targets,
        "bins": args.bins,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "rounds": [asdict(r) for r in rounds],
    }
    args.result.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
