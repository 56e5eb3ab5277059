"""Disk space and inodes of a served mirror: estimated from the stand-in's page-size mix, or
measured on a real mirror directory.

    python -m tests.bench.bench_disk [--projects 100000] [--at 700000] [--json-pages]
    python -m tests.bench.bench_disk --measure pypi-index-mirror

Estimate: renders the stand-in's synthetic index (``FakePyPI.populate``: most pages 1-20
files, a long tail to 8,000) and adds up what the mirror writes for it: per project one
directory and one page file, whose hash-prefixed copy is a hard link (a second directory
entry, no second inode or block); optionally (``--json-pages``) a PEP 691 JSON page and its
hard-linked copy beside it; the root index and its copy. Allocated space counts whole
filesystem blocks (``--block``, ext4's 4 KiB) per file and per project directory. Scaled
linearly to ``--at`` projects.

Measure: walks a mirror directory and counts distinct inodes, directory entries, the bytes
of its files and the bytes allocated (``st_blocks``, directories included), as ``du`` and
``df -i`` would. On a 10,000-project sync from the stand-in (ext4) the two agreed: 19,994
inodes and 101 MiB allocated measured, 20,001 and 101 MiB estimated.

Not named test_*: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.fake_pypi import FakePyPI

MIB = 1 << 20


@dataclass
class Usage:
    """What a served tree costs the filesystem."""

    projects: int
    inodes: int
    entries: int  # directory entries (names), hard links counted each
    apparent_bytes: int
    allocated_bytes: int

    def scaled(self, projects: int) -> Usage:
        factor = projects / self.projects
        return Usage(
            projects,
            round(self.inodes * factor),
            round(self.entries * factor),
            round(self.apparent_bytes * factor),
            round(self.allocated_bytes * factor),
        )


def blocks(size: int, block: int) -> int:
    """Bytes allocated for a file of ``size`` bytes (a non-empty file takes whole blocks)."""
    return -(-size // block) * block


def estimate(projects: int, seed: int, block: int, json_pages: bool) -> tuple[Usage, dict]:
    """Usage of the stand-in's index of ``projects`` projects, and its page-size figures."""
    fake = FakePyPI(log_requests=False)
    fake.populate(projects, seed=seed)
    sizes = sorted(len(fake.page(name)) for name in fake.project_names())
    files_per_project = 1 + int(json_pages)
    inodes = len(sizes) * (1 + files_per_project)  # the directory and its page file(s)
    entries = len(sizes) * (1 + 2 * files_per_project)  # each page also by its hash name
    apparent = sum(sizes)
    allocated = sum(blocks(size, block) for size in sizes) + len(sizes) * block
    if json_pages:
        json_sizes = [len(fake.page(name, json_form=True)) for name in fake.project_names()]
        apparent += sum(json_sizes)
        allocated += sum(blocks(size, block) for size in json_sizes)
    root = len(fake.root_page()) - len(sizes)  # the mirror's links are relative: one byte less
    inodes += 1
    entries += 2
    apparent += root
    allocated += blocks(root, block)
    figures = {
        "median_page_bytes": sizes[len(sizes) // 2],
        "mean_page_bytes": round(sum(sizes) / len(sizes)),
        "p99_page_bytes": sizes[int(len(sizes) * 0.99)],
        "max_page_bytes": sizes[-1],
        "pages_over_one_block": sum(1 for size in sizes if size > block),
        "root_index_bytes": root,
    }
    return Usage(len(sizes), inodes, entries, apparent, allocated), figures


def measure(root: Path) -> Usage:
    """Usage of a real mirror directory (its served tree: ``pypi_mirror/`` if present)."""
    served = root / "pypi_mirror" if (root / "pypi_mirror").is_dir() else root
    seen: set[int] = set()
    usage = Usage(0, 0, 0, 0, 0)
    for directory, subdirs, files in os.walk(served):
        if Path(directory).parent.name == "simple":
            usage.projects += 1
        for name in (*subdirs, *files):
            info = os.lstat(os.path.join(directory, name))
            usage.entries += 1
            if info.st_ino in seen:
                continue
            seen.add(info.st_ino)
            usage.inodes += 1
            if stat.S_ISREG(info.st_mode):  # pages; a directory's size is its own blocks
                usage.apparent_bytes += info.st_size
            usage.allocated_bytes += info.st_blocks * 512
    return usage


def show(label: str, usage: Usage) -> None:
    print(
        f"{label}: {usage.projects:,} projects, {usage.inodes:,} inodes, "
        f"{usage.entries:,} directory entries, {usage.apparent_bytes / MIB:,.0f} MiB of pages, "
        f"{usage.allocated_bytes / MIB:,.0f} MiB allocated"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_disk")
    parser.add_argument("--projects", type=int, default=100_000, help="stand-in projects")
    parser.add_argument("--at", type=int, default=700_000, help="scale the estimate to this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=4096, help="filesystem block size")
    parser.add_argument("--json-pages", action="store_true", help="PEP 691 pages too")
    parser.add_argument("--measure", type=Path, help="measure this mirror directory instead")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    if args.measure:
        usage = measure(args.measure)
        show(f"measured {args.measure}", usage)
        result: dict = {"measured": asdict(usage)}
    else:
        started = time.perf_counter()
        sample, figures = estimate(args.projects, args.seed, args.block, args.json_pages)
        show(f"stand-in ({time.perf_counter() - started:.0f} s)", sample)
        print(", ".join(f"{key} {value:,}" for key, value in figures.items()))
        show(f"scaled to {args.at:,}", sample.scaled(args.at))
        result = {
            "sample": asdict(sample),
            "figures": figures,
            "scaled": asdict(sample.scaled(args.at)),
            "block": args.block,
            "json_pages": args.json_pages,
        }
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
