"""Benchmark generate_csv.py against ``find | xargs -P <cores> b2sum -l 256``.

    python -m tests.bench.bench_csv [--pages 200000] [--workdir DIR] [--rounds 3]

Builds (or reuses) a synthetic mirror of N project pages with realistic sizes
(log-normal around a few KB, a tail of pages of several MB, like the simple
pages of projects with thousands of files), with the hash-prefixed copies
hard-linked beside each page as pypi_mirror.py leaves them. Then, on a warm
page cache (each command runs once untimed first), times generate_csv.py as a
subprocess with process workers and with thread workers, and the b2sum
pipeline over the same pages, checks that the CSV's hashes equal b2sum's,
prints a table and writes a JSON result file.

The goal is generate_csv.py no slower than 1.5x the b2sum pipeline. The module
is not named test_*, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pypi_index_mirror.mirror.state import State, save_state
from pypi_index_mirror.mirror.store import MirrorLayout, digest_bytes, prefixed_name, project_target

REPO = Path(__file__).resolve().parents[2]
GENERATE_CSV = REPO / "generate_csv.py"
GOAL_RATIO = 1.5
BENCH_SERIAL = 24_000_000
MARKER = "bench-mirror.json"
MARKER_FORMAT = 1

# Page sizes: log-normal with a median of MEDIAN_PAGE bytes, clipped, plus one
# page in TAIL_EVERY drawn from TAIL_RANGE (numpy's, boto3's pages are MBs).
MEDIAN_PAGE = 2500
SIGMA = 1.1
MIN_PAGE, MAX_PAGE = 350, 1 << 20
TAIL_EVERY = 5000
TAIL_RANGE = (1 << 20, 6 << 20)
SYLLABLES = ("py", "django", "flask", "data", "net", "tool", "lib", "az", "aws", "ml", "x")


@dataclass(frozen=True)
class Timing:
    """One command's timed runs over the same mirror."""

    name: str
    command: str
    seconds: list[float]  # one per round, warm cache

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# --- building the synthetic mirror -------------------------------------------


def page_size(rng: random.Random) -> int:
    if rng.randrange(TAIL_EVERY) == 0:
        return rng.randrange(*TAIL_RANGE)
    size = int(rng.lognormvariate(math.log(MEDIAN_PAGE), SIGMA))
    return max(MIN_PAGE, min(MAX_PAGE, size))


def project_page(name: str, size: int, rng: random.Random) -> bytes:
    """A PEP 503/691-shaped HTML page of about `size` bytes."""
    head = (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        '    <meta name="pypi:repository-version" content="1.1">\n'
        f"    <title>Links for {name}</title>\n  </head>\n  <body>\n"
        f"    <h1>Links for {name}</h1>\n"
    )
    tail = "  </body>\n</html>\n"
    parts = [head]
    length = len(head) + len(tail)
    release = 0
    while length < size:
        release += 1
        digest = rng.randbytes(32).hex()
        blob = rng.randbytes(30).hex()
        file = f"{name}-{release}.{rng.randrange(20)}.{rng.randrange(9)}.tar.gz"
        line = (
            f'    <a href="https://files.pythonhosted.org/packages/{blob[:2]}/{blob[2:4]}/'
            f'{blob[4:]}/{file}#sha256={digest}" data-requires-python="&gt;=3.8" '
            f'data-dist-info-metadata="sha256={digest[::-1]}">{file}</a><br />\n'
        )
        parts.append(line)
        length += len(line)
    parts.append(tail)
    return "".join(parts).encode()


def project_names(count: int, rng: random.Random) -> list[str]:
    """`count` distinct normalized names (letters, digits, '-')."""
    return [f"{rng.choice(SYLLABLES)}{rng.choice(SYLLABLES)}-{i:x}" for i in range(count)]


def write_page(directory: Path, data: bytes) -> None:
    """The page and its blake2b-prefixed hard link, as pypi_mirror.py leaves them."""
    page = directory / "index.html"
    page.write_bytes(data)
    os.link(page, directory / prefixed_name(digest_bytes(data).hexdigest))


def build_mirror(workdir: Path, pages: int, seed: int) -> tuple[Path, Path]:
    """Return (mirror dir, state file), building them unless a matching build exists."""
    mirror, state = workdir / "pypi-index-mirror", workdir / "state.json"
    marker = workdir / MARKER
    wanted = {"format": MARKER_FORMAT, "pages": pages, "seed": seed}
    try:
        if json.loads(marker.read_text()) == wanted:
            print(f"reusing the {pages}-page mirror in {mirror}", file=sys.stderr)
            return mirror, state
    except (OSError, ValueError):
        pass
    marker.unlink(missing_ok=True)
    shutil.rmtree(mirror, ignore_errors=True)
    print(f"building a {pages}-page mirror in {mirror} ...", file=sys.stderr)
    started = time.monotonic()
    rng = random.Random(seed)
    layout = MirrorLayout(mirror)
    layout.simple_dir.mkdir(parents=True)
    names = project_names(pages, rng)
    total = 0
    for number, name in enumerate(names, 1):
        directory = layout.project_dir(name)
        directory.mkdir()
        data = project_page(name, page_size(rng), rng)
        write_page(directory, data)
        total += len(data)
        if number % 20000 == 0:
            print(f"  {number} pages, {total / 1e6:.0f} MB", file=sys.stderr)
    root_lines = [
        f'    <a href="/{project_target(name)[: -len("index.html")]}">{name}</a>\n'
        for name in sorted(names)
    ]
    root = "<!DOCTYPE html>\n<html>\n  <body>\n" + "".join(root_lines) + "  </body>\n</html>\n"
    write_page(layout.served_dir, root.encode())
    total += len(root)
    save_state(state, State(serial=BENCH_SERIAL))
    marker.write_text(json.dumps(wanted))
    print(
        f"built {pages + 1} pages, {total / 1e6:.0f} MB, in {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    return mirror, state


# --- timing ------------------------------------------------------------------


def generate_command(
    mirror: Path, state: Path, output: Path, workers: int, executor: str
) -> list[str]:
    return [
        sys.executable,
        str(GENERATE_CSV),
        "--mirror-dir",
        str(mirror),
        "--state",
        str(state),
        "--output",
        str(output),
        "--workers",
        str(workers),
        "--executor",
        executor,
        "-q",
    ]


def run_generate(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def run_b2sum(served_dir: Path, workers: int, output: Path) -> float:
    """Time ``find DIR -name index.html -print0 | xargs -0 -P N b2sum -l 256``."""
    started = time.perf_counter()
    with open(output, "wb") as sink:
        find = subprocess.Popen(
            ["find", str(served_dir), "-name", "index.html", "-print0"], stdout=subprocess.PIPE
        )
        xargs = subprocess.run(
            ["xargs", "-0", "-P", str(workers), "b2sum", "-l", "256"],
            stdin=find.stdout,
            stdout=sink,
            check=True,
        )
        assert find.stdout is not None
        find.stdout.close()
        if find.wait() != 0 or xargs.returncode != 0:
            raise RuntimeError("the find | xargs b2sum pipeline failed")
    return time.perf_counter() - started


def check_same_hashes(csv_path: Path, b2sum_path: Path, served_dir: Path) -> int:
    """Assert the CSV and b2sum agree on every page; return the page count."""
    prefix = str(served_dir) + "/"
    b2sum = {}
    for line in b2sum_path.read_text().splitlines():
        digest, path = line.split("  ", 1)
        b2sum[path.removeprefix(prefix)] = digest
    rows = {}
    for line in csv_path.read_text().splitlines():
        path, _size, algorithm, digest, empty = line.split(";")
        assert algorithm == "blake2b-256" and empty == "", line
        rows[path] = digest
    if rows != b2sum:
        raise AssertionError(
            f"CSV and b2sum disagree: {len(rows.keys() ^ b2sum.keys())} paths differ, "
            f"{sum(rows[p] != b2sum.get(p) for p in rows)} hashes differ"
        )
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_csv", description=__doc__)
    parser.add_argument("--pages", type=int, default=200_000, help="project pages to mirror")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pypi-mirror-bench-csv",
        help="where the synthetic mirror is built and reused (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each command")
    parser.add_argument("--seed", type=int, default=503)
    parser.add_argument(
        "--result", type=Path, default=Path("bench-results-csv.json"), help="JSON result file"
    )
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    mirror, state = build_mirror(args.workdir, args.pages, args.seed)
    served = MirrorLayout(mirror).served_dir
    csv_path, b2sum_path = args.workdir / "artifacts.csv", args.workdir / "b2sum.out"

    commands = {
        "generate_csv (processes)": generate_command(
            mirror, state, csv_path, args.workers, "processes"
        ),
        "generate_csv (threads)": generate_command(
            mirror, state, csv_path, args.workers, "threads"
        ),
    }
    b2sum_name = f"find | xargs -0 -P {args.workers} b2sum -l 256"

    # Untimed warm-up: fills the page cache (and checks both agree).
    run_b2sum(served, args.workers, b2sum_path)
    for command in commands.values():
        run_generate(command)
    rows = check_same_hashes(csv_path, b2sum_path, served)

    seconds: dict[str, list[float]] = {name: [] for name in [b2sum_name, *commands]}
    for _ in range(args.rounds):  # interleaved, so drift in the machine hits all alike
        seconds[b2sum_name].append(run_b2sum(served, args.workers, b2sum_path))
        for name, command in commands.items():
            seconds[name].append(run_generate(command))
    timings = [
        Timing(b2sum_name, b2sum_name, seconds[b2sum_name]),
        *(Timing(name, " ".join(commands[name]), seconds[name]) for name in commands),
    ]
    baseline = timings[0].best

    print(f"\n{rows} pages ({args.pages} projects + root), {args.workers} workers, warm cache")
    print(f"{'command':<34} {'best s':>8} {'median s':>9} {'rows/s':>9} {'vs b2sum':>9}")
    for timing in timings:
        print(
            f"{timing.name:<34} {timing.best:>8.2f} {timing.median:>9.2f} "
            f"{rows / timing.best:>9.0f} {timing.best / baseline:>8.2f}x"
        )
    ratio = timings[1].best / baseline
    verdict = "meets" if ratio <= GOAL_RATIO else "MISSES"
    print(f"generate_csv (processes) {verdict} the goal: {ratio:.2f}x <= {GOAL_RATIO}x")

    result = {
        "benchmark": "generate_csv",
        "pages": args.pages,
        "rows": rows,
        "workers": args.workers,
        "rounds": args.rounds,
        "cache": "warm",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "goal_ratio": GOAL_RATIO,
        "ratio": round(ratio, 3),
        "meets_goal": ratio <= GOAL_RATIO,
        "timings": [
            {
                **asdict(timing),
                "best": round(timing.best, 3),
                "median": round(timing.median, 3),
                "rows_per_second": round(rows / timing.best),
                "vs_b2sum": round(timing.best / baseline, 3),
            }
            for timing in timings
        ],
    }
    args.result.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
