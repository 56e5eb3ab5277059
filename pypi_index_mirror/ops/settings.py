"""Every setting of a run, declared once: command line, environment, config file, default.

Each `Option` becomes a ``--flag``, a ``PYPI_MIRROR_*`` environment variable
(or the conventional name it names) and a key of the TOML config file given
with ``--config`` (env ``PYPI_MIRROR_CONFIG``). The command line wins over the
environment, the environment over the file, the file over the default. Paths
in the file are resolved relative to the file, so a cron line without ``cd``
still finds the mirror. Unknown keys, actions of one run (``dry-run``) and
values of the wrong TOML type or out of range are refused with the key named;
``pypi-mirror.example.toml`` documents every key.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pypi_index_mirror.mirror.filters import ProjectFilter, glob_pattern
from pypi_index_mirror.mirror.store import DEFAULT_MIRROR_DIR, DEFAULT_STATE_FILE
from pypi_index_mirror.ops.cli import (
    VERSION,
    UsageError,
    format_bound,
    format_duration,
    number,
    parse_duration,
)

CONFIG_ENV = "PYPI_MIRROR_CONFIG"
TOKEN_ENV = "RSTUF_API_TOKEN"  # a secret: read from the environment only, never a flag


@dataclass(frozen=True)
class Config:
    """Everything a run is told; units in the comments."""

    mirror_dir: Path = DEFAULT_MIRROR_DIR
    state_path: Path | None = None  # None: DEFAULT_STATE_FILE, ./state.json
    storage: str | None = None  # s3://BUCKET[/PREFIX]: the served tree there; None: mirror_dir
    pypi_url: str = "https://pypi.org"
    workers: int = 10
    removed_options: tuple[str, ...] = ()  # REMOVED_OPTIONS given anyway: warned, ignored
    full_check: bool = False
    # take an empty or shrunken project listing as the truth, this run (see listing_refusal)
    trust_listing: bool = False
    dry_run: bool = False
    rstuf_url: str | None = None
    rstuf_token: str | None = None  # from RSTUF_API_TOKEN only
    no_rstuf: bool = False  # run without RSTUF on purpose: nothing owed, nothing warned
    # seconds a whole run may spend on RSTUF (both deliveries together): a 5,000-page
    # request takes about 65 s on a real RSTUF, and a cron run every 300 s needs room
    rstuf_wait: float = 120.0
    rstuf_batch: int = 5000  # artifacts per RSTUF request
    rstuf_poll: float = 2.0  # seconds between two task polls
    grace: float = 3600.0  # seconds an old hash-prefixed copy stays served
    timeout: float = 60.0  # read timeout of one HTTP request, seconds
    connect_timeout: float = 10.0  # seconds
    retries: int = 5  # attempts after the first, per request or stale page
    failure_limit: int = 30  # page requests failing in a row that stop the fetching; 0: never
    backoff: float = 1.0  # first retry delay, seconds; doubles, with jitter
    max_page_bytes: int = 64 << 20
    max_xmlrpc_bytes: int = 512 << 20
    xmlrpc_interval: float = 1.0  # average seconds between XML-RPC calls (PyPI's etiquette)
    audit: bool = False  # compare the served tree with what RSTUF's TUF metadata signs
    repair: bool = False  # with audit: re-fetch and re-deliver every differing project
    tuf_metadata_url: str | None = None  # where RSTUF's TUF metadata is served
    tuf_root: Path | None = None  # the root metadata trusted to verify it
    no_xmlrpc: bool = False  # list and follow PyPI through the JSON root /simple/ only
    simple_format: str = "html"  # which forms of the pages to mirror: html, json or all
    include: tuple[str, ...] = ()  # globs over normalized names; empty: every project
    exclude: tuple[str, ...] = ()
    verbose: bool = False
    quiet: bool = False
    progress: bool = False  # a bar on stderr: set when stderr is a terminal and not quiet
    progress_interval: float = 60.0  # seconds between progress log lines without a terminal
    metrics_file: Path | None = None  # Prometheus text file written at the end of each run
    status: bool = False  # --status: print the last run's status and exit
    status_json: bool = False  # --status --json
    # seconds within which every page is fetched again (conditionally) though the changelog
    # never named it: archiving and template changes move no serial; 0: never
    revalidate_period: float = 7 * 86400.0  # seconds: every page seen again within a week
    watch: float = 0.0  # seconds between two reads of the changelog in --watch; 0: run once

    @property
    def state_file(self) -> Path:
        return self.state_path or DEFAULT_STATE_FILE

    @property
    def project_filter(self) -> ProjectFilter:
        return ProjectFilter.of(self.include, self.exclude)


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


DEFAULTS = Config()

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


def describe(option: Option) -> str:
    """The help text with the option's range, environment variable and default."""
    notes = []
    bounds = getattr(option.parse, "bounds", None)
    if bounds:
        notes.append(f"{format_bound(bounds[0])}-{format_bound(bounds[1])}")
    if option.many:
        notes.append("repeatable")
    if option.path:
        notes.append("never empty")
    if option.env_name:
        notes.append(f"env {option.env_name}" + (", comma-separated" if option.many else ""))
    default = getattr(DEFAULTS, option.dest, None)
    if option.parse is not None and default not in (None, ()):
        notes.append(f"default {getattr(option.parse, 'show', str)(default)}")
    return f"{option.help} ({'; '.join(notes)})" if notes else option.help


OPTIONS_DOC_COMMAND = "python -m tools.gen_options_doc"  # rewrites docs/options.md's table


def options_markdown(options: Sequence[Option] = OPTIONS) -> str:
    """The option reference of docs/options.md: one Markdown table row per option.

    Generated from the same declarations as ``--help`` and the config file's checks,
    so the reference cannot drift from them (tests/test_settings.py compares it with
    the file; `OPTIONS_DOC_COMMAND` rewrites it).
    """
    rows = [
        "| option | environment | config file key | default | range | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
        markdown_row("`--config FILE`", f"`{CONFIG_ENV}`", "not in a file", "", "", CONFIG_HELP),
    ]
    for option in options:
        names = [f"`{option.short}`"] if option.short else []
        names.append(f"`--{option.key}{metavar_of(option)}`")
        environment = f"`{option.env_name}`" if option.env_name else ""
        if environment and option.many:
            environment += " (comma- or space-separated)"
        key = f"`{option.key}`" if option.in_file else "command line only"
        if option.many:
            key += " (an array)"
        bounds = getattr(option.parse, "bounds", None)
        limits = f"{format_bound(bounds[0])}-{format_bound(bounds[1])}" if bounds else ""
        help_text = option.help + (" (repeatable)" if option.many else "")
        rows.append(
            markdown_row(", ".join(names), environment, key, default_of(option), limits, help_text)
        )
    rows.append(markdown_row("`--version`", "", "command line only", "", "", "print the version"))
    return "\n".join(rows) + "\n"


def metavar_of(option: Option) -> str:
    """The value's placeholder as ``--help`` shows it ("" for a switch)."""
    if option.parse is None:
        return ""
    if option.metavar:
        return f" {option.metavar}"
    return " N" if getattr(option.parse, "bounds", None) else f" {option.dest.upper()}"


def default_of(option: Option) -> str:
    """The default as the reference shows it: "" when there is none (or it is off)."""
    value = getattr(DEFAULTS, option.dest, None)
    if option.parse is None or value in (None, ()):
        return ""
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"`{value}` ({value >> 20} MiB)"
    return f"`{format_bound(value) if isinstance(value, float) else value}`"


def markdown_row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def build_parser(
    prog: str, description: str, epilog: str, options: Sequence[Option] = OPTIONS
) -> argparse.ArgumentParser:
    """An argparse parser whose options default to 'not given', so precedence can be applied."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        argument_default=argparse.SUPPRESS,
    )
    add_config_argument(parser)
    add_options(parser, options)
    for removed in REMOVED_OPTIONS:  # accepted, whatever its value, and ignored (see run)
        parser.add_argument(
            f"--{removed.key}", dest=removed.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    return parser


CONFIG_HELP = (
    "TOML config file; its keys are the long option names, relative paths are relative to it "
    "(see pypi-mirror.example.toml)"
)

# --config is read before the table it points to, so it is no `Option` of OPTIONS; its
# value is checked as every path option's is.
CONFIG_OPTION = Option(
    "config", "TOML config file", path_value, env=CONFIG_ENV, path=True, in_file=False
)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=argparse_type(CONFIG_OPTION),
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"{CONFIG_HELP[:-1]}; env {CONFIG_ENV})",
    )


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add `options` to `parser` as flags that default to 'not given' (see `resolve`)."""
    for option in options:
        names = [f"--{option.key}"] + ([option.short] if option.short else [])
        common = {"dest": option.dest, "help": describe(option), "default": argparse.SUPPRESS}
        if option.parse is None:
            parser.add_argument(*names, action="store_true", **common)
        else:
            parser.add_argument(
                *names,
                action="append" if option.many else "store",
                type=argparse_type(option),
                metavar=option.metavar or ("N" if getattr(option.parse, "bounds", None) else None),
                **common,
            )


def argparse_type(option: Option) -> Callable[[str], Any]:
    """Wrap `option.parse` so that argparse shows its ValueError message, not a generic one."""
    assert option.parse is not None
    parse = option.parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.key  # argparse names the type in some messages
    return convert


def load_config_file(
    path: Path, options: Sequence[Option] = OPTIONS, removed: Sequence[RemovedOption] | None = None
) -> dict[str, Any]:
    """Read a TOML config file into {dest: value}; raise UsageError naming what is wrong.

    Every key is checked against `options` (the whole table, even when the caller
    uses a few keys: a typo is refused by both scripts alike). Relative paths are
    resolved against the file's directory.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    known = {option.key: option for option in options if option.in_file}
    if removed is None:
        removed = REMOVED_OPTIONS if options is OPTIONS else ()
    gone = {option.key: option for option in removed}
    values: dict[str, Any] = {}
    for key, raw in document.items():
        if key in gone:  # an old file: accepted, ignored (see RemovedOption)
            values[gone[key].dest] = raw
            continue
        option = known.get(key)
        if option is None:
            raise UsageError(f"config file {path}: unknown key {key!r}{unknown_key_hint(key)}")
        try:
            value = file_value(option, raw)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"config file {path}: {key}: {exc}") from None
        if option.path:
            # an absolute value stays; '..' is resolved as written, as a shell would
            value = Path(os.path.normpath(path.absolute().parent / value.expanduser()))
        values[option.dest] = value
    check_exclusive(values, f"config file {path}: {' and '.join(EXCLUSIVE)}")
    return values


def unknown_key_hint(key: str, options: Sequence[Option] = OPTIONS) -> str:
    """What the operator probably meant by a key the file may not have."""
    if any(option.key == key and not option.in_file for option in options):
        return " (an action of one run, not a setting: give it on the command line)"
    if "token" in key:
        return f" (the RSTUF token is read from the environment only: {TOKEN_ENV})"
    if key == "config":
        return " (a config file cannot name another)"
    settable = [option.key for option in options if option.in_file]
    close = difflib.get_close_matches(key.replace("_", "-"), settable, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def file_value(option: Option, raw: object) -> Any:
    """A TOML value of the option's type, checked by the flag's parser (same ranges apply).

    The TOML type must fit: ``workers = 8`` and ``timeout = 2.5``, not ``"8"``;
    paths and URLs are strings; a list option (``include``) is an array of its items.
    """
    if option.many:
        if not isinstance(raw, list):
            raise TypeError(f'must be an array, e.g. ["django*"], not {raw!r}')
        return tuple(file_value(replace(option, many=False), item) for item in raw)
    if option.parse is None:
        if not isinstance(raw, bool):
            raise TypeError(f"must be true or false, not {raw!r}")
        return raw
    kind = getattr(option.parse, "kind", None)
    if kind is not None:
        allowed = (int, float) if kind is float else (int,)
        if isinstance(raw, bool) or not isinstance(raw, allowed):
            what = "a number" if kind is float else "a whole number"
            raise TypeError(f"must be {what}, not {raw!r}")
        return option.parse(str(raw))
    if not isinstance(raw, str):
        raise TypeError(f"must be a string, not {raw!r}")
    return option.parse(raw)


def resolve(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    options: Sequence[Option] = OPTIONS,
) -> dict[str, Any]:
    """{dest: value} for every option given anywhere: command line > environment > file.

    Only `options` are resolved (generate_csv.py uses two of them), but the
    file is checked against the whole table.
    """
    given = vars(args)
    config_path = given.get("config") or environment_values(environ, [CONFIG_OPTION]).get("config")
    wanted = {option.dest for option in options}
    lists = {option.dest for option in options if option.many}  # argparse's append: a list
    from_file = load_config_file(config_path) if config_path else {}
    layers = [
        {dest: value for dest, value in from_file.items() if dest in wanted},
        environment_values(environ, options),
        {
            dest: tuple(value) if dest in lists else value
            for dest, value in given.items()
            if dest in wanted
        },
    ]
    check_exclusive(layers[1], " and ".join(f"PYPI_MIRROR_{key.upper()}" for key in EXCLUSIVE))
    check_exclusive(layers[2], " and ".join(f"--{key}" for key in EXCLUSIVE))
    values: dict[str, Any] = {}
    for layer in layers:  # lowest precedence first
        if any(layer.get(key) for key in EXCLUSIVE):
            for key in EXCLUSIVE:
                values.pop(key, None)
        values.update(layer)
    removed = tuple(
        option.key
        for option in REMOVED_OPTIONS
        if option.dest in given or option.dest in from_file or environ.get(option.env_name)
    )
    if removed:
        values["removed_options"] = removed
    return values


def environment_values(environ: Mapping[str, str], options: Sequence[Option]) -> dict[str, Any]:
    """{dest: value} of the options set in the environment.

    An empty variable is unset, except a path's: ``PYPI_MIRROR_MIRROR_DIR=$DIR`` with DIR
    unset is a mistake to name, not a reason to fall back to the default directory.
    """
    values = {}
    for option in options:
        name = option.env_name
        if name and (environ.get(name, "") != "" or (option.path and name in environ)):
            parse = option.parse or switch
            try:
                if option.many:
                    values[option.dest] = tuple(parse(item) for item in split_list(environ[name]))
                else:
                    values[option.dest] = parse(environ[name])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise UsageError(f"environment variable {name}: {exc}") from None
    return values


def check_audit_options(values: Mapping[str, Any]) -> None:
    """Refuse audit settings that cannot work together; raises UsageError."""
    if values.get("repair") and not values.get("audit"):
        raise UsageError("--repair repairs what --audit finds: give both")
    if values.get("audit") and any(values.get(k) for k in ("full_check", "dry_run", "status")):
        raise UsageError(
            "--audit runs alone: run --full-check first, then --audit "
            "(--audit without --repair changes nothing)"
        )
    if bool(values.get("tuf_metadata_url")) != bool(values.get("tuf_root")):
        raise UsageError(
            "--tuf-metadata-url (env TUF_METADATA_URL) and --tuf-root (env TUF_ROOT) go "
            "together: the metadata is verified from the root you trust"
        )
    if values.get("audit") and not values.get("tuf_metadata_url"):
        raise UsageError(
            "--audit needs --tuf-metadata-url URL (env TUF_METADATA_URL) and --tuf-root FILE "
            "(env TUF_ROOT)"
        )


def check_exclusive(values: Mapping[str, Any], what: str) -> None:
    if all(values.get(key) for key in EXCLUSIVE):
        raise UsageError(f"{what} exclude each other")


def config_from(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """Parse `argv` with `parser` and apply precedence; raises SystemExit or UsageError."""
    args = parser.parse_args(argv)
    values = resolve(args, environ)
    config_fields = {f.name for f in fields(Config)}
    values = {key: value for key, value in values.items() if key in config_fields}
    if values.get("status_json") and not values.get("status"):
        raise UsageError("--json goes with --status")
    if values.get("status") and (values.get("dry_run") or values.get("full_check")):
        raise UsageError("--status only reads; give it without --dry-run and --full-check")
    check_audit_options(values)
    if values.get("watch"):
        clash = [f"--{k.replace('_', '-')}" for k in ("dry_run", "full_check", "audit", "status")]
        clash = [flag for flag in clash if values.get(flag[2:].replace("-", "_"))]
        if clash:
            raise UsageError(
                f"--watch runs until stopped and cannot go with {' or '.join(clash)}: "
                "run that once on its own (stop the watch service first)"
            )
    if values.get("no_rstuf") and values.get("rstuf_url"):
        raise UsageError(
            "--no-rstuf and an RSTUF URL (--rstuf-url, RSTUF_API_URL or rstuf-url in the "
            "config file) exclude each other: drop one"
        )
    token = environ.get(TOKEN_ENV) or None
    quiet = values.get("quiet", False)
    return Config(**values, rstuf_token=token, progress=sys.stderr.isatty() and not quiet)


def mirror_paths(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> tuple[Path, Path]:
    """The mirror directory and the state file, resolved as pypi_mirror.py resolves them.

    generate_csv.py reads them from the same flags, environment and config file,
    so both scripts always agree on where the mirror is.
    """
    config = mirror_config(args, environ)
    return config.mirror_dir, config.state_file


def mirror_config(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Config:
    """A Config of only the mirror directory and state file (`state_path` None: the default)."""
    shared = [option for option in OPTIONS if option.key in ("mirror-dir", "state", "storage")]
    return Config(**resolve(args, environ, shared))
