"""Benchmark a first sync, an update and the CSV into an S3 bucket against a directory.

    python -m tests.bench.bench_s3 [--projects 20000] [--events 2000] [--workdir DIR]

One bench stand-in PyPI (`tests.bench.bench_server`, pages pre-rendered) and
one SeaweedFS (`tests.seaweed.start_seaweed`, its S3 gateway on loopback, the
same machine). Each run is ``pypi_mirror.py`` (or ``generate_csv.py``) as a
subprocess, measured as in `bench_sync` (wall, CPU, peak RSS): first into
``--mirror-dir`` alone, then with ``--storage s3://mirror/bench``. The store's
requests (PUT, GET, HEAD, LIST, DELETE) are the ones ``S3Storage`` logs at
the end of each run; per page = over the project pages of that phase. The
700,000 projection scales the first sync's wall time by pages (what a first
sync's cost grows with) and its requests per page.

Prints a table, writes ``bench-results-s3.json``. Not named test_*, so pytest
does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tests.bench.bench_sync import (
    REPO,
    Run,
    machine,
    measured_pair,
    run_measured,
    running_server,
)
from tests.seaweed import start_seaweed

PYPI_PROJECTS = 700_000
_REQUESTS = re.compile(r"s3://\S+: (.+) requests$")


def mirror_command(url: str, root: Path, storage: str | None, workers: int) -> list[str]:
    command = [
        sys.executable, str(REPO / "pypi_mirror.py"), "--mirror-dir", str(root),
        "--state", str(root.parent / f"{root.name}-state.json"), "--pypi-url", url,
        "--workers", str(workers), "--no-rstuf",
    ]  # fmt: skip
    return command + (["--storage", storage] if storage else [])


def csv_command(root: Path, storage: str | None) -> list[str]:
    command = [
        sys.executable, str(REPO / "generate_csv.py"), "--mirror-dir", str(root),
        "--state", str(root.parent / f"{root.name}-state.json"),
        "--output", str(root.parent / f"{root.name}.csv"),
    ]  # fmt: skip
    return command + (["--storage", storage] if storage else [])


def store_requests(log_path: Path, since: int) -> dict[str, int]:
    """The last request tally an S3Storage logged after byte `since` of the log."""
    with open(log_path, "rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = _REQUESTS.search(line)
        if match:
            found = {}
            for part in match.group(1).split(", "):
                count, _, verb = part.partition(" ")
                if count.isdigit():
                    found[verb] = int(count)
    return found


def per_page(requests: dict[str, int], pages: int) -> dict[str, float]:
    return {verb: round(count / pages, 3) for verb, count in requests.items()} if pages else {}


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    log_path = workdir / "runs.log"
    log_path.touch()
    store = start_seaweed(workdir / "seaweed")
    os.environ.update(store.env)  # the runs inherit the AWS variables pointing at it
    bucket_url = f"s3://{store.bucket}/bench"
    rows: list[dict[str, object]] = []
    try:
        with running_server(args.projects, args.seed, args.max_files, prerender=True) as server:
            roots = {"directory": workdir / "dir", "bucket": workdir / "s3"}
            storages = {"directory": None, "bucket": bucket_url}

            def phase(name: str, commands: dict[str, list[str]]) -> None:
                for where, command in commands.items():
                    since = log_path.stat().st_size
                    (run,) = measured_pair(server, name, {where: command}, log_path)
                    made = store_requests(log_path, since) if storages[where] else {}
                    rows.append(row(run, made))

            phase("first sync", {
                where: mirror_command(server.url, roots[where], storages[where], args.workers)
                for where in roots
            })  # fmt: skip
            touched = server.churn(args.events, args.seed + 1)
            print(f"churn: {args.events} events over {len(touched)} projects", file=sys.stderr)
            phase("update", {
                where: mirror_command(server.url, roots[where], storages[where], args.workers)
                for where in roots
            })  # fmt: skip
            for where in roots:
                since = log_path.stat().st_size
                run = run_measured(where, "CSV", csv_command(roots[where], storages[where]),
                                   log_path)  # fmt: skip
                with open(roots[where].parent / f"{roots[where].name}.csv", "rb") as handle:
                    run.pages = sum(1 for _ in handle)
                rows.append(row(run, store_requests(log_path, since) if storages[where] else {}))
            same = (workdir / "dir.csv").read_bytes() == (workdir / "s3.csv").read_bytes()
    finally:
        store.process.terminate()
        store.process.wait()
    first = {r["tool"]: r for r in rows if r["phase"] == "first sync"}
    scale = PYPI_PROJECTS / args.projects
    projection = {
        where: {
            "wall_s": round(float(first[where]["wall_s"]) * scale),  # type: ignore[arg-type]
            "requests": {
                verb: round(count * scale)
                for verb, count in first[where]["store_requests"].items()  # type: ignore[union-attr]
            },
        }
        for where in first
    }
    return {
        "projects": args.projects,
        "events": args.events,
        "touched_projects": len(touched),
        "csv_identical": same,
        "runs": rows,
        "projection_700k": projection,
        "machine": machine(),
    }


def row(run: Run, made: dict[str, int]) -> dict[str, object]:
    found = asdict(run)
    found.update(
        wall_s=round(run.wall, 1),
        pages_per_s=round(run.pages / run.wall, 1) if run.wall else 0.0,
        store_requests=made,
        store_requests_per_page=per_page(made, run.pages),
    )
    print(f"  {run.phase} {run.tool}: {run.wall:.1f} s, {run.pages} pages, {made}",
          file=sys.stderr)  # fmt: skip
    return found


def table(result: dict[str, object]) -> str:
    lines = [f"{'phase':<12}{'into':<11}{'wall s':>8}{'pages':>8}{'pages/s':>9}{'CPU s':>8}"
             f"{'MiB':>6}  store requests per page"]  # fmt: skip
    for run in result["runs"]:  # type: ignore[attr-defined]
        lines.append(
            f"{run['phase']:<12}{run['tool']:<11}{run['wall_s']:>8}{run['pages']:>8}"
            f"{run['pages_per_s']:>9}{run['cpu']:>8.1f}{run['peak_rss_mib']:>6.0f}  "
            f"{run['store_requests_per_page'] or ''}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-files", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--output", type=Path, default=REPO / "bench-results-s3.json")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-s3-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result = bench(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    print(f"700,000 projection: {json.dumps(result['projection_700k'])}")
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
