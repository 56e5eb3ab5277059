"""Peak memory and time of parsing a ``list_packages_with_serial`` answer of PyPI's size.

    python -m tests.bench.bench_listing_parse [--members 700000] [--code DIR ...] [--json-root]

A server process streams one XML-RPC answer of N members, as warehouse marshals
it (``xmlrpc.client.dumps`` of a ``{name: serial}`` dict, sent chunked). For each
``--code`` directory (default: this checkout; give an older checkout to compare),
a fresh process imports that directory's ``pypi_client`` and calls
``PypiClient.list_packages_with_serial`` with a sink that only counts, so what
is measured is the parser's own memory (the peak RSS during the call, VmHWM
reset just before it, minus the RSS at its start), wall time and the client
process's CPU time (steadier than wall time on a shared machine). With
``--dict`` it also measures what a plain ``xmlrpc.client.loads`` of the whole
answer costs, for scale. With ``--json-root`` the same listing is PyPI's PEP 691
JSON root (``GET /simple/``, as warehouse renders it), read by
``PypiClient.list_projects_json`` (with ``--dict``: a plain ``json.loads``).

Not named test_*, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]


def listing_of(members: int) -> dict[str, int]:
    """`members` projects with names of PyPI's shapes, and their serials."""
    return {f"Project_{i:07d}.{'x' * (i % 17)}": 10_000 + i for i in range(members)}


def answer(members: int) -> bytes:
    """The answer warehouse would send for `members` projects."""
    return xmlrpc.client.dumps((listing_of(members),), methodresponse=True).encode()


def json_root(members: int) -> bytes:
    """The PEP 691 JSON root warehouse would send for the same projects."""
    projects = [
        {"name": name, "_last-serial": serial} for name, serial in listing_of(members).items()
    ]
    meta = {"api-version": "1.4", "_last-serial": 10_000 + members}
    return json.dumps({"meta": meta, "projects": projects}).encode()


def serve(members: int) -> None:
    """Serve the answer to every POST /pypi, chunked; print the port, then serve for ever."""
    body, root = answer(members), json_root(members)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_chunked("text/xml", body)

        def do_GET(self) -> None:
            self.send_chunked("application/vnd.pypi.simple.v1+json", root)

        def send_chunked(self, content_type: str, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("X-PyPI-Last-Serial", str(10_000 + members))
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 1 << 16
            for start in range(0, len(body), step):
                piece = body[start : start + step]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    print(len(body), flush=True)
    server.serve_forever()


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux ``clear_refs`` 5), so import-time
    peaks do not count as the parser's."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def measure(code: Path, url: str, as_dict: bool, json_form: bool = False) -> dict[str, object]:
    """In this (fresh) process: parse the answer once with `code`'s client; return figures."""
    sys.path.insert(0, str(code))
    from pypi_index_mirror.upstream import client as pypi_client  # the one under `code`

    settings = SimpleNamespace(
        connect_timeout=10.0,
        timeout=600.0,
        retries=0,
        backoff=1.0,
        max_page_bytes=64 << 20,
        max_xmlrpc_bytes=512 << 20,
        xmlrpc_interval=0.0,
    )
    client = pypi_client.PypiClient(url, settings)
    client.session  # noqa: B018  # the session (and its imports) before the baseline
    count = 0

    def sink(name: object, serial: object) -> None:
        nonlocal count
        count += 1

    reset_peak()
    before = status_kib("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    if as_dict and json_form:
        body = client.session.get(f"{url}/simple/", timeout=600).content
        count = len(json.loads(body)["projects"])
        del body
    elif as_dict:
        body = client.session.post(f"{url}/pypi", data=b"", timeout=600).content
        count = len(xmlrpc.client.loads(body)[0][0])
        del body
    elif json_form:
        client.list_projects_json(sink)
    else:
        client.list_packages_with_serial(sink)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak = status_kib("VmHWM")
    client.close()
    return {
        "code": str(code),
        "how": {
            (True, True): "json.loads (a list of dicts)",
            (True, False): "xmlrpc.client.loads (a dict)",
            (False, True): "list_projects_json",
            (False, False): "list_packages_with_serial",
        }[(as_dict, json_form)],
        "members": count,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "rss_before_mib": round(before / 1024, 1),
        "peak_growth_mib": round((peak - before) / 1024, 1),
    }


def run_child(code: Path, url: str, as_dict: bool, json_form: bool) -> dict[str, object]:
    command = [sys.executable, "-m", "tests.bench.bench_listing_parse", "--child", url]
    command += ["--code", str(code)] + (["--dict"] if as_dict else [])
    command += ["--json-root"] if json_form else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--members", type=int, default=700_000)
    parser.add_argument("--code", type=Path, action="append", help="checkout(s) to measure")
    parser.add_argument("--dict", action="store_true", help="also a plain loads() for scale")
    parser.add_argument("--repeat", type=int, default=1, help="runs per checkout")
    parser.add_argument("--json-root", action="store_true", help="the PEP 691 root instead")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.members)
        return 0
    codes = [path.resolve() for path in (args.code or [REPO])]
    if args.child:
        print(json.dumps(measure(codes[0], args.child, args.dict, args.json_root)))
        return 0
    module = "tests.bench.bench_listing_parse"
    server = subprocess.Popen(
        [sys.executable, "-m", module, "--serve", "-n", str(args.members)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        size = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        print(f"answer: {args.members} members, {size / (1 << 20):.1f} MiB")
        print(f"{'code':40} {'how':30} {'members':>8} {'wall s':>7} {'CPU s':>6} {'+MiB':>6}")
        rows = [(code, False) for code in codes] * args.repeat
        if args.dict:
            rows.append((codes[0], True))
        for code, as_dict in rows:
            figures = run_child(code, url, as_dict, args.json_root)
            code, how, members = figures["code"][-40:], figures["how"], figures["members"]
            print(
                f"{code:40} {how:30} {members:>8} {figures['seconds']:>7} "
                f"{figures['cpu_seconds']:>6} {figures['peak_growth_mib']:>6}"
            )
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
