"""Every setting of a run resolved into one `Config`: command line, environment, file, default.

The options are declared once, in ``ops.options``; here each becomes a
``--flag`` of an argparse parser (its ``--help`` naming range, environment
variable and default), a ``PYPI_MIRROR_*`` environment variable read, and a
key of the TOML config file given with ``--config`` (env
``PYPI_MIRROR_CONFIG``); `options_markdown` writes docs/options.md's table
from the same declarations. The command line wins over the
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
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pypi_index_mirror.mirror.filters import ProjectFilter
from pypi_index_mirror.mirror.store import DEFAULT_MIRROR_DIR, DEFAULT_STATE_FILE
from pypi_index_mirror.ops.cli import VERSION, UsageError, format_bound
from pypi_index_mirror.ops.options import (
    CONFIG_ENV,
    CONFIG_HELP,
    CONFIG_OPTION,
    EXCLUSIVE,
    OPTIONS,
    REMOVED_OPTIONS,
    TOKEN_ENV,
    Option,
    RemovedOption,
    split_list,
    switch,
)


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


DEFAULTS = Config()

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
