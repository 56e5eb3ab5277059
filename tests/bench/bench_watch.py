"""Upload to signed: --watch 10s against a paced RSTUF, beside cron every 5 minutes.

Not part of the suite. The stand-in PyPI (in this process) gets `--uploads` new
releases, each on a project of its own, at random moments (exponential gaps of
mean `--gap` seconds: uploads spread over time, some close together); a
``pypi_mirror.py --watch 10s`` process follows it; the stand-in RSTUF is paced
like the real one (`Pacing.real()`: 2 worker processes, the recorded
timings). For each upload: the time from its journal entry to the moment the
stand-in RSTUF finished the publish that signs the new page (its
`published_at`). Median and 95th percentile.

Cron every 5 minutes, for comparison, is computed, not run for hours: the same
upload moments against runs starting every 300 s (a random phase), each upload
waiting for the next run to start and then for that run's own time to signed,
which is measured here on real single runs (`--cron-samples` of them, after a
few uploads each) against the same paced RSTUF.

    python -m tests.bench.bench_watch --uploads 100 --gap 5

``--memory CYCLES`` measures instead the resident memory of a watch over many
short cycles (interval 0), driven in this process while both stand-ins run in
processes of their own (so their request logs are not counted), the stand-in
PyPI churning 5 changes every 100 cycles, all delivered to the stand-in RSTUF.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from pypi_index_mirror.mirror.state import load_state
from pypi_index_mirror.mirror.store import digest_bytes
from tests.fake_pypi import FakePyPI
from tests.fake_rstuf import FakeRstuf, Pacing
from tests.mirror_helpers import REPO, Mirror, bootstrap, mirror_view, upstream_page

CRON_INTERVAL = 300.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def figures(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "median_s": round(statistics.median(values), 2),
        "p95_s": round(percentile(values, 0.95), 2),
        "max_s": round(max(values), 2),
    }


def signed_after(rstuf: FakeRstuf, target: str, digest: str) -> float | None:
    """When (the stand-in's monotonic clock) RSTUF published `digest` for `target`."""
    entry = rstuf.view.get(target)
    if entry is None or entry["hashes"]["blake2b-256"] != digest:
        return None
    return rstuf.published_at().get(target)


def upload(pypi: FakePyPI, name: str) -> tuple[float, str]:
    """A new release on `name`: (monotonic time of its journal entry, the new page's hash)."""
    pypi.add_release(name, "9.0", files=1)
    when = time.monotonic()
    page = upstream_page(pypi.url, name)
    assert page is not None
    return when, digest_bytes(page).hexdigest


def watch_latencies(args: argparse.Namespace, work: Path) -> tuple[list[float], list[float]]:
    rng = random.Random(args.seed)
    with FakePyPI() as pypi, FakeRstuf(pacing=Pacing.real(), processes=2) as rstuf:
        names = [f"project-{i:04d}" for i in range(args.uploads + 20)]
        for name in names:
            pypi.add_release(name, "1.0", files=1)
        mirror = Mirror(work / "watch" / "pypi-index-mirror", work / "watch" / "state.json",
                        pypi.url)  # fmt: skip
        assert mirror.run() == 0
        bootstrap(rstuf, mirror_view(mirror.layout))
        mirror.rstuf_url = rstuf.url
        process = mirror.popen("--watch", args.interval, "--rstuf-poll", "2", "-q")
        try:
            time.sleep(3)  # its first cycle
            pending: dict[str, tuple[float, str]] = {}
            for name in names[: args.uploads]:
                time.sleep(rng.expovariate(1 / args.gap))
                pending[f"simple/{name}/index.html"] = upload(pypi, name)
            deadline = time.monotonic() + 600
            latencies: dict[str, float] = {}
            while len(latencies) < len(pending) and time.monotonic() < deadline:
                for target, (when, digest) in pending.items():
                    if target not in latencies:
                        signed = signed_after(rstuf, target, digest)
                        if signed is not None:
                            latencies[target] = signed - when
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=120)
        assert process.returncode == 143, stderr
        assert len(latencies) == len(pending), f"{len(pending) - len(latencies)} never signed"
        upload_times = [when for when, _ in pending.values()]
        return list(latencies.values()), upload_times


def cron_run_times(args: argparse.Namespace, work: Path) -> list[float]:
    """Seconds from a single run's start to RSTUF publishing what it found (a few uploads)."""
    samples = []
    with FakePyPI() as pypi, FakeRstuf(pacing=Pacing.real(), processes=2) as rstuf:
        names = [f"project-{i:04d}" for i in range(args.cron_samples * 3 + 5)]
        for name in names:
            pypi.add_release(name, "1.0", files=1)
        mirror = Mirror(work / "cron" / "pypi-index-mirror", work / "cron" / "state.json",
                        pypi.url)  # fmt: skip
        assert mirror.run() == 0
        bootstrap(rstuf, mirror_view(mirror.layout))
        mirror.rstuf_url = rstuf.url
        for sample in range(args.cron_samples):
            batch = names[sample * 3 : sample * 3 + 1 + sample % 3]  # 1-3 uploads a run
            uploads = {f"simple/{name}/index.html": upload(pypi, name)[1] for name in batch}
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, str(REPO / "pypi_mirror.py"), *mirror.args("-q")],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            signed = [signed_after(rstuf, target, digest) for target, digest in uploads.items()]
            assert all(s is not None for s in signed), "a cron run ended before RSTUF signed"
            samples.append(max(s for s in signed if s is not None) - started)
    return samples


def cron_latencies(upload_times: list[float], run_times: list[float], seed: int) -> list[float]:
    """Each upload waits for the next run on a 300 s grid, then that run's time to signed."""
    rng = random.Random(seed)
    phase = rng.uniform(0, CRON_INTERVAL)
    latencies = []
    for when in upload_times:
        runs_before = (when - phase) // CRON_INTERVAL
        next_start = phase + (runs_before + 1) * CRON_INTERVAL
        latencies.append(next_start - when + rng.choice(run_times))
    return latencies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def memory(cycles: int, work: Path) -> dict[str, object]:
    """RSS of a watch over `cycles` cycles, sampled every 500 (see the module docstring)."""
    import gc
    import logging

    from pypi_index_mirror.mirror.safety import Halt
    from pypi_index_mirror.ops import command as pypi_mirror
    from pypi_index_mirror.ops.progress import Progress
    from pypi_index_mirror.ops.settings import config_from
    from pypi_index_mirror.sync.run import Sync
    from pypi_index_mirror.sync.watch import Watch
    from pypi_index_mirror.upstream.client import PypiClient

    pypi_port, rstuf_port = free_port(), free_port()
    servers = [
        subprocess.Popen([sys.executable, "-m", "tests.fake_pypi", "--projects", "1000",
                          "--port", str(pypi_port)], cwd=REPO, stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "tests.fake_rstuf", "--step", "0.01",
                          "--port", str(rstuf_port)], cwd=REPO, stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    pypi_url, rstuf_url = f"http://127.0.0.1:{pypi_port}", f"http://127.0.0.1:{rstuf_port}"
    try:
        for url in (f"{pypi_url}/_fake/state", f"{rstuf_url}/api/v1/bootstrap/"):
            for _ in range(600):
                try:
                    requests.get(url, timeout=5).raise_for_status()
                    break
                except requests.RequestException:
                    time.sleep(0.1)
        mirror = Mirror(work / "pypi-index-mirror", work / "state.json", pypi_url)
        assert mirror.run("-q") == 0
        mirror.rstuf_url = rstuf_url
        logging.getLogger().setLevel(logging.WARNING)
        args = mirror.args("--watch", "1s", "--rstuf-poll", "0.05")
        config = config_from(args, pypi_mirror.build_parser(), {})
        halt = Halt()
        client = PypiClient(config.pypi_url, config, sleep=halt.sleep)
        sync = Sync(
            config, client, pypi_mirror.make_rstuf_client(config), Progress(False, 0), halt=halt
        )
        watch = Watch(sync, 0.0, cycles=0)
        samples = []
        started = time.perf_counter()
        while watch.done < cycles:
            requests.post(f"{pypi_url}/_fake/churn?events=5", timeout=30).raise_for_status()
            watch.cycles = watch.done + 100
            watch.follow()
            if watch.done % 500 == 0:
                gc.collect()
                samples.append({"cycles": watch.done, "rss_kib": rss_kib()})
        elapsed = time.perf_counter() - started
        delivered = len(load_state(mirror.state).outbox) == 0
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    return {
        "cycles": cycles,
        "changes": cycles // 100 * 5,
        "seconds": round(elapsed, 1),
        "outbox_empty_at_end": delivered,
        "rss": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--gap", type=float, default=5.0, help="mean seconds between uploads")
    parser.add_argument("--interval", default="10s", help="--watch INTERVAL")
    parser.add_argument("--cron-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memory", type=int, metavar="CYCLES", help="measure memory instead")
    args = parser.parse_args()
    if args.memory:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
            print(json.dumps(memory(args.memory, Path(directory)), indent=1))
        return 0
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        watch, upload_times = watch_latencies(args, work)
        run_times = cron_run_times(args, work)
    cron = cron_latencies(upload_times, run_times, args.seed)
    result = {
        "uploads": args.uploads,
        "mean_gap_s": args.gap,
        "rstuf_pacing": "Pacing.real(): 2 worker processes, recheck 3 s",
        "watch": {"interval": args.interval, "rstuf_poll_s": 2, **figures(watch)},
        "cron_every_5_min": {
            "run_to_signed_measured_s": [round(t, 2) for t in run_times],
            **figures(cron),
        },
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
