"""The option table: every setting declared once, with the parsers of its values.

Each `Option` becomes a ``--flag``, a ``PYPI_MIRROR_*`` environment variable
(or the conventional name it names) and a key of the TOML config file; its
`parse` turns text (a flag's, a variable's, a file's scalar) into the value or
raises ValueError naming what is wrong. Apart from ``ops.settings``, which
resolves the table's three sources into a `Config`, so the table reads as
the reference it is (docs/options.md is generated from it) and other tools
(the proxy, ``generate_csv.py``) declare their options with the same pieces.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pypi_index_mirror.mirror.filters import glob_pattern
from pypi_index_mirror.ops.cli import (
    format_duration,
    number,
    parse_duration,
)

CONFIG_ENV = "PYPI_MIRROR_CONFIG"
TOKEN_ENV = "RSTUF_API_TOKEN"  # a secret: read from the environment only, never a flag


@dataclass(frozen=True)
class Option:
    """One setting. `parse` turns text (flag, env, or a file's scalar) into its value."""

    key: str  # --key on the command line, key in the config file
    help: str
    parse: Callable[[str], Any] | None = None  # None: an on/off switch
    env: str | None = ""  # "": PYPI_MIRROR_<KEY>; None: no environment variable
    field: str = ""  # the Config field; "": the key with '_' for '-'
    path: bool = False  # relative to the config file's directory when set there
    in_file: bool = True  # False: an action of one run (--dry-run), not a setting
    many: bool = False  # a list: a repeatable flag, a comma/space-separated env var, a TOML array
    short: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.field or self.key.replace("-", "_")

    @property
    def env_name(self) -> str | None:
        if self.env is None:
            return None
        return self.env or "PYPI_MIRROR_" + self.key.upper().replace("-", "_")


@dataclass(frozen=True)
class RemovedOption:
    """An option a release removed. Still accepted as a flag, an environment variable and a
    config key, so old cron lines, units and config files keep working; hidden from
    ``--help`` and the reference, and ignored with one warning saying why (`why`)."""

    key: str
    why: str

    @property
    def dest(self) -> str:
        return "removed_" + self.key.replace("-", "_")

    @property
    def env_name(self) -> str:
        return "PYPI_MIRROR_" + self.key.upper().replace("-", "_")

    @property
    def warning(self) -> str:
        return f"--{self.key} ({self.env_name}, {self.key} in a config file) is ignored: {self.why}"


REMOVED_OPTIONS = (
    RemovedOption(
        "processes",
        "the helper process it forked is gone: every page is fetched by one thread's "
        "libcurl loop, which keeps up with the upstream on one core (a second process only "
        "added CPU); drop it from the command line, the environment and the config file",
    ),
)


def url(text: str) -> str:
    """An http(s) base URL; a missing scheme is refused instead of retried for a minute."""
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"not an http:// or https:// URL: {text!r}")
    parts = urllib.parse.urlsplit(text)
    if not parts.hostname or parts.query or parts.fragment or any(c.isspace() for c in text):
        raise ValueError(f"not a base URL (a host, no query or fragment): {text!r}")
    return text.rstrip("/")


def pypi_url(text: str) -> str:
    """PyPI's base URL; ``…/simple`` is the commonest mistake and is named as such."""
    base = url(text)
    if base.endswith("/simple") or base.endswith("/pypi"):
        raise ValueError(
            f"{text!r} ends with {base.rsplit('/', 1)[1]!r}: give the index's base URL "
            "(for example https://pypi.org), the tool adds /simple/ and /pypi itself"
        )
    return base


def storage_url(text: str) -> str:
    """``s3://BUCKET[/PREFIX]`` (checked here; the bucket itself when the run starts)."""
    scheme, sep, rest = text.partition("://")
    bucket = rest.partition("/")[0]
    if scheme != "s3" or not sep or not bucket:
        raise ValueError(f"not s3://BUCKET[/PREFIX]: {text!r}")
    return text


def one_of(*words: str) -> Callable[[str], str]:
    """A parser for one of `words` (case-insensitive), refused with the choices named."""

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in words:
            raise ValueError(f"must be one of {', '.join(words)}, not {text!r}")
        return word

    return parse


def split_list(text: str) -> list[str]:
    """An environment variable's list: items separated by commas and/or whitespace."""
    return [item for item in re.split(r"[,\s]+", text) if item]


def path_value(text: str) -> Path:
    """A file or directory path; an empty one is refused, never taken as the current directory.

    ``--mirror-dir "$DIR"`` with DIR unset in a cron line would otherwise mirror PyPI
    into whatever directory cron started in.
    """
    if not text.strip():
        raise ValueError("must not be empty (an unset variable?): give a path")
    return Path(text)


def duration(minimum: float, maximum: float, off: bool = False) -> Callable[[str], float]:
    """A parser for a duration (``90s``, ``6h``, ``7d``) in [minimum, maximum]; with `off`,
    ``0`` too. Shown in --help and read from a config file as its text (``"7d"``)."""

    def parse(text: str) -> float:
        seconds = parse_duration(text)
        if (seconds == 0 and off) or minimum <= seconds <= maximum:
            return seconds
        low = ("0 or " if off else "") + format_duration(minimum)
        raise ValueError(f"must be {low} to {format_duration(maximum)}, not {text!r}")

    parse.show = format_duration  # type: ignore[attr-defined]  # --help's default
    return parse


def switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not true or false: {text!r}")


OPTIONS: tuple[Option, ...] = (
    Option(
        "mirror-dir",
        "mirror directory; pages go to DIR/pypi_mirror/",
        path_value,
        path=True,
        metavar="DIR",
    ),
    Option(
        "state",
        "state file: serial, pending projects, RSTUF outbox; by default state.json in the "
        "working directory, beside the mirror directory (one left inside DIR by the previous "
        "release is moved there once); never inside the served tree",
        path_value,
        field="state_path",
        path=True,
        metavar="FILE",
    ),
    Option(
        "storage",
        "serve from an S3-compatible bucket instead of DIR/pypi_mirror/: the same tree under "
        "PREFIX; credentials, region and endpoint from the AWS environment and config files "
        "(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL_S3, ~/.aws/...), never here; state.json, the lock "
        "and staging stay in DIR",
        storage_url,
        metavar="s3://BUCKET[/PREFIX]",
    ),
    Option(
        "pypi-url",
        "index to mirror; XML-RPC at URL/pypi, pages at URL/simple/",
        pypi_url,
        env="PYPI_URL",
        metavar="URL",
    ),
    # Against real latency pages/s grows with the workers (docs/performance.md: the sweep
    # at 20 and 50 ms); 10 is the most bandersnatch lets a mirror run against PyPI, so the
    # default stays there and more is the operator's choice.
    Option("workers", "concurrent page fetches", number(int, 1, 32)),
    Option(
        "full-check",
        "compare PyPI's whole listing with the mirror: fetch what is missing or behind, "
        "remove what PyPI no longer has (404); every change goes to RSTUF, also into an "
        "empty mirror (where a first sync would leave the pages to the bootstrap CSV)",
        in_file=False,
        env=None,
    ),
    Option(
        "trust-listing",
        "take PyPI's project listing as the truth even when it is empty (its journal is "
        "not) or lists fewer than half of the 100 or more projects the mirror holds; "
        "without it such a listing (a stale cache) ends the run with exit 1, nothing changed",
        in_file=False,
        env=None,
    ),
    Option(
        "dry-run",
        "print what would be fetched, written, removed and sent to RSTUF on stdout; change nothing",
        in_file=False,
        env=None,
    ),
    Option(
        "rstuf-url",
        "RSTUF API base URL; without it (and without --no-rstuf) changes wait in the outbox "
        "and the run exits 75",
        url,
        env="RSTUF_API_URL",
        metavar="URL",
    ),
    Option(
        "no-rstuf",
        "run without RSTUF on purpose: nothing is kept for RSTUF and nothing warned; when "
        "RSTUF is enabled later, catch it up with --audit --repair",
    ),
    Option(
        "rstuf-wait",
        "seconds a run may spend delivering to RSTUF and waiting for its tasks, in all (a "
        "5,000-page request takes about 65 s on a real RSTUF); unfinished tasks are followed "
        "up next run",
        number(float, 0, 86400),
    ),
    Option(
        "rstuf-batch",
        "artifacts per RSTUF request; a bigger update is sent in several requests",
        number(int, 1, 100_000),
    ),
    Option("rstuf-poll", "seconds between two polls of an RSTUF task", number(float, 0.01, 60)),
    Option(
        "grace",
        "seconds an old hash-prefixed page copy stays served for TUF clients",
        number(float, 0, 30 * 86400),
    ),
    Option(
        "timeout",
        "read timeout of one HTTP request, seconds (a project page's: whole seconds, at least 1,"
        " as libcurl counts them)",
        number(float, 0.05, 3600),
    ),
    Option(
        "retries",
        "retries per request and per stale page (connection errors, 5xx, 429 with "
        "Retry-After, PyPI's rate-limit fault)",
        number(int, 0, 20),
    ),
    Option(
        "failure-limit",
        "circuit breaker: after N page requests failing in a row (connection errors, 5xx, "
        "429, stale or error pages) PyPI is taken to be failing as a whole: the run stops "
        "fetching, keeps the rest pending and exits 75; 0 never stops",
        number(int, 0, 100_000),
    ),
    Option(
        "backoff",
        "first retry delay in seconds, doubled each retry, with jitter",
        number(float, 0, 300),
    ),
    Option(
        "xmlrpc-interval",
        "average seconds between XML-RPC calls, PyPI's etiquette (the first few of a run "
        "go out at once; 0: no pacing)",
        number(float, 0, 60),
    ),
    Option(
        "no-xmlrpc",
        "never call PyPI's XML-RPC: list projects and notice changes from the JSON root "
        "/simple/ (PEP 691, projects[]._last-serial); used anyway when XML-RPC answers "
        "404/405/410 or says the method is disabled",
    ),
    Option(
        "simple-format",
        "forms of each page to mirror: html (index.html), json (PEP 691 index.v1_json) "
        "or all (both, from the same serial); json and all add the JSON root "
        "simple/index.v1_json",
        one_of("html", "json", "all"),
        metavar="{html,json,all}",
    ),
    Option(
        "include",
        "mirror only projects whose normalized name matches this glob",
        glob_pattern,
        many=True,
        metavar="GLOB",
    ),
    Option(
        "exclude",
        "never mirror projects whose normalized name matches this glob; removes them "
        "if already mirrored",
        glob_pattern,
        many=True,
        metavar="GLOB",
    ),
    Option(
        "max-page-bytes",
        "a project page larger than this is refused and kept pending, never mirrored",
        number(int, 1024, 1 << 30),
    ),
    Option(
        "audit",
        "compare the served tree with the targets RSTUF's TUF metadata signs, verified "
        "from --tuf-root; print one 'KIND PATH' line per difference (unsigned, mismatch, "
        "missing, copy-missing) and a summary line; exit 0 in step, 4 apart, 1 cannot audit",
        in_file=False,
        env=None,
    ),
    Option(
        "repair",
        "with --audit: re-fetch every differing project from PyPI (never trusting the "
        "tree), write it and deliver its final state to RSTUF in the same run",
        in_file=False,
        env=None,
    ),
    Option(
        "tuf-metadata-url",
        "base URL RSTUF's TUF metadata is served from (1.root.json, timestamp.json, ...); "
        "--audit reads it, the first delivery to RSTUF checks it holds the bootstrap import, "
        "and a first sync into an empty mirror is refused while it signs pages already "
        "(--full-check registers them instead)",
        url,
        env="TUF_METADATA_URL",
        metavar="URL",
    ),
    Option(
        "tuf-root",
        "TUF root metadata to trust (RSTUF's 1.root.json, obtained out of band); "
        "needed with --tuf-metadata-url",
        path_value,
        env="TUF_ROOT",
        path=True,
        metavar="FILE",
    ),
    Option(
        "progress-interval",
        "seconds between two progress log lines of a long phase when stderr is not a "
        "terminal (0: none); on a terminal a bar is shown instead",
        number(float, 0, 86400),
        metavar="S",
    ),
    Option(
        "metrics-file",
        "write the run's figures to FILE in Prometheus text format at the end of each run "
        "(atomically; for node_exporter's textfile collector, so name it *.prom); a FILE "
        "that is a directory, or in a missing one, is refused at start (exit 2)",
        path_value,
        path=True,
        metavar="FILE",
    ),
    Option(
        "status",
        "print the last run's status (from the mirror directory's status.json; no network) "
        "and exit",
        in_file=False,
        env=None,
    ),
    Option(
        "json",
        "with --status: print the status as one JSON object",
        field="status_json",
        in_file=False,
        env=None,
    ),
    Option(
        "verbose",
        "log debug detail (each page fetched: name, status, serial, bytes; each retry and "
        "stale answer)",
        short="-v",
    ),
    Option("quiet", "log warnings, errors and the summary line only", short="-q"),
    Option(
        "revalidate-period",
        "fetch every mirrored page again within this period (90s, 6h, 7d; 0: never), a share "
        "of them each run, oldest first, as conditional requests (an unchanged page costs a "
        "304): PyPI changes some pages without a changelog entry (archiving a project)",
        duration(60, 366 * 86400, off=True),
        metavar="DURATION",
    ),
    Option(
        "watch",
        "run until stopped (SIGTERM: exit 143, nothing lost): read the changelog every "
        "INTERVAL (e.g. 10s), apply it and deliver to RSTUF without waiting for RSTUF's "
        "tasks, revalidate in the background; status and metrics every cycle; 0: run once",
        duration(1, 86400, off=True),
        metavar="INTERVAL",
    ),
)

# Switches of which one source (command line, environment, file) may set only one; a
# higher source's choice replaces a lower one's (``-q`` over a file's ``verbose = true``).
EXCLUSIVE = ("verbose", "quiet")

CONFIG_HELP = (
    "TOML config file; its keys are the long option names, relative paths are relative to it "
    "(see pypi-mirror.example.toml)"
)

# --config is read before the table it points to, so it is no `Option` of OPTIONS; its
# value is checked as every path option's is.
CONFIG_OPTION = Option(
    "config", "TOML config file", path_value, env=CONFIG_ENV, path=True, in_file=False
)
