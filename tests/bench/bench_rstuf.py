"""Benchmark delivering a large update to an RSTUF paced like a real one.

    python -m tests.bench.bench_rstuf [--pages 10000] [--batches 1000,2500,5000,10000]
    python -m tests.bench.bench_rstuf --virtual          # RSTUF time only, in seconds of it
    python -m tests.bench.bench_rstuf --time-scale 0.1   # everything 10x faster, figures x10

An update that changes `--pages` project pages, run as ``pypi_mirror.py`` (a
subprocess, as cron runs it) against the stand-in PyPI and the stand-in RSTUF
with `Pacing.real()` (fitted to RSTUF API 1.0.1 / worker 1.0.2 on a 2-core
machine: one add of 5,000 artifacts 63.7 s to SUCCESS, its publish 1.3 s) and
2 metadata worker processes, once per `--rstuf-batch` value. Each run starts
from a copy of the same first sync, bootstrapped into a fresh RSTUF as the CSV
import does. Measured:

- ``published s``: from the run's start to the moment the stand-in finished
  the publish that made the last changed page's new state public;
- ``rstuf s``: from the first request to RSTUF to that moment;
- ``run s``: the run's wall time (it also waits for every task's SUCCESS);
- ``update s``: the mirror's own part, from the start to the first RSTUF request;
- requests: adds, publishes and task polls the stand-in answered.

With ``--virtual`` only the delivery runs, in this process, on the stand-in's
`ManualClock` (no mirror update, no wall-clock time): the same RSTUF figures
in a second, for checking the model. Writes ``--output`` (JSON).

Not named test_*, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pypi_index_mirror.mirror.state import State
from pypi_index_mirror.mirror.store import MirrorLayout
from pypi_index_mirror.rstuf.client import RstufClient
from pypi_index_mirror.rstuf.outbox import RstufDelivery, WaitBudget
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import ADD, PUBLISH, FakeRstuf, ManualClock, Pacing
from tests.mirror_helpers import mirror_view, write_owed_pages

REPO = Path(__file__).resolve().parents[2]
POLL = 2.0  # seconds: the tool's default --rstuf-poll


@dataclass
class Result:
    batch: int
    requests: int  # add requests
    publishes: int
    polls: int
    published_s: float  # run start -> every change published
    rstuf_s: float  # first RSTUF request -> every change published
    run_s: float  # the run's wall time (it also waits for every task's SUCCESS)
    exit_code: int

    @property
    def update_s(self) -> float:
        """The mirror's own part: run start -> first RSTUF request (0 in --virtual)."""
        return round(self.published_s - self.rstuf_s, 1)


def tool(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / "pypi_mirror.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def common(mirror: Path, pypi_url: str) -> list[str]:
    return ["--mirror-dir", str(mirror), "--pypi-url", pypi_url, "--xmlrpc-interval", "0", "-q"]


def changed_targets(pages: int) -> list[str]:
    return [f"simple/bench{index}/index.html" for index in range(pages)]


def measure_cli(
    base: Path, pypi: FakePyPI, pages: int, batch: int, pacing: Pacing, poll: float, work: Path
) -> Result:
    """One update of the prepared mirror against a fresh, bootstrapped, paced RSTUF."""
    mirror = work / f"batch-{batch}"
    subprocess.run(["cp", "-a", str(base), str(mirror)], check=True)
    with FakeRstuf(processes=2, pacing=pacing) as rstuf:
        rstuf.import_artifacts(mirror_view(MirrorLayout(base)))
        args = [*common(mirror, pypi.url), "--rstuf-url", rstuf.url, "--rstuf-batch", str(batch)]
        args += ["--rstuf-wait", "3600", "--rstuf-poll", str(poll)]
        started = time.monotonic()
        result = tool(args)
        run_s = time.monotonic() - started
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
        assert rstuf.view == mirror_view(MirrorLayout(mirror)), "not everything published"
        published = rstuf.published_at()
        done = max(published[target] for target in changed_targets(pages))
        first_request = min(r.at for r in rstuf.request_log)
        return result_of(
            rstuf, batch, done - started, done - first_request, run_s, result.returncode
        )


def result_of(
    rstuf: FakeRstuf, batch: int, published_s: float, rstuf_s: float, run_s: float, code: int
) -> Result:
    """A Result from the times measured and the requests the stand-in RSTUF answered."""
    return Result(
        batch,
        len([a for a in rstuf.accepted if a.action == ADD]),
        len([a for a in rstuf.accepted if a.action == PUBLISH]),
        sum(1 for r in rstuf.request_log if r.method == "GET"),
        round(published_s, 1),
        round(rstuf_s, 1),
        round(run_s, 1),
        code,
    )


def measure_virtual(pages: int, batch: int, pacing: Pacing, poll: float, work: Path) -> Result:
    """The delivery alone, in RSTUF time: `pages` owed pages on disk, one waiting delivery."""
    layout = MirrorLayout(work / f"virtual-{batch}")
    state = State(serial=1)
    state.outbox.dirty = write_owed_pages(layout, changed_targets(pages))
    clock = ManualClock()
    with (
        FakeRstuf(processes=2, pacing=pacing, clock=clock) as rstuf,
        RstufClient(rstuf.url, poll_interval=poll) as client,
    ):
        started = clock.now()
        delivery = RstufDelivery(
            state,
            layout,
            client,
            lambda: None,
            batch=batch,
            budget=WaitBudget(36000.0),
            monotonic=clock.now,
            sleep=clock.advance,
        )
        report = delivery.deliver(wait=True)
        assert not report.errors, report.errors
        assert len(rstuf.view) == pages
        done = max(rstuf.published_at().values())
        return result_of(rstuf, batch, done - started, done - started, clock.now() - started, 0)


def prepare(pypi: FakePyPI, pages: int, base: Path) -> None:
    """A first sync of `pages` projects, then a release for each: `pages` changed pages."""
    for index in range(pages):
        pypi.add_release(f"bench{index}", "1.0", files=1)
    result = tool([*common(base, pypi.url), "--no-rstuf"])
    assert result.returncode == 0, result.stderr
    for index in range(pages):
        pypi.add_release(f"bench{index}", "2.0", files=1)


def print_table(results: list[Result], scale: float, virtual: bool) -> None:
    unit = " (RSTUF time)" if virtual else ""
    print(f"\n{'batch':>6} {'adds':>5} {'publishes':>9} {'polls':>6} {'update s':>9} "
          f"{'rstuf s':>8} {'published s':>12} {'run s':>7}{unit}")  # fmt: skip
    for r in results:
        figures = [f / scale for f in (r.update_s, r.rstuf_s, r.published_s, r.run_s)]
        print(
            f"{r.batch:>6} {r.requests:>5} {r.publishes:>9} {r.polls:>6} {figures[0]:>9.1f} "
            f"{figures[1]:>8.1f} {figures[2]:>12.1f} {figures[3]:>7.1f}"
        )
    if scale != 1:
        print(f"(measured at --time-scale {scale}; seconds shown scaled back by 1/{scale})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--batches", default="1000,2500,5000,10000")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--virtual", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("bench-results-rstuf.json"))
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    pacing, poll = Pacing.real().scaled(args.time_scale), POLL * args.time_scale
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-rstuf-") as tmp:
        work = Path(tmp)
        if args.virtual:
            results = [measure_virtual(args.pages, b, pacing, poll, work) for b in batches]
        else:
            with FakePyPI() as pypi:
                base = work / "base"
                prepare(pypi, args.pages, base)
                for batch in batches:
                    results.append(measure_cli(base, pypi, args.pages, batch, pacing, poll, work))
                    print(f"batch {batch}: {results[-1]}", flush=True)
    print_table(results, args.time_scale, args.virtual)
    document = {
        "pages": args.pages,
        "worker_processes": 2,
        "pacing": asdict(Pacing.real()),
        "time_scale": args.time_scale,
        "virtual": args.virtual,
        "poll_s": POLL,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "results": [{**asdict(r), "update_s": r.update_s} for r in results],
    }
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
