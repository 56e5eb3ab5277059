"""``pypi-mirror-proxy`` (``python tuf_proxy.py``): its options and ``main(argv) -> int``.

Options follow the other scripts' conventions (``ops.options``): each is a
``--flag``, an environment variable and a key of a TOML config file
(``--config``, env ``PYPI_MIRROR_PROXY_CONFIG``); the command line wins over
the environment, the environment over the file; relative paths in the file are
relative to it. ``--tuf-metadata-url`` and ``--tuf-root`` read the same
variables as the mirror's ``--audit`` (``TUF_METADATA_URL``, ``TUF_ROOT``).

Exit codes (cli_support): 0 stopped by SIGINT or SIGTERM (a service's normal
end), 1 cannot start (trusted root, cache directory, address in use), 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pypi_index_mirror.ops import options, settings
from pypi_index_mirror.ops.cli import (
    EXIT_OK,
    VERSION,
    Stopped,
    ToolError,
    UsageError,
    configure_logging,
    format_bound,
    number,
    run_cli,
)
from pypi_index_mirror.proxy.server import ProxyServer
from pypi_index_mirror.proxy.verifier import Verifier, VerifierConfig

log = logging.getLogger(__name__)

CONFIG_ENV = "PYPI_MIRROR_PROXY_CONFIG"
DEFAULT_LISTEN = "127.0.0.1:8080"


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/pypi-index-mirror/tuf-proxy`` (``~/.cache`` by default)."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pypi-index-mirror" / "tuf-proxy"


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6); refused with the expected form named."""
    host, colon, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"not HOST:PORT (for example 127.0.0.1:8080): {text!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class ProxyConfig:
    mirror_url: str | None = None
    tuf_metadata_url: str | None = None
    tuf_root: Path | None = None
    listen: tuple[str, int] = listen_address(DEFAULT_LISTEN)
    cache_dir: Path | None = None  # None: default_cache_dir()
    max_age: float = 60.0  # seconds
    timeout: float = 30.0  # seconds
    max_page_bytes: int = 64 << 20
    page_cache_bytes: int = 64 << 20
    verbose: bool = False
    quiet: bool = False


DEFAULTS = ProxyConfig()
_ENV = "PYPI_MIRROR_PROXY_"

OPTIONS: tuple[options.Option, ...] = (
    options.Option(
        "mirror-url",
        "base URL the mirror's served tree is at (its nginx: index.html, simple/<p>/...); "
        "pages are fetched from it by their hash-prefixed names",
        options.url,
        env=_ENV + "MIRROR_URL",
        metavar="URL",
    ),
    options.Option(
        "tuf-metadata-url",
        "base URL RSTUF's TUF metadata is served from (1.root.json, timestamp.json, ...)",
        options.url,
        env="TUF_METADATA_URL",
        metavar="URL",
    ),
    options.Option(
        "tuf-root",
        "TUF root metadata to trust (RSTUF's 1.root.json, obtained out of band)",
        Path,
        env="TUF_ROOT",
        path=True,
        metavar="FILE",
    ),
    options.Option(
        "listen",
        "address to serve pip and uv on; loopback unless clients on other hosts must reach it",
        listen_address,
        env=_ENV + "LISTEN",
        metavar="HOST:PORT",
    ),
    options.Option(
        "cache-dir",
        "where python-tuf keeps the verified metadata (kept across restarts: it is what "
        "refuses a rollback); default $XDG_CACHE_HOME/pypi-index-mirror/tuf-proxy",
        Path,
        env=_ENV + "CACHE_DIR",
        path=True,
        metavar="DIR",
    ),
    options.Option(
        "max-age",
        "seconds a verified timestamp is used before the metadata is asked again (also "
        "whenever a page is not signed, at most once a second); a change RSTUF publishes "
        "reaches clients within this",
        number(float, 0, 86400),
        env=_ENV + "MAX_AGE",
        metavar="S",
    ),
    options.Option(
        "timeout",
        "read timeout of one request to the mirror or the metadata server, seconds",
        number(float, 0.05, 3600),
        env=_ENV + "TIMEOUT",
        metavar="S",
    ),
    options.Option(
        "max-page-bytes",
        "a page TUF signs longer than this is refused",
        number(int, 1024, 1 << 30),
        env=_ENV + "MAX_PAGE_BYTES",
    ),
    options.Option(
        "page-cache-bytes",
        "verified pages kept in memory, by the hashes TUF signs for them (a page is fetched "
        "from the mirror again only when the metadata signs other bytes); 0: none",
        number(int, 0, 1 << 40),
        env=_ENV + "PAGE_CACHE_BYTES",
    ),
    options.Option("verbose", "log every request", short="-v", env=_ENV + "VERBOSE"),
    options.Option("quiet", "log warnings and errors only", short="-q", env=_ENV + "QUIET"),
)
REQUIRED = ("mirror-url", "tuf-metadata-url", "tuf-root")


def describe(option: options.Option) -> str:
    notes = []
    bounds = getattr(option.parse, "bounds", None)
    if bounds:
        notes.append(f"{format_bound(bounds[0])}-{format_bound(bounds[1])}")
    if option.env_name:
        notes.append(f"env {option.env_name}")
    default = getattr(DEFAULTS, option.dest, None)
    if option.key == "listen":
        notes.append(f"default {DEFAULT_LISTEN}")
    elif option.parse is not None and default is not None:
        notes.append(f"default {default}")
    return f"{option.help} ({'; '.join(notes)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pypi-mirror-proxy",
        description="Serve the mirror's index pages to pip and uv only after python-tuf has "
        "verified them against RSTUF's TUF metadata.",
        epilog="Then: pip install --index-url http://HOST:PORT/simple/ ... (or uv pip install "
        "--index-url ...). Exit: 0 stopped by a signal, 1 cannot start, 2 usage.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML config file; its keys are the long option names (env {CONFIG_ENV})",
    )
    for option in OPTIONS:
        names = [f"--{option.key}"] + ([option.short] if option.short else [])
        common: dict[str, Any] = {"dest": option.dest, "help": describe(option)}
        if option.parse is None:
            parser.add_argument(*names, action="store_true", **common)
        else:
            parser.add_argument(
                *names,
                type=settings.argparse_type(option),
                metavar=option.metavar or "N",
                **common,
            )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    return parser


def config_from(argv: Sequence[str] | None, environ: Mapping[str, str] = os.environ) -> ProxyConfig:
    """Flags over environment over config file; raises SystemExit (argparse) or UsageError."""
    args = vars(build_parser().parse_args(argv))
    config_path = args.get("config") or (
        Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None
    )
    values: dict[str, Any] = {}
    if config_path:
        values.update(settings.load_config_file(config_path, OPTIONS))
    values.update(settings.environment_values(environ, OPTIONS))
    values.update({key: value for key, value in args.items() if key != "config"})
    if values.get("verbose") and values.get("quiet"):
        raise UsageError("--verbose and --quiet exclude each other")
    missing = [key for key in REQUIRED if not values.get(key.replace("-", "_"))]
    if missing:
        named = ", ".join(
            f"--{key} (env {next(o.env_name for o in OPTIONS if o.key == key)})" for key in missing
        )
        raise UsageError(f"missing {named}")
    return ProxyConfig(**values)


def verifier_config(config: ProxyConfig) -> VerifierConfig:
    assert config.mirror_url and config.tuf_metadata_url and config.tuf_root
    return VerifierConfig(
        metadata_url=config.tuf_metadata_url,
        mirror_url=config.mirror_url,
        trusted_root=config.tuf_root,
        cache_dir=config.cache_dir or default_cache_dir(),
        max_age=config.max_age,
        timeout=config.timeout,
        max_page_bytes=config.max_page_bytes,
        page_cache_bytes=config.page_cache_bytes,
    )


def serve(config: ProxyConfig) -> int:
    verifier = Verifier(verifier_config(config))
    try:
        try:
            server = ProxyServer(config.listen, verifier)
        except OSError as exc:
            host, port = config.listen
            raise ToolError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        with server:
            log.info(
                "serving %s/simple/ from %s, verified against %s",
                server.url,
                config.mirror_url,
                config.tuf_metadata_url,
            )
            try:
                server.serve_forever(poll_interval=0.5)
            except Stopped as stop:
                log.info("stopped by %s", stop)
    finally:
        verifier.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The console script ``pypi-mirror-proxy``; returns the exit code."""

    def body() -> int:
        config = config_from(argv)
        configure_logging(config.verbose, config.quiet)
        return serve(config)

    configure_logging(False, False)
    return run_cli(log, body)
