"""Benchmark pypi_mirror.py's sync (and generate_csv.py) side by side with bandersnatch.

    python -m tests.bench.bench_sync [--projects 100000] [--events 2000] [--workdir DIR]
    python -m tests.bench.bench_sync --rss-listing 700000      # peak RSS at PyPI's size
    python -m tests.bench.bench_sync --projects 5000 --latency 20,50   # pages/s by --workers
    python -m tests.bench.bench_sync --update-slope 500,2000,4000   # an update's CPU a page

One stand-in PyPI (`tests.bench.bench_server`, in its own process, every page
pre-rendered) serves a synthetic index of N projects with
`FakePyPI.populate`'s page mix (most pages 1-20 files, a few KB; a long tail
to 8,000 files, several MB). Measured, each tool run as a subprocess (wall,
user+system CPU and peak RSS from wait4):

1. the stand-in's own ceiling (http.client keep-alive loops, 4 threads), for
   the simple pages we fetch and for the JSON API bandersnatch fetches;
2. first sync: ``pypi_mirror.py``, then ``bandersnatch mirror`` (index only:
   ``release-files = false``, ``simple-format = ALL``, ``workers = 10``);
3. an update after ``churn(K events)``, touching M distinct projects: both
   tools again, with the requests each made, counted by the stand-in;
4. ``generate_csv.py`` over our mirror (compare it with b2sum in
   ``tests.bench.bench_csv``).

Prints a table, writes ``bench-results-sync.json``. bandersnatch lives in its
own venv (see ``tests/bench/README.md``); without it, only our rows are
measured. With ``--rss-listing N``, only our first sync runs, against a
stand-in of N projects whose pages hold one file (a listing of PyPI's size
with pages of a few hundred bytes), to show the memory the listing costs.

With ``--update-slope K1,K2,...``, one first sync is kept aside and updates
of growing churn (K1 events, then K2 in all, ...) each run from a copy of it:
the CPU they add per changed page (the slope between the smallest and the
largest) is an update's cost a page without its fixed part (start-up, the
changelog call, the root's rewrite), which a few thousand pages cannot hide.

Not named test_*, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import configparser
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pypi_index_mirror.mirror.store import normalize_name
from pypi_index_mirror.ops import settings

REPO = Path(__file__).resolve().parents[2]
BANDERSNATCH = REPO / ".bench-venv" / "bin" / "bandersnatch"
RSS_GOAL_MIB = 128
THROUGHPUT_GOAL = 3.0
CEILING_THREADS = 4
CEILING_SECONDS = 3.0
BANDERSNATCH_MAX_WORKERS = 10  # bandersnatch refuses more


@dataclass
class Run:
    """One measured subprocess."""

    tool: str
    phase: str
    wall: float  # seconds
    cpu: float  # user + system seconds of the process (and any children it waited for)
    peak_rss_mib: float  # the largest process's (wait4)
    returncode: int
    peak_pss_mib: float = 0.0  # the process and its children together (PssSampler)
    cpu_system: float = 0.0  # the system part of `cpu`: mostly the filesystem's, for a mirror
    pages: int = 0  # project pages (or JSON API documents) requested
    requests: dict[str, int] = field(default_factory=dict)

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.wall if self.wall else 0.0

    @property
    def cpu_ms_per_page(self) -> float:
        return 1000 * self.cpu / self.pages if self.pages else 0.0

    @property
    def system_ms_per_page(self) -> float:
        return 1000 * self.cpu_system / self.pages if self.pages else 0.0


# --- the stand-in ----------------------------------------------------------------------------


class Server:
    """The bench stand-in's process and the few control calls the benchmark needs."""

    def __init__(self, projects: int, seed: int, max_files: int, prerender: bool) -> None:
        command = [
            sys.executable, "-m", "tests.bench.bench_server", "--projects", str(projects),
            "--seed", str(seed), "--max-files", str(max_files),
        ]  # fmt: skip
        if prerender:
            command.append("--prerender")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("the bench stand-in did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def _call(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())

    def counts(self) -> dict[str, int]:
        counts = self._call("/_bench/counts")
        assert isinstance(counts, dict)
        return counts

    def reset_counts(self) -> None:
        self._call("/_bench/reset", "POST")

    def set_latency(self, ms: float) -> None:
        """Hold every answer `ms` milliseconds from now on (see bench_server)."""
        self._call(f"/_bench/latency?ms={ms}", "POST")

    def churn(self, events: int, seed: int) -> set[str]:
        """Apply `events` changes; return the normalized names that got a journal row."""
        result = self._call(f"/_fake/churn?events={events}&seed={seed}", "POST")
        assert isinstance(result, dict)
        return {
            normalize_name(event["name"])
            for event in result["events"]
            if event["serial"] is not None
        }

    def project_names(self) -> list[str]:
        request = urllib.request.Request(
            self.url + "/simple/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            listing = json.loads(response.read())
        return [normalize_name(project["name"]) for project in listing["projects"]]


@contextmanager
def running_server(projects: int, seed: int, max_files: int, prerender: bool) -> Iterator[Server]:
    server = Server(projects, seed, max_files, prerender)
    try:
        yield server
    finally:
        server.stop()


def measure_ceiling(url: str, paths: list[str], threads: int, seconds: float) -> float:
    """Responses a second `threads` light keep-alive clients (http.client) get from `url`.

    The lightest client there is in Python: what it gets is the stand-in's limit
    (on 2 cores, it shares them with this process), not a mirror's.
    """
    split = urllib.parse.urlsplit(url)
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(slot: int) -> None:
        connection = http.client.HTTPConnection(split.hostname, split.port, timeout=60)
        try:
            position = slot * 7919
            while time.perf_counter() < deadline:
                connection.request("GET", paths[position % len(paths)])
                response = connection.getresponse()
                response.read()
                counts[slot] += 1
                position += 1
        finally:
            connection.close()

    workers = [threading.Thread(target=loop, args=(slot,)) for slot in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


# --- measuring a subprocess ---------------------------------------------------------------------


def run_measured(
    tool: str, phase: str, command: list[str], log_path: Path, limit: float | None = None
) -> Run:
    """Run `command`, return its wall time, CPU and peak RSS (wait4's rusage).

    Output goes to `log_path` (a mirror logs a line per problem; a pipe could fill).
    After `limit` seconds the process gets SIGTERM (returncode -15): its pages
    per second still compare, its wall time does not.
    """
    with open(log_path, "ab") as log_file:
        log_file.write(f"\n$ {' '.join(command)}\n".encode())
        log_file.flush()
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=log_file)
        timer = threading.Timer(limit, process.terminate) if limit else None
        if timer:
            timer.start()
        sampler = PssSampler(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        sampler.stop()
        if timer:
            timer.cancel()
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    run = Run(tool, phase, wall, cpu, usage.ru_maxrss / 1024, process.returncode)
    run.peak_pss_mib = sampler.peak_kib / 1024
    run.cpu_system = usage.ru_stime
    return run


class PssSampler:
    """The peak of a process's PSS plus its children's, sampled every `INTERVAL` seconds.

    wait4's ru_maxrss is the largest single process's peak; a first sync with
    ``--processes 2`` is two, sharing the listing copy-on-write. PSS (Linux's
    ``smaps_rollup``) counts each shared page once between them, so the sum is
    what both cost together.
    """

    INTERVAL = 0.5

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib = pid, 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.INTERVAL):
            self.peak_kib = max(self.peak_kib, sum(map(pss_kib, family(self.pid))))


def family(pid: int) -> list[int]:
    """`pid` and its children (one level: our helper process, bandersnatch's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [pid, *map(int, handle.read().split())]
    except OSError:
        return []


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def with_requests(run: Run, before: dict[str, int], after: dict[str, int]) -> Run:
    """Attach the requests the stand-in counted during `run`."""
    made = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    run.requests = {key: value for key, value in sorted(made.items()) if value}
    run.pages = sum(run.requests.get(kind, 0) for kind in ("page", "page:json", "json_api"))
    return run


# --- the tools ---------------------------------------------------------------------------------


def ours_command(url: str, mirror: Path, workers: int, extra: Sequence[str] = ()) -> list[str]:
    """pypi_mirror.py with its defaults (XML-RPC pacing included) but `--workers`, and
    ``--no-rstuf`` (no RSTUF here: changes kept for one would make every update exit 75)."""
    return [
        sys.executable, str(REPO / "pypi_mirror.py"), "--mirror-dir", str(mirror),
        "--state", str(mirror.parent / f"{mirror.name}-state.json"), "--pypi-url", url,
        "--workers", str(workers), "--no-rstuf", "-q", *extra,
    ]  # fmt: skip


def ours_options(args: argparse.Namespace) -> list[str]:
    """The pypi_mirror.py options under test (page forms, change source)."""
    processes = ["--processes", str(args.processes)] if args.processes else []
    return ["--simple-format", args.simple_format, *processes] + (
        ["--no-xmlrpc"] if args.no_xmlrpc else []
    )


def generate_csv_command(workdir: Path) -> list[str]:
    return [
        sys.executable, str(REPO / "generate_csv.py"), "--mirror-dir", str(workdir / "ours"),
        "--state", str(workdir / "ours-state.json"), "--output", str(workdir / "artifacts.csv"),
        "-q",
    ]  # fmt: skip


def bandersnatch_config(
    url: str, workdir: Path, workers: int = BANDERSNATCH_MAX_WORKERS, name: str = "bandersnatch"
) -> Path:
    """An index-only bandersnatch 8.2 config (8.2 has ``allow-non-https``: plain http)."""
    config = configparser.ConfigParser()
    config["mirror"] = {
        "directory": str(workdir / name),
        "master": url,
        "allow-non-https": "true",
        "release-files": "false",
        "root_uri": "https://files.pythonhosted.org",
        "simple-format": "ALL",
        "json": "false",
        "workers": str(workers),
        "timeout": "60",
        "global-timeout": "3600",
        "stop-on-error": "false",
        "hash-index": "false",
    }
    path = workdir / f"{name}.conf"
    with open(path, "w") as handle:
        config.write(handle)
    return path


def bandersnatch_command(config: Path) -> list[str]:
    return [str(BANDERSNATCH), "-c", str(config), "mirror"]


def measured_pair(
    server: Server,
    phase: str,
    commands: dict[str, list[str]],
    log_path: Path,
    peer_limit: float | None = None,
) -> list[Run]:
    runs = []
    for tool, command in commands.items():
        before = server.counts()
        limit = peer_limit if tool == "bandersnatch" else None
        run = run_measured(tool, phase, command, log_path, limit)
        runs.append(with_requests(run, before, server.counts()))
        print(f"  {tool} {phase}: {run.wall:.1f} s, exit {run.returncode}", file=sys.stderr)
    return runs


# --- reporting ---------------------------------------------------------------------------------


def table(runs: list[Run]) -> str:
    header = (
        f"{'phase':<13}{'tool':<14}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}{'PSS MiB':>9}"
        f"{'pages':>9}{'pages/s':>9}{'CPU ms/pg':>10}{'sys ms/pg':>10}{'exit':>5}  requests"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        requests = " ".join(f"{key}={value}" for key, value in run.requests.items())
        lines.append(
            f"{run.phase:<13}{run.tool:<14}{run.wall:>9.1f}{run.cpu:>9.1f}"
            f"{run.peak_rss_mib:>10.0f}{run.peak_pss_mib:>9.0f}{run.pages:>9}"
            f"{run.pages_per_second:>9.0f}"
            f"{run.cpu_ms_per_page:>10.2f}{run.system_ms_per_page:>10.2f}"
            f"{run.returncode:>5}  {requests}"
        )
    return "\n".join(lines)


def ratios(runs: list[Run]) -> dict[str, float]:
    """bandersnatch's wall time over ours per phase both finished; else pages/s over pages/s."""
    by_key = {(run.phase, run.tool): run for run in runs}
    result = {}
    for phase in ("first sync", "update"):
        ours, theirs = by_key.get((phase, "pypi_mirror")), by_key.get((phase, "bandersnatch"))
        if not (ours and theirs and ours.wall):
            continue
        if theirs.returncode == 0:
            result[f"{phase} (wall)"] = theirs.wall / ours.wall
        elif theirs.pages_per_second:
            result[f"{phase} (pages/s, peer stopped)"] = (
                ours.pages_per_second / theirs.pages_per_second
            )
    return result


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# --- the runs ----------------------------------------------------------------------------------


def side_by_side(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    log_path = workdir / "runs.log"
    have_bandersnatch = BANDERSNATCH.exists() and not args.skip_bandersnatch
    if not have_bandersnatch:
        print("bandersnatch not installed (see tests/bench/README.md): ours only", file=sys.stderr)
    started = time.perf_counter()
    with running_server(args.projects, args.seed, args.max_files, prerender=True) as server:
        print(f"stand-in: {args.projects} projects in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)  # fmt: skip
        names = server.project_names()
        ceiling = {
            "simple_pages_per_s": measure_ceiling(
                server.url, [f"/simple/{n}/" for n in names], CEILING_THREADS, CEILING_SECONDS
            ),
            "json_api_per_s": measure_ceiling(
                server.url, [f"/pypi/{n}/json" for n in names], CEILING_THREADS, CEILING_SECONDS
            ),
        }
        print(f"stand-in ceiling: {ceiling}", file=sys.stderr)
        commands = {
            "pypi_mirror": ours_command(
                server.url, workdir / "ours", args.workers, ours_options(args)
            )
        }
        if have_bandersnatch:
            commands["bandersnatch"] = bandersnatch_command(
                bandersnatch_config(server.url, workdir)
            )
        runs = measured_pair(server, "first sync", commands, log_path, args.peer_limit)
        if runs[-1].tool == "bandersnatch" and runs[-1].returncode != 0:
            del commands["bandersnatch"]  # its update would resume the first sync
        touched = server.churn(args.events, args.seed + 1)
        print(f"churn: {args.events} events over {len(touched)} projects", file=sys.stderr)
        runs += measured_pair(server, "update", commands, log_path)
        csv_run = run_measured("generate_csv", "bootstrap CSV", generate_csv_command(workdir),
                               log_path)  # fmt: skip
        with open(workdir / "artifacts.csv", "rb") as handle:
            csv_run.pages = sum(1 for _ in handle)
        runs.append(csv_run)
    ours_update = next(r for r in runs if r.phase == "update" and r.tool == "pypi_mirror")
    forms = 2 if args.simple_format == "all" else 1
    # Through XML-RPC every touched project is fetched once per form. Through the JSON
    # root, a project created and removed between two runs is never seen (nor needed).
    page_requests = ours_update.pages
    expected_pages = len(touched) * forms
    return {
        "projects": args.projects,
        "events": args.events,
        "options": ours_options(args),
        "touched_projects": len(touched),
        "update_requests_ok": page_requests == expected_pages
        or (args.no_xmlrpc and page_requests <= expected_pages),
        "server_ceiling": ceiling,
        "runs": runs,
        "bandersnatch_over_ours": ratios(runs),
    }


def update_slope(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Updates of growing churn from one first sync (see the module's docstring)."""
    log_path = workdir / "runs.log"
    mirror, state = workdir / "ours", workdir / "ours-state.json"
    base, base_state = workdir / "base", workdir / "base-state.json"
    runs: list[Run] = []
    points: list[dict[str, float]] = []
    with running_server(args.projects, args.seed, args.max_files, prerender=True) as server:
        command = ours_command(server.url, mirror, args.workers, ours_options(args))
        first = run_measured("pypi_mirror", "first sync", command, log_path)
        runs.append(first)
        subprocess.run(["cp", "-a", str(mirror), str(base)], check=True)
        shutil.copyfile(state, base_state)
        applied = 0
        for events in sorted(args.update_slope):
            server.churn(events - applied, args.seed + 1 + applied)
            applied = events
            for _round in range(args.rounds):
                shutil.rmtree(mirror)
                subprocess.run(["cp", "-a", str(base), str(mirror)], check=True)
                shutil.copyfile(base_state, state)
                before = server.counts()
                run = with_requests(
                    run_measured("pypi_mirror", f"update {events}", command, log_path),
                    before,
                    server.counts(),
                )
                runs.append(run)
                print(f"  update of {events} events: {run.pages} pages, {run.cpu:.3f} s CPU",
                      file=sys.stderr)  # fmt: skip
            best = min((r for r in runs if r.phase == f"update {events}"), key=lambda r: r.cpu)
            points.append({"events": events, "pages": best.pages, "cpu_s": best.cpu})
    low, high = points[0], points[-1]
    slope = (high["cpu_s"] - low["cpu_s"]) / (high["pages"] - low["pages"]) * 1000
    fixed = low["cpu_s"] - slope / 1000 * low["pages"]
    print(f"CPU a changed page (slope): {slope:.3f} ms; fixed part: {fixed:.3f} s", file=sys.stderr)
    return {
        "projects": args.projects,
        "options": ours_options(args),
        "points": points,
        "cpu_ms_per_changed_page_slope": slope,
        "fixed_cpu_s": fixed,
        "runs": runs,
    }


def rss_at_scale(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    log_path = workdir / "runs.log"
    with running_server(args.rss_listing, args.seed, max_files=1, prerender=False) as server:
        command = ours_command(server.url, workdir / "ours", args.workers, ours_options(args))
        runs = measured_pair(server, "first sync", {"pypi_mirror": command}, log_path)
        if args.full_check:
            extra = [*ours_options(args), "--full-check"]
            command = ours_command(server.url, workdir / "ours", args.workers, extra)
            runs += measured_pair(server, "full check", {"pypi_mirror": command}, log_path)
    return {"projects": args.rss_listing, "max_files": 1, "runs": runs,
            "options": ours_options(args), "rss_goal_mib": RSS_GOAL_MIB}  # fmt: skip


@dataclass
class SweepPoint:
    """One first sync at one latency and worker count, beside the stand-in's ideal there."""

    latency_ms: float
    workers: int
    ceiling_pages_per_s: float  # light clients, `workers` of them, at this latency
    runs: list[Run] = field(default_factory=list)


def latency_sweep(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """First syncs against `--workers` at each `--latency`: ours, bandersnatch up to 10 workers.

    One stand-in for the whole sweep (its latency set between points); each run
    starts from an empty mirror. The ceiling at each point is what `workers`
    light keep-alive clients get at that latency: the most any client with
    that many connections could get.
    """
    log_path = workdir / "runs.log"
    have_bandersnatch = BANDERSNATCH.exists() and not args.skip_bandersnatch
    points: list[SweepPoint] = []
    with running_server(args.projects, args.seed, args.max_files, prerender=True) as server:
        paths = [f"/simple/{n}/" for n in server.project_names()]
        for latency in args.latency:
            server.set_latency(latency)
            for workers in args.sweep_workers:
                ceiling = measure_ceiling(server.url, paths, workers, CEILING_SECONDS)
                point = SweepPoint(latency, workers, ceiling)
                ours = ours_command(server.url, workdir / "ours", workers, ours_options(args))
                commands = {"pypi_mirror": ours}
                if have_bandersnatch and workers <= BANDERSNATCH_MAX_WORKERS:
                    config = bandersnatch_config(server.url, workdir, workers)
                    commands["bandersnatch"] = bandersnatch_command(config)
                phase = f"{latency:g} ms x{workers}"
                for tool, command in commands.items():
                    before = server.counts()
                    run = run_measured(tool, phase, command, log_path, args.run_limit)
                    point.runs.append(with_requests(run, before, server.counts()))
                    print(f"  {tool} {phase}: {run.pages_per_second:.0f} pages/s "
                          f"(ceiling {ceiling:.0f}), exit {run.returncode}",
                          file=sys.stderr)  # fmt: skip
                for name in ("ours", "ours-state.json", "bandersnatch"):
                    path = workdir / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                points.append(point)
    return {
        "projects": args.projects,
        "runs": [run for point in points for run in point.runs],
        "sweep": [sweep_row(point) for point in points],
    }


def sweep_row(point: SweepPoint) -> dict[str, float]:
    row = {
        "latency_ms": point.latency_ms,
        "workers": point.workers,
        "ceiling_pages_per_s": point.ceiling_pages_per_s,
    }
    row.update({f"{run.tool}_pages_per_s": run.pages_per_second for run in point.runs})
    return row


def sweep_table(sweep: list[dict[str, float]]) -> str:
    header = (
        f"{'latency':>8}{'workers':>9}{'ceiling':>9}{'ours':>8}{'ours %':>8}{'bandersnatch':>14}"
    )
    lines = [header, "-" * len(header)]
    for row in sweep:
        ours, ceiling = row.get("pypi_mirror_pages_per_s", 0.0), row["ceiling_pages_per_s"]
        theirs = row.get("bandersnatch_pages_per_s")
        lines.append(
            f"{row['latency_ms']:>6g}ms{row['workers']:>9}{ceiling:>9.0f}{ours:>8.0f}"
            f"{100 * ours / ceiling if ceiling else 0:>7.0f}%"
            f"{'' if theirs is None else f'{theirs:.0f}':>14}"
        )
    return "\n".join(lines)


def report(result: dict[str, object], output: Path) -> None:
    runs = result["runs"]
    assert isinstance(runs, list)
    print(table(runs))
    if "sweep" in result:
        print(sweep_table(result["sweep"]))  # type: ignore[arg-type]
    for key in ("options", "server_ceiling", "bandersnatch_over_ours", "touched_projects",
                "update_requests_ok"):  # fmt: skip
        if key in result:
            print(f"{key}: {result[key]}")
    document = {**result, "runs": [asdict(run) for run in runs], "machine": machine()}
    output.write_text(json.dumps(document, indent=1) + "\n")
    print(f"written to {output}")


def _numbers(kind: type) -> Callable[[str], list]:
    return lambda text: [kind(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_sync",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2000, help="changelog events (K)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-files", type=int, default=8000, help="files on the largest page")
    parser.add_argument(
        "--workers", type=int, default=settings.DEFAULTS.workers, help="pypi_mirror.py --workers"
    )
    parser.add_argument("--workdir", type=Path, help="default: a temp dir, removed afterwards")
    parser.add_argument("--output", type=Path, default=REPO / "bench-results-sync.json")
    parser.add_argument("--skip-bandersnatch", action="store_true")
    parser.add_argument("--simple-format", choices=("html", "json", "all"), default="html",
                        help="pypi_mirror.py --simple-format")  # fmt: skip
    parser.add_argument("--no-xmlrpc", action="store_true", help="pypi_mirror.py --no-xmlrpc")
    parser.add_argument(
        "--processes", type=int, help="pypi_mirror.py --processes (removed there: ignored)"
    )
    parser.add_argument("--peer-limit", type=float, metavar="S",
                        help="stop bandersnatch's first sync after S seconds "
                        "(compare pages/s, skip its update)")  # fmt: skip
    parser.add_argument("--rss-listing", type=int, metavar="N",
                        help="only measure our first sync of N one-file projects")  # fmt: skip
    parser.add_argument("--full-check", action="store_true",
                        help="with --rss-listing: then a --full-check run")  # fmt: skip
    parser.add_argument("--update-slope", type=_numbers(int), metavar="K,...",
                        help="updates of K changelog events in all, each from one first sync")
    parser.add_argument("--rounds", type=int, default=3, help="--update-slope: runs a size")
    parser.add_argument("--latency", type=_numbers(float), metavar="MS,...",
                        help="latency sweep: first syncs of --projects at each latency "
                        "against each of --sweep-workers")  # fmt: skip
    parser.add_argument("--sweep-workers", type=_numbers(int), default=[4, 8, 16, 32, 64],
                        metavar="N,...", help="worker counts of the latency sweep")  # fmt: skip
    parser.add_argument(
        "--run-limit",
        type=float,
        metavar="S",
        help="latency sweep: stop a run after S seconds (pages/s still compare)",
    )
    return parser.parse_args(argv)


def compile_bytecode() -> None:
    """Cache the package's bytecode, as an installed copy has it: where
    PYTHONDONTWRITEBYTECODE is set, every run would compile each module it imports
    again (0.05-0.1 s of CPU, most of a small update's)."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = [sys.executable, "-m", "compileall", "-q", str(REPO / "pypi_index_mirror")]
    subprocess.run([*command, str(REPO / "pypi_mirror.py")], check=True, env=environment)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    compile_bytecode()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sync-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run = (
            rss_at_scale
            if args.rss_listing
            else latency_sweep
            if args.latency
            else update_slope
            if args.update_slope
            else side_by_side
        )
        result = run(args, workdir)
        report(result, args.output)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
