"""What revalidation (--revalidate-period) costs: requests, bytes and CPU per page, measured.

Not part of the suite. A mirror of N synthetic projects is synced from the
stand-in PyPI, a share of them archived silently (no journal entry), the
revalidation clock moved back a whole period, and one run revalidates every
page: the run's CPU (user + system, this process; the stand-in runs in
another) and the bytes on the wire (counted at the stand-in: a 304's header
block against a changed page's whole answer) give the cost per page, which
the 700,000 projection multiplies out. The root-index walk that picks each
run's slice is timed on a 700,000-line root of its own.

    python -m tests.bench.bench_revalidate --projects 20000 --archive 40
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from pypi_index_mirror.mirror.roots import render_root_lines, slice_root_index
from pypi_index_mirror.mirror.state import load_state, save_state
from pypi_index_mirror.upstream.client import conditional_headers
from tests.mirror_helpers import REPO, Mirror

PYPI_SIZE = 700_000
WEEK = 7 * 86400


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def header_bytes(url: str, name: str, body: bytes | None) -> tuple[int, int]:
    """(bytes of the answer's status line and headers, of its body) for one GET."""
    extra = dict(h.split(": ", 1) for h in conditional_headers(body)) if body else {}
    response = requests.get(f"{url}/simple/{name}/", headers=extra, timeout=30)
    head = len(f"HTTP/1.1 {response.status_code} {response.reason}\r\n") + sum(
        len(k) + len(v) + 4 for k, v in response.headers.items()
    )
    return head + 2, len(response.content)


def root_walk_seconds(names: int) -> float:
    """Picking a slice from a `names`-line root index (`slice_root_index`), in seconds."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "index.html"
        members = ((f"project-{i:07d}", f"Project_{i:07d}") for i in range(names))
        with open(path, "wb") as out:
            out.writelines(render_root_lines(members))
        started = time.perf_counter()
        with open(path, "rb") as root:
            chosen, total = slice_root_index(root, "project-0350000", 4167)
        assert total == names and len(chosen) == 4167
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=20000)
    parser.add_argument("--archive", type=int, default=40, help="projects archived silently")
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_pypi", "--projects", str(args.projects),
             "--port", "0"],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            banner = next(line for line in server.stdout if "http://" in line)
            url = re.search(r"http://[0-9.:]+", banner).group(0)  # type: ignore[union-attr]
            mirror = Mirror(work / "pypi-index-mirror", work / "state.json", url)
            workers = ["--workers", str(args.workers), "-q"]
            assert mirror.run(*workers) == 0
            names = sorted(mirror.root_projects())
            archived = names[:: max(1, len(names) // args.archive)][: args.archive]
            # archive through the stand-in's control endpoint would be a bigger change to it:
            # the silent change here is made on disk instead (the mirror's copy goes stale
            # the other way round: PyPI still serves the old page), the same cost on the wire
            for name in archived:
                page = mirror.layout.project_page(name)
                page.write_bytes(page.read_bytes().replace(b"<title>", b"<title> ", 1))
            state = load_state(mirror.state)
            assert state.revalidation.at is not None
            state.revalidation = dataclasses.replace(state.revalidation, at=time.time() - WEEK)
            save_state(mirror.state, state)
            sample = names[len(names) // 2]
            held = mirror.layout.project_page(sample).read_bytes()
            not_modified_head, _ = header_bytes(url, sample, held)
            full_head, full_body = header_bytes(url, sample, None)
            before_cpu, started = cpu(), time.perf_counter()
            assert mirror.run(*workers) == 0
            run_cpu, elapsed = cpu() - before_cpu, time.perf_counter() - started
            for name in archived:
                assert b"<title> " not in mirror.layout.project_page(name).read_bytes()
        finally:
            server.terminate()
            server.wait()
    walk = root_walk_seconds(PYPI_SIZE)
    pages = len(names)
    per_page_cpu = run_cpu / pages
    per_run = {"every 5 min": PYPI_SIZE * 300 // WEEK, "hourly": PYPI_SIZE * 3600 // WEEK}
    result = {
        "projects": pages,
        "changed": len(archived),
        "run_seconds": round(elapsed, 2),
        "run_cpu_seconds": round(run_cpu, 2),
        "cpu_ms_per_page": round(per_page_cpu * 1000, 3),
        "bytes_304_answer": not_modified_head,
        "bytes_200_answer_sample": full_head + full_body,
        "root_walk_700k_seconds": round(walk, 2),
        "projection_700k_7d": {
            label: {
                "requests": count,
                "bytes_unchanged": count * not_modified_head,
                "cpu_seconds": round(count * per_page_cpu + walk, 2),
            }
            for label, count in per_run.items()
        },
        "requests_per_day_700k_7d": PYPI_SIZE // 7,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
