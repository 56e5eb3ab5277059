"""Benchmark the TUF-verifying proxy against nginx serving the same pages directly.

    python -m tests.bench.bench_proxy [--projects 2000] [--bins 256] [--output FILE]

Builds, in a temporary directory: a mirror of ``--projects`` synthetic projects
(``FakePyPI.populate``, synced by ``pypi_mirror.py``), RSTUF-shaped TUF
metadata signing every page (``tests.tuf_repo``: consistent snapshots,
``--bins`` succinct hash bins), nginx serving the mirror with
serving/nginx.conf, and a second nginx serving the metadata directory as
static files. The proxy runs as its own process (``tuf_proxy.py``), as in
production.

Clients are threads of this process, each with one keep-alive
``http.client`` connection, asking every project page once in a shuffled
order (HTML, no Accept header), split over 1 or 16 clients. Scenarios:

- ``nginx``: the pages from nginx directly (after one warm-up pass);
- ``proxy-cold``: a new proxy process with an empty ``--cache-dir``: its first
  request refreshes the top-level metadata, and each first page of a bin
  fetches and verifies that bin;
- ``proxy-warm``: the same process again, every bin verified;
- ``+pages`` and ``+cached``: the same two passes with the proxy's cache of
  verified pages on (``--page-cache-bytes``; the two above run with it off):
  on the second pass every page comes from memory.

Per scenario: latency per page (median, p95, in ms), pages/s, and the CPU
the proxy process used per page (from /proc). The added latency is the
proxy's median minus nginx's at the same concurrency. Prints a table and
writes a JSON file. Not named test_*: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pypi_index_mirror.mirror.store import DEFAULT_MIRROR_DIR, digest_file, iter_targets
from tests.fake_pypi import FakePyPI
from tests.mirror_helpers import REPO, Mirror
from tests.test_serving import Nginx, find_nginx, free_port, main_config, start_nginx
from tests.tuf_repo import TufRepository

CLIENTS = (1, 16)


@dataclass
class Result:
    scenario: str
    clients: int
    pages: int
    seconds: float
    pages_per_second: float
    median_ms: float
    p95_ms: float
    proxy_cpu_ms_per_page: float | None
    added_median_ms: float | None = None
    added_p95_ms: float | None = None


def start_static_nginx(directory: Path, workdir: Path) -> Nginx:
    """nginx serving `directory` as plain files (RSTUF's storage, as its operator serves it)."""
    binary = find_nginx()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = workdir / "site.conf"
    site.write_text(
        f"server {{ listen 127.0.0.1:{port}; root {directory}; "
        'add_header Cache-Control "no-cache" always; }\n'
    )
    conf = workdir / "nginx.conf"
    conf.write_text(main_config(workdir, site))
    process = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    wait_for(port)
    return Nginx(process, f"http://127.0.0.1:{port}", workdir)


def wait_for(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch_all(base_url: str, paths: list[str], clients: int) -> tuple[list[float], float]:
    """Every path once over `clients` keep-alive connections: (latencies in s, elapsed s)."""
    host, port = base_url.removeprefix("http://").split(":")
    shares = [paths[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(position: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        barrier.wait()
        for path in shares[position]:
            began = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            latencies[position].append(time.perf_counter() - began)
            if response.status != 200 or not body:
                failures.append(f"{path}: {response.status} {body[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{len(failures)} pages failed, first: {failures[0]}")
    return [x for share in latencies for x in share], elapsed


def summarize(
    scenario: str, clients: int, latencies: list[float], elapsed: float, cpu: float | None
) -> Result:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return Result(
        scenario,
        clients,
        len(latencies),
        round(elapsed, 3),
        round(len(latencies) / elapsed, 1),
        round(statistics.median(ordered) * 1000, 3),
        round(p95 * 1000, 3),
        None if cpu is None else round(cpu / len(latencies) * 1000, 3),
    )


def start_proxy(
    mirror_url: str, metadata_url: str, root: Path, cache: Path, page_cache: int
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, str(REPO / "tuf_proxy.py"), "--mirror-url", mirror_url,
            "--tuf-metadata-url", metadata_url, "--tuf-root", str(root), "--cache-dir", str(cache),
            "--listen", f"127.0.0.1:{port}", "--page-cache-bytes", str(page_cache), "-q",
        ],
    )  # fmt: skip
    wait_for(port)
    return process, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=2000)
    parser.add_argument("--bins", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as temp:
        tmp = Path(temp)
        with FakePyPI() as pypi:
            pypi.populate(args.projects, args.seed, max_files=200)
            mirror = Mirror(tmp / DEFAULT_MIRROR_DIR, tmp / "state.json", pypi.url)
            assert mirror.run("-q", "--workers", "8") == 0
        layout = mirror.layout
        repo = TufRepository(tmp / "metadata", args.bins)
        view = {}
        for target in iter_targets(layout):
            digest = digest_file(layout.path_of_target(target))
            view[target] = {"length": digest.length, "hashes": {digest.algorithm: digest.hexdigest}}
        repo.publish(view)
        root = tmp / "1.root.json"
        root.write_bytes(repo.root_bytes)
        paths = [
            "/" + target.removesuffix("index.html")
            for target in view
            if target.startswith("simple/") and target.endswith("/index.html")
        ]
        random.Random(args.seed).shuffle(paths)
        sizes = [layout.path_of_target(t).stat().st_size for t in view]
        print(
            f"{len(paths)} pages (median {statistics.median(sizes):.0f} bytes), "
            f"{args.bins} bins, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )

        pages_nginx = start_nginx(layout.served_dir, tmp / "nginx-pages")
        metadata_nginx = start_static_nginx(repo.directory, tmp / "nginx-metadata")
        results: list[Result] = []
        try:
            fetch_all(pages_nginx.url, paths, 4)  # warm the page cache
            direct = {}
            for clients in CLIENTS:
                latencies, elapsed = fetch_all(pages_nginx.url, paths, clients)
                direct[clients] = summarize("nginx", clients, latencies, elapsed, None)
                results.append(direct[clients])
            for clients, page_cache in itertools.product(CLIENTS, (0, 256 << 20)):
                cache = tmp / f"proxy-cache-{clients}-{page_cache}"
                process, url = start_proxy(
                    pages_nginx.url, metadata_nginx.url + "/", root, cache, page_cache
                )
                scenarios = (
                    ("proxy-cold", "proxy-warm") if not page_cache else ("+pages", "+cached")
                )
                try:
                    for scenario in scenarios:
                        before = cpu_seconds(process.pid)
                        latencies, elapsed = fetch_all(url, paths, clients)
                        used = cpu_seconds(process.pid) - before
                        result = summarize(scenario, clients, latencies, elapsed, used)
                        result.added_median_ms = round(
                            result.median_ms - direct[clients].median_ms, 3
                        )
                        result.added_p95_ms = round(result.p95_ms - direct[clients].p95_ms, 3)
                        results.append(result)
                finally:
                    process.terminate()
                    process.wait(timeout=30)
        finally:
            pages_nginx.stop()
            metadata_nginx.stop()

    header = f"{'scenario':<11} {'clients':>7} {'pages/s':>9} {'median':>8} {'p95':>8}"
    print(f"{header} {'+median':>8} {'+p95':>8} {'cpu/page':>9}  (ms)")
    for r in results:
        added = (
            f"{r.added_median_ms:>8.2f} {r.added_p95_ms:>8.2f}"
            if r.added_median_ms is not None
            else f"{'':>8} {'':>8}"
        )
        cpu = f"{r.proxy_cpu_ms_per_page:>9.2f}" if r.proxy_cpu_ms_per_page is not None else ""
        print(
            f"{r.scenario:<11} {r.clients:>7} {r.pages_per_second:>9.0f} {r.median_ms:>8.2f} "
            f"{r.p95_ms:>8.2f} {added} {cpu}"
        )
    if args.output:
        document = {
            "projects": args.projects,
            "bins": args.bins,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "load_average": os.getloadavg(),
            "results": [asdict(r) for r in results],
        }
        args.output.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
